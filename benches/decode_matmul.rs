//! Decode-path matmuls on the CPU at SmolLM2-135M's shapes: the f32 GEMV against the compact
//! (quantised / bf16) weight kernels: the integer dot on 8-bit activations (AVX-512 VNNI) for
//! Q4_0/Q4_1/Q8_0, the f32 ones (Q4_1 lanes, Q8_0, bf16), and the portable loop that serves
//! ggml-layout Q4 blocks on processors without AVX2; and a decoding token's 30 layers of seven
//! Q4_1 linears, from memory, with and without a rank-8 adapter fused into each product (the
//! adapter's cost over the base model, which `bench` measures end to end as `decode_over_base`).
//! `cargo bench --bench decode_matmul`.

use bitune_rt::backend::cpu::lora_decode::{CodeBits, LoraPack};
use bitune_rt::backend::cpu::quant::{DotFmt, Quant};
use bitune_rt::backend::cpu::Cpu;
use bitune_rt::backend::{Backend, HostWeight};
use bitune_rt::rng::Rng;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn q_blocks(rows: usize, cols: usize, bytes_per_block: usize, rng: &mut Rng) -> Vec<u8> {
    let mut v: Vec<u8> = (0..rows * cols / 32 * bytes_per_block)
        .map(|_| rng.below(256) as u8)
        .collect();
    for blk in v.chunks_exact_mut(bytes_per_block) {
        blk[..2].copy_from_slice(&half::f16::from_f32(0.01).to_le_bytes());
        if bytes_per_block == 20 {
            blk[2..4].copy_from_slice(&half::f16::from_f32(-0.05).to_le_bytes());
        }
    }
    v
}

fn bench(c: &mut Criterion) {
    let mut rng = Rng::new(1);
    // MLP up projection and the tied LM head of SmolLM2-135M.
    for (name, rows, cols) in [
        ("kv_192x576", 192, 576),
        ("mlp_up_1536x576", 1536, 576),
        ("lm_head_49152x576", 49152, 576),
    ] {
        let w: Vec<f32> = (0..rows * cols).map(|_| rng.uniform(-0.1, 0.1)).collect();
        let x: Vec<f32> = (0..cols).map(|_| rng.uniform(-1.0, 1.0)).collect();
        let mut y = vec![0f32; rows];
        let wf = Cpu.upload_weight(HostWeight::dense(w.clone(), rows, cols));
        let mut g = c.benchmark_group(name);
        g.throughput(Throughput::Elements((rows * cols) as u64));
        g.bench_function("matmul_fwd_f32", |b| {
            b.iter(|| Cpu.matmul_fwd(&mut y, &x, &wf, None, 1, false))
        });
        let formats = [
            (
                "q4_0_int8_dot",
                Quant::q8_dot(&q_blocks(rows, cols, 18, &mut rng), DotFmt::Q4_0, cols),
            ),
            (
                "q4_1_int8_dot",
                Quant::q8_dot(&q_blocks(rows, cols, 20, &mut rng), DotFmt::Q4_1, cols),
            ),
            (
                "q8_0_int8_dot",
                Quant::q8_dot(&q_blocks(rows, cols, 34, &mut rng), DotFmt::Q8_0, cols),
            ),
            (
                "q4_1_portable",
                Quant::Q4_1(q_blocks(rows, cols, 20, &mut rng)),
            ),
            (
                "q4_0_portable",
                Quant::Q4_0(q_blocks(rows, cols, 18, &mut rng)),
            ),
            (
                "q4_1_lanes",
                Quant::q4_lanes(&q_blocks(rows, cols, 20, &mut rng), true),
            ),
            ("q8_0", Quant::Q8_0(q_blocks(rows, cols, 34, &mut rng))),
            (
                "bf16",
                Quant::Bf16(
                    w.iter()
                        .map(|v| half::bf16::from_f32(*v).to_bits())
                        .collect(),
                ),
            ),
        ];
        for (f, p) in formats {
            g.bench_function(format!("{f}_quant"), |b| {
                b.iter(|| p.matmul(&mut y, &x, 1, rows, cols, false, None))
            });
        }
        g.finish();
    }
    // Decoding's products over the whole model: 30 layers of q, k, v, o, gate, up, down (the
    // weights, 60 MB, come from memory as in decoding), bare and with their adapters fused.
    let shapes = [
        (576, 576),
        (192, 576),
        (192, 576),
        (576, 576),
        (1536, 576),
        (1536, 576),
        (576, 1536),
    ];
    let rank = 8;
    let layers: Vec<(Quant, LoraPack, usize, usize)> = (0..30)
        .flat_map(|_| shapes)
        .map(|(n, k)| {
            let w = Quant::q8_dot(&q_blocks(n, k, 20, &mut rng), DotFmt::Q4_1, k);
            let a: Vec<f32> = (0..rank * k).map(|_| rng.uniform(-0.05, 0.05)).collect();
            let b: Vec<f32> = (0..n * rank).map(|_| rng.uniform(-0.05, 0.05)).collect();
            let p = LoraPack::new(&a, &b, k, n, 2.0, CodeBits::Four);
            (w, p, n, k)
        })
        .collect();
    let x: Vec<f32> = (0..1536).map(|_| rng.uniform(-1.0, 1.0)).collect();
    let mut y = vec![0f32; 1536];
    let mut g = c.benchmark_group("layers_30_q4_1_from_memory");
    for fused in [false, true] {
        let name = if fused {
            "int8_dot_lora_rank8"
        } else {
            "int8_dot"
        };
        g.bench_function(name, |b| {
            b.iter(|| {
                for (w, p, n, k) in &layers {
                    let lora = fused.then_some(p);
                    w.matmul(&mut y[..*n], &x[..*k], 1, *n, *k, false, lora);
                }
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    // No plots: criterion's PDF plots need a system font, which servers often lack (it panics).
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2))
        .without_plots();
    targets = bench
}
criterion_main!(benches);
