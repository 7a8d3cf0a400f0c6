//! The CUDA simulator's own tests (docs/ARCHITECTURE.md, "CUDA without a GPU"): one probe kernel
//! per primitive (kernels/sim_probe.cu) launched through cudarc exactly as the backend launches
//! its kernels, checked against a scalar reference here; then the failures a GPU would hang or
//! fault on, each of which the simulator must report with kernel, block and thread — not hang.
//! The primitive checks run on a GPU too; the planted failures only on the simulator.
#![cfg(feature = "cuda")]

mod cuda_common;

use bitune_rt::backend::cuda::sim;
use bitune_rt::rng::Rng;
use cuda_common::{down, expect_failure, func, gpu, probes, simulator, up, zeros};
use cudarc::driver::{LaunchConfig, PushKernelArg};

fn cfg(grid: (u32, u32, u32), block: (u32, u32, u32), smem: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: grid,
        block_dim: block,
        shared_mem_bytes: smem,
    }
}

/// Grids and blocks in 1-3 dimensions: every thread sees its own ids and the launch's dims.
#[test]
fn ids_in_3d_grids() {
    let Some(g) = gpu() else { return };
    let m = probes(&g, "sim_probe");
    let f = func(&m, "probe_ids");
    for (grid, block) in [
        ((3, 1, 1), (64, 1, 1)),
        ((2, 3, 1), (8, 4, 1)),
        ((2, 2, 3), (4, 3, 5)),
        ((1, 1, 2), (33, 1, 1)),
    ] {
        let per_block = block.0 * block.1 * block.2;
        let blocks = grid.0 * grid.1 * grid.2;
        let n = (per_block * blocks) as usize;
        let mut out = zeros::<u32>(&g, 12 * n);
        unsafe {
            g.stream()
                .launch_builder(&f)
                .arg(&mut out)
                .launch(cfg(grid, block, 0))
        }
        .unwrap();
        let got = down(&g, &out);
        let mut i = 0;
        for bz in 0..grid.2 {
            for by in 0..grid.1 {
                for bx in 0..grid.0 {
                    for tz in 0..block.2 {
                        for ty in 0..block.1 {
                            for tx in 0..block.0 {
                                let want = [
                                    tx, ty, tz, bx, by, bz, block.0, block.1, block.2, grid.0,
                                    grid.1, grid.2,
                                ];
                                assert_eq!(
                                    got[12 * i..12 * i + 12],
                                    want,
                                    "grid {grid:?} block {block:?} thread {i}"
                                );
                                i += 1;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Static and dynamic shared memory through barriers, and __syncthreads_or/and/count.
#[test]
fn barriers_and_shared_memory() {
    let Some(g) = gpu() else { return };
    let m = probes(&g, "sim_probe");
    let f = func(&m, "probe_barrier");
    let mut r = Rng::new(7);
    for (blocks, n) in [(3usize, 256usize), (4, 96), (2, 32)] {
        let x: Vec<f32> = (0..blocks * n).map(|_| r.uniform(-1.0, 1.0)).collect();
        let threshold = 0.9f32;
        let mut out = zeros::<f32>(&g, blocks * n);
        let mut red = zeros::<i32>(&g, 3 * blocks);
        let xin = up(&g, &x);
        unsafe {
            g.stream()
                .launch_builder(&f)
                .arg(&mut out)
                .arg(&mut red)
                .arg(&xin)
                .arg(&threshold)
                .launch(cfg((blocks as u32, 1, 1), (n as u32, 1, 1), 4 * n as u32))
        }
        .unwrap();
        let (got, red) = (down(&g, &out), down(&g, &red));
        for b in 0..blocks {
            let s = &x[b * n..(b + 1) * n];
            for t in 0..n {
                // dyn[(t+1)%n] = rev[t] = s[n-1-t], so out[t] = s[n-1-((t+n-1)%n)].
                let want = s[n - 1 - (t + n - 1) % n];
                assert_eq!(got[b * n + t], want, "block {b} thread {t}");
            }
            let count = s.iter().filter(|&&v| v > threshold).count() as i32;
            assert_eq!(
                red[3 * b..3 * b + 3],
                [(count > 0) as i32, (count == n as i32) as i32, count]
            );
        }
    }
}

/// The PTX ISA's shfl.sync: source lane j per mode, clamped to the lane's segment of `width`.
fn shfl_ref(x: &[f32], operand: i32, width: i32) -> Vec<f32> {
    let mut out = vec![0f32; 4 * x.len()];
    for (t, o) in out.chunks_mut(4).enumerate() {
        let lane = (t % 32) as i32;
        let base = t as i32 - lane;
        let seg = lane / width * width;
        let idx = seg + operand.rem_euclid(width);
        let upl = if lane - seg >= operand {
            lane - operand
        } else {
            lane
        };
        let dnl = if lane - seg + operand < width {
            lane + operand
        } else {
            lane
        };
        let xl = lane ^ operand;
        let xl = if xl / width * width <= seg && xl < 32 {
            xl
        } else {
            lane
        };
        for (k, j) in [idx, upl, dnl, xl].into_iter().enumerate() {
            o[k] = x[(base + j) as usize];
        }
    }
    out
}

#[test]
fn every_shuffle() {
    let Some(g) = gpu() else { return };
    let m = probes(&g, "sim_probe");
    let f = func(&m, "probe_shfl");
    let x: Vec<f32> = (0..128).map(|i| i as f32 + 0.25).collect();
    let xin = up(&g, &x);
    for width in [32, 16, 8, 4, 2] {
        for operand in [0, 1, 3, 5, 17, 31] {
            let mut out = zeros::<f32>(&g, 4 * x.len());
            unsafe {
                g.stream()
                    .launch_builder(&f)
                    .arg(&mut out)
                    .arg(&xin)
                    .arg(&operand)
                    .arg(&width)
                    .launch(cfg((2, 1, 1), (64, 1, 1), 0))
            }
            .unwrap();
            let got = down(&g, &out);
            let want = shfl_ref(&x, operand, width);
            for (t, (a, b)) in got.chunks(4).zip(want.chunks(4)).enumerate() {
                assert_eq!(
                    a, b,
                    "width {width} operand {operand} thread {t} (idx, up, down, xor)"
                );
            }
        }
    }
}

/// A partial mask (even lanes): xor shuffle, ballot/any/all, __syncwarp; a double shuffle.
#[test]
fn partial_masks_and_votes() {
    let Some(g) = gpu() else { return };
    let m = probes(&g, "sim_probe");
    let f = func(&m, "probe_partial");
    let mut r = Rng::new(3);
    let n = 96;
    let x: Vec<f32> = (0..n).map(|_| r.uniform(-1.0, 0.3)).collect();
    let mut out = zeros::<f32>(&g, n);
    let mut votes = zeros::<u32>(&g, 3 * n / 32);
    let mut dout = zeros::<f64>(&g, n);
    let xin = up(&g, &x);
    unsafe {
        g.stream()
            .launch_builder(&f)
            .arg(&mut out)
            .arg(&mut votes)
            .arg(&mut dout)
            .arg(&xin)
            .launch(cfg((1, 1, 1), (n as u32, 1, 1), 0))
    }
    .unwrap();
    let (got, votes, dgot) = (down(&g, &out), down(&g, &votes), down(&g, &dout));
    for t in 0..n {
        assert_eq!(dgot[t], x[t ^ 1] as f64 * 3.0, "double shuffle, thread {t}");
        let want = if t % 2 == 0 { x[t ^ 2] } else { -1.0 };
        assert_eq!(got[t], want, "even-lane xor shuffle, thread {t}");
    }
    for w in 0..n / 32 {
        let ballot = (0..32)
            .filter(|l| l % 2 == 0 && x[32 * w + l] > 0.0)
            .fold(0u32, |b, l| b | 1 << l);
        assert_eq!(votes[3 * w], ballot, "ballot of warp {w}");
        assert_eq!(votes[3 * w + 1], (ballot != 0) as u32, "any of warp {w}");
        assert_eq!(
            votes[3 * w + 2],
            (ballot == 0x5555_5555) as u32,
            "all of warp {w}"
        );
    }
}

#[test]
fn atomics() {
    let Some(g) = gpu() else { return };
    let m = probes(&g, "sim_probe");
    let f = func(&m, "probe_atomics");
    let mut r = Rng::new(11);
    let n = 5 * 128;
    let vals: Vec<i32> = (0..n)
        .map(|_| (r.uniform(-1000.0, 1000.0)) as i32)
        .collect();
    let mut fs = zeros::<f32>(&g, 1);
    let mut ds = zeros::<f64>(&g, 1);
    let mut us = zeros::<u32>(&g, 1);
    let mut mx = up(&g, &[i32::MIN]);
    let mut mn = up(&g, &[i32::MAX]);
    let mut cas = zeros::<u32>(&g, 1);
    let vin = up(&g, &vals);
    unsafe {
        g.stream()
            .launch_builder(&f)
            .arg(&mut fs)
            .arg(&mut ds)
            .arg(&mut us)
            .arg(&mut mx)
            .arg(&mut mn)
            .arg(&mut cas)
            .arg(&vin)
            .launch(cfg((5, 1, 1), (128, 1, 1), 0))
    }
    .unwrap();
    let sum: i64 = vals.iter().map(|&v| v as i64).sum();
    assert_eq!(down(&g, &fs)[0], sum as f32);
    assert_eq!(down(&g, &ds)[0], sum as f64 * 0.5);
    assert_eq!(
        down(&g, &us)[0],
        vals.iter().map(|&v| (v & 7) as u32).sum::<u32>()
    );
    assert_eq!(down(&g, &mx)[0], *vals.iter().max().unwrap());
    assert_eq!(down(&g, &mn)[0], *vals.iter().min().unwrap());
    assert_eq!(down(&g, &cas)[0], n as u32);
}

/// Blocks and threads run in order by default, so even f32 atomics are reproducible: the sum is
/// exactly the in-order f32 sum. With BITUNE_CUDA_SIM_THREADS / BITUNE_CUDA_SIM_SEED the order is
/// shuffled, and only the value up to rounding is fixed.
#[test]
fn deterministic_by_default() {
    let Some(g) = gpu() else { return };
    let m = probes(&g, "sim_probe");
    let f = func(&m, "probe_fsum");
    let mut r = Rng::new(17);
    let n = 64 * 128;
    let vals: Vec<f32> = (0..n).map(|_| r.uniform(-1.0, 1.0) * 1000.0).collect();
    let vin = up(&g, &vals);
    let sum = |_: ()| {
        let mut acc = zeros::<f32>(&g, 1);
        unsafe {
            g.stream()
                .launch_builder(&f)
                .arg(&mut acc)
                .arg(&vin)
                .launch(cfg((64, 1, 1), (128, 1, 1), 0))
        }
        .unwrap();
        down(&g, &acc)[0]
    };
    let exact: f64 = vals.iter().map(|&v| v as f64).sum();
    let (a, b) = (sum(()), sum(()));
    assert!((a as f64 - exact).abs() < 0.5, "{a} vs {exact}");
    let var = |name| std::env::var(name).unwrap_or_default();
    let (threads, seed) = (var("BITUNE_CUDA_SIM_THREADS"), var("BITUNE_CUDA_SIM_SEED"));
    if sim::requested() && matches!(threads.as_str(), "" | "1") && matches!(seed.as_str(), "" | "0")
    {
        let in_order = vals.iter().fold(0f32, |s, &v| s + v);
        assert_eq!(
            a.to_bits(),
            in_order.to_bits(),
            "blocks and threads in order"
        );
        assert_eq!(a.to_bits(), b.to_bits(), "two runs");
    }
}

/// common.cuh's block_sum_d / block_max over rows wider and narrower than the block.
#[test]
fn block_reductions() {
    let Some(g) = gpu() else { return };
    let m = probes(&g, "sim_probe");
    let f = func(&m, "probe_reduce");
    let mut r = Rng::new(5);
    for (rows, width, threads) in [(3usize, 1000i32, 256u32), (2, 7, 64), (4, 300, 96)] {
        let x: Vec<f32> = (0..rows * width as usize)
            .map(|_| r.uniform(-2.0, 2.0))
            .collect();
        let mut sums = zeros::<f64>(&g, rows);
        let mut maxes = zeros::<f32>(&g, rows);
        let xin = up(&g, &x);
        unsafe {
            g.stream()
                .launch_builder(&f)
                .arg(&mut sums)
                .arg(&mut maxes)
                .arg(&xin)
                .arg(&width)
                .launch(cfg((rows as u32, 1, 1), (threads, 1, 1), 0))
        }
        .unwrap();
        let (s, mxs) = (down(&g, &sums), down(&g, &maxes));
        for (i, row) in x.chunks(width as usize).enumerate() {
            let want: f64 = row.iter().map(|&v| v as f64).sum();
            assert!((s[i] - want).abs() < 1e-9, "row {i}: {} vs {want}", s[i]);
            assert_eq!(
                mxs[i],
                row.iter().cloned().fold(f32::NEG_INFINITY, f32::max)
            );
        }
    }
}

// ---- planted failures (simulator only: on a GPU they hang or kill the context) -------------------

#[test]
fn planted_barrier_failures_are_reported() {
    let Some(g) = simulator() else { return };
    let m = probes(&g, "sim_probe");
    expect_failure(
        &g,
        &m,
        "planted_barrier_exit",
        cfg((1, 1, 1), (64, 1, 1), 0),
        0,
        &[
            "barrier divergence",
            "kernel planted_barrier_exit",
            "block (0,0,0)",
            "exited without reaching it",
            "kernels/sim_probe.cu:",
        ],
    );
    expect_failure(
        &g,
        &m,
        "planted_barrier_split",
        cfg((1, 1, 1), (64, 1, 1), 0),
        0,
        &[
            "barrier divergence",
            "kernel planted_barrier_split",
            "thread (",
            "__syncthreads at kernels/sim_probe.cu:",
        ],
    );
}

#[test]
fn planted_missing_lane_is_reported() {
    let Some(g) = simulator() else { return };
    let m = probes(&g, "sim_probe");
    expect_failure(
        &g,
        &m,
        "planted_shfl_missing_lane",
        cfg((1, 1, 1), (64, 1, 1), 0),
        0,
        &[
            "kernel planted_shfl_missing_lane",
            "__shfl_sync",
            "lane 5 (thread (5,0,0)) exited",
        ],
    );
}

#[test]
fn planted_out_of_bounds_is_reported() {
    let Some(g) = simulator() else { return };
    let m = probes(&g, "sim_probe");
    // `out` has 4096 floats: the last thread writes element 4096.
    expect_failure(
        &g,
        &m,
        "planted_oob_global",
        cfg((16, 1, 1), (256, 1, 1), 0),
        4096,
        &[
            "out-of-bounds access",
            "kernel planted_oob_global, block (15,0,0), thread (255,0,0)",
            "0 bytes past the end of the 16384-byte device allocation",
        ],
    );
    expect_failure(
        &g,
        &m,
        "planted_oob_shared",
        cfg((3, 1, 1), (64, 1, 1), 4 * 64),
        64,
        &[
            "out-of-bounds access",
            "kernel planted_oob_shared, block (1,0,0), thread (7,0,0)",
            "past the end of the 256-byte dynamic shared memory",
        ],
    );
    expect_failure(
        &g,
        &m,
        "planted_oob_static_shared",
        cfg((3, 1, 1), (64, 1, 1), 0),
        64,
        &[
            "out-of-bounds index into a fixed-size array",
            "kernel planted_oob_static_shared, block (2,0,0), thread (3,0,0)",
        ],
    );
}

#[test]
fn launches_over_device_limits_are_refused() {
    let Some(g) = simulator() else { return };
    let m = probes(&g, "sim_probe");
    let f = func(&m, "probe_ids");
    let mut out = zeros::<u32>(&g, 128);
    for (c, needle) in [
        (cfg((1, 1, 1), (2048, 1, 1), 0), "2048"),
        (cfg((1, 1, 1), (32, 32, 2), 0), "2048"),
        (cfg((1, 1, 1), (1, 1, 65), 0), "65"),
        (cfg((1, 70000, 1), (1, 1, 1), 0), "70000"),
        (cfg((0, 1, 1), (1, 1, 1), 0), "0"),
        // Over the 48 KiB default without the opt-in attribute.
        (cfg((1, 1, 1), (32, 1, 1), 64 * 1024), "65536"),
    ] {
        let r = unsafe { g.stream().launch_builder(&f).arg(&mut out).launch(c) };
        assert!(r.is_err(), "{c:?} must be refused");
        let msg = sim::last_error().unwrap_or_default();
        assert!(
            msg.contains("probe_ids") && msg.contains(needle),
            "{c:?}: {msg:?}"
        );
    }
    // Over __launch_bounds__(128).
    let f = func(&m, "planted_bounded");
    let r = unsafe {
        g.stream()
            .launch_builder(&f)
            .arg(&mut out)
            .launch(cfg((1, 1, 1), (256, 1, 1), 0))
    };
    assert!(
        r.is_err(),
        "256 threads over __launch_bounds__(128) must be refused"
    );
    let msg = sim::last_error().unwrap_or_default();
    assert!(
        msg.contains("planted_bounded") && msg.contains("128"),
        "{msg:?}"
    );
    // A kernel name the module does not have.
    let e = m
        .load_function("no_such_kernel")
        .expect_err("a missing kernel must not load");
    let msg = sim::last_error().unwrap_or_default();
    assert!(
        msg.contains("no_such_kernel") && msg.contains("sim_probe"),
        "{e:?}: {msg:?}"
    );
    // The simulator keeps working after each refusal.
    unsafe {
        g.stream()
            .launch_builder(&f)
            .arg(&mut out)
            .launch(cfg((1, 1, 1), (128, 1, 1), 0))
    }
    .unwrap();
    assert_eq!(down(&g, &out)[..4], [1.0f32.to_bits(); 4]);
}
