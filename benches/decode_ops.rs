//! A decoding step's ops besides the weight matmuls, on the CPU at SmolLM2-135M's shapes, on one
//! thread and on two: attention of one query row over 250 cached keys (in cache, and 30 layers'
//! worth from memory), and the rank-8 LoRA add of one row for the three linear shapes. `cargo bench --bench decode_ops`.

use bitune_rt::backend::cpu::Cpu;
use bitune_rt::backend::{
    AttnArgs, AttnDims, AttnGroup, AttnPlan, Backend, LoraArgs, LoraSeg, MaskKind,
};
use bitune_rt::rng::Rng;
use criterion::{criterion_group, criterion_main, Criterion};
use std::time::{Duration, Instant};

fn rand(n: usize, rng: &mut Rng) -> Vec<f32> {
    (0..n).map(|_| rng.uniform(-1.0, 1.0)).collect()
}

fn bench(c: &mut Criterion) {
    let mut rng = Rng::new(1);
    let (hq, hkv, hd, keys) = (9, 3, 64, 250);
    let (qw, kw) = (hq * hd, hkv * hd);
    // The decoding layout: the fresh row first, then the cache.
    let plan = AttnPlan {
        groups: vec![AttnGroup {
            q: 0..1,
            kv: vec![1..keys, 0..1],
            mask: MaskKind::Causal,
        }],
        q_pos: vec![keys as u32 - 1],
        k_pos: std::iter::once(keys as u32 - 1)
            .chain(0..keys as u32 - 1)
            .collect(),
    };
    let a = AttnArgs {
        plan: &plan,
        dims: AttnDims {
            q_heads: hq,
            kv_heads: hkv,
            head_dim: hd,
            scale: 0.125,
        },
    };
    let (q, k, v) = (
        rand(qw, &mut rng),
        rand(keys * kw, &mut rng),
        rand(keys * kw, &mut rng),
    );
    let (mut out, mut lse) = (vec![0f32; qw], vec![0f32; hq]);
    let layers: Vec<(Vec<f32>, Vec<f32>)> = (0..30)
        .map(|_| (rand(keys * kw, &mut rng), rand(keys * kw, &mut rng)))
        .collect();
    let mut flush = vec![0f32; 16 << 20];
    let rank = 8;
    let shapes = [
        ("q_576x576", 576, 576),
        ("up_1536x576", 576, 1536),
        ("down_576x1536", 1536, 576),
    ];
    for threads in [1, 2] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let mut g = c.benchmark_group(format!("decode_{threads}t"));
        g.bench_function("attention_fwd_250_keys", |b| {
            pool.install(|| b.iter(|| Cpu.attention_fwd(&mut out, &mut lse, &q, &k, &v, a)))
        });
        // Every layer's cache read from memory, as decoding does: the weights between two
        // layers' attention evict the caches of the last.
        g.bench_function("attention_fwd_30_layers_from_memory", |b| {
            pool.install(|| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        flush.iter_mut().for_each(|x| *x += 1.0);
                        let t0 = Instant::now();
                        for (k, v) in &layers {
                            Cpu.attention_fwd(&mut out, &mut lse, &q, k, v, a);
                        }
                        total += t0.elapsed();
                    }
                    total
                })
            })
        });
        for &(name, kd, n) in &shapes {
            let params = rand(rank * (kd + n), &mut rng);
            let x = rand(kd, &mut rng);
            let mut y = vec![0f32; n];
            let segs = [LoraSeg {
                rows: 0..1,
                a_off: 0,
                b_off: rank * kd,
                rank,
                scale_bits: 2f32.to_bits(),
            }];
            let la = LoraArgs {
                segs: &segs,
                k: kd,
                n,
            };
            g.bench_function(format!("lora_fwd_{name}"), |b| {
                pool.install(|| b.iter(|| Cpu.lora_fwd(&mut y, &x, &params, la)))
            });
        }
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
