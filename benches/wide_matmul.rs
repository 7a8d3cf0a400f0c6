//! Many-row matmuls (prefill and training) on the CPU at SmolLM2-135M's shapes: the `gemm`
//! crate against the AVX-512 tiles, forward (`x·Wᵀ`, W in panels) and backward (`dy·W`).
//! `cargo bench --bench wide_matmul`.

use bitune_rt::backend::cpu::gemm::{rm, sgemm, tr};
use bitune_rt::backend::cpu::tiles::{self, matmul_nn, matmul_nt, Panels};
use bitune_rt::rng::Rng;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn bench(c: &mut Criterion) {
    let mut rng = Rng::new(2);
    // (rows, in, out): the MLP up projection and the down projection over a 200-token prefill,
    // K/V over 299 packed rows (Bitune 50:200), and the LM head over 201 answer rows.
    for (name, m, k, n) in [
        ("up_200x576x1536", 200, 576, 1536),
        ("down_200x1536x576", 200, 1536, 576),
        ("kv_299x576x192", 299, 576, 192),
        ("lm_head_201x576x49152", 201, 576, 49152),
    ] {
        let x: Vec<f32> = (0..m * k).map(|_| rng.uniform(-1.0, 1.0)).collect();
        let w: Vec<f32> = (0..n * k).map(|_| rng.uniform(-0.1, 0.1)).collect();
        let dy: Vec<f32> = (0..m * n).map(|_| rng.uniform(-1.0, 1.0)).collect();
        let (mut y, mut dx) = (vec![0f32; m * n], vec![0f32; m * k]);
        let mut g = c.benchmark_group(name);
        g.throughput(Throughput::Elements((2 * m * k * n) as u64));
        if n > 10_000 {
            g.sample_size(10);
        }
        g.bench_function("fwd_gemm_crate", |b| {
            b.iter(|| sgemm(m, n, k, rm(&x, k), tr(&w, k), &mut y, n, false))
        });
        g.bench_function("bwd_gemm_crate", |b| {
            b.iter(|| sgemm(m, k, n, rm(&dy, n), rm(&w, k), &mut dx, k, false))
        });
        if tiles::available() {
            let p = Panels::pack(&w, n, k);
            g.bench_function("fwd_tiles", |b| {
                b.iter(|| matmul_nt(&mut y, &x, &p, m, false))
            });
            g.bench_function("bwd_tiles", |b| {
                b.iter(|| matmul_nn(&mut dx, &dy, &w, m, n, k, false))
            });
        }
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
