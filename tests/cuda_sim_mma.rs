//! The tensor-core and async-copy wrappers of kernels/mma.cuh (mma.m16n8k16 bf16/f16, ldmatrix,
//! cp.async) through the probe kernels of kernels/sim_probe_mma.cu, launched through cudarc as the
//! backend launches its kernels and checked against scalar references written from the PTX ISA
//! (9.7.14.5.8 "Matrix Fragments for mma.m16n8k16 with floating point type", 9.7.14.5.15
//! "ldmatrix", 9.7.9.25 "cp.async"), and the bf16/f16 conversions of cuda_bf16.h / cuda_fp16.h
//! against round-to-nearest-even at every tie. On a GPU they check the wrappers' PTX; on the
//! simulator (BITUNE_CUDA_SIM=1) its host bodies and sim/include's headers, plus what only the
//! simulator can promise: reads not covered by a cp.async wait see poison, and misuses are
//! reported with kernel, block and thread.
#![cfg(feature = "cuda")]

mod cuda_common;

use bitune_rt::backend::cuda::sim;
use bitune_rt::rng::Rng;
use cuda_common::{down, expect_failure, func, gpu, probes, simulator, up, zeros};
use cudarc::driver::{LaunchConfig, PushKernelArg};

fn cfg(grid: u32, block: u32, smem: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (grid, 1, 1),
        block_dim: (block, 1, 1),
        shared_mem_bytes: smem,
    }
}

// ---- 16-bit floats ------------------------------------------------------------------------------

fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// Normal and zero f16 only (what `random_16bit` draws).
fn f16_to_f32(h: u16) -> f32 {
    let (sign, e, m) = (
        (h as u32 & 0x8000) << 16,
        (h as u32 >> 10) & 0x1f,
        h as u32 & 0x3ff,
    );
    assert!(
        e != 0x1f && (e != 0 || m == 0),
        "f16 {h:#06x} outside the test's range"
    );
    if e == 0 {
        return f32::from_bits(sign);
    }
    f32::from_bits(sign | (e + 112) << 23 | m << 13)
}

/// Random bf16 or f16 bit patterns: either sign, magnitudes in [2^-6, 2^4), one in 16 a zero.
fn random_16bit(r: &mut Rng, n: usize, f16: bool) -> Vec<u16> {
    (0..n)
        .map(|_| {
            let x = r.next_u64();
            if x.is_multiple_of(16) {
                return if x & 32 != 0 { 0x8000 } else { 0 };
            }
            let sign = ((x >> 8) & 1) as u16;
            let e = ((x >> 9) % 10) as u16; // 2^-6 .. 2^3
            let m = (x >> 20) as u16;
            if f16 {
                sign << 15 | (e + 15 - 6) << 10 | (m & 0x3ff)
            } else {
                sign << 15 | (e + 127 - 6) << 7 | (m & 0x7f)
            }
        })
        .collect()
}

// ---- mma.m16n8k16 ---------------------------------------------------------------------------------

/// D = A·B + C per tile (A 16 x K, B K x 8, C 16 x 8, all row-major) in f64, with the sum of
/// |terms| that bounds the rounding error of any summation order.
fn mma_ref(a: &[u16], b: &[u16], c: &[f32], k: usize, f16: bool) -> (Vec<f64>, Vec<f64>) {
    let cvt = |h: u16| (if f16 { f16_to_f32(h) } else { bf16_to_f32(h) }) as f64;
    let tiles = c.len() / 128;
    let (mut d, mut mag) = (vec![0f64; tiles * 128], vec![0f64; tiles * 128]);
    for t in 0..tiles {
        let (at, bt) = (
            &a[t * 16 * k..(t + 1) * 16 * k],
            &b[t * k * 8..(t + 1) * k * 8],
        );
        for i in 0..16 {
            for j in 0..8 {
                let mut s = c[t * 128 + i * 8 + j] as f64;
                let mut m = s.abs();
                for kk in 0..k {
                    let p = cvt(at[i * k + kk]) * cvt(bt[kk * 8 + j]);
                    s += p;
                    m += p.abs();
                }
                d[t * 128 + i * 8 + j] = s;
                mag[t * 128 + i * 8 + j] = m;
            }
        }
    }
    (d, mag)
}

/// |got − want| ≤ tol·Σ|terms| per element. Any fragment index wrong moves an element by O(1)·Σ.
#[track_caller]
fn check_mma(what: &str, got: &[f32], want: &[f64], mag: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (e, ((&g, &w), &m)) in got.iter().zip(want).zip(mag).enumerate() {
        let (tile, row, col) = (e / 128, e % 128 / 8, e % 8);
        assert!(
            (g as f64 - w).abs() <= tol * m.max(1e-30),
            "{what}: tile {tile} D[{row}][{col}] = {g} vs {w} (tolerance {tol} × {m})"
        );
    }
}

/// Products of 16-bit floats are exact in f32; on the simulator each m16n8k16 step is summed in
/// f64 and rounded once (error ≤ 2^-24·Σ|terms| per k-step); the tensor cores accumulate in f32
/// in an order the PTX ISA leaves open, hence the looser bound on a GPU.
fn mma_tolerance() -> f64 {
    if sim::requested() {
        1e-6
    } else {
        1e-5
    }
}

#[test]
fn mma_fragments_from_registers() {
    let Some(g) = gpu() else { return };
    let m = probes(&g, "sim_probe_mma");
    let f = func(&m, "probe_mma_direct");
    let mut r = Rng::new(11);
    // (tiles, k-steps, warps per block): a partial last block leaves warps with nothing to do.
    for (tiles, ksteps, warps) in [(1usize, 1usize, 1u32), (5, 1, 2), (7, 4, 4), (3, 2, 1)] {
        for f16 in [false, true] {
            let k = 16 * ksteps;
            let a = random_16bit(&mut r, tiles * 16 * k, f16);
            let b = random_16bit(&mut r, tiles * k * 8, f16);
            let c: Vec<f32> = (0..tiles * 128).map(|_| r.uniform(-4.0, 4.0)).collect();
            let mut d = up(&g, &vec![f32::NAN; tiles * 128]);
            let blocks = (tiles as u32).div_ceil(warps);
            let (ks, fl, nt) = (ksteps as i32, f16 as i32, tiles as i32);
            unsafe {
                g.stream()
                    .launch_builder(&f)
                    .arg(&mut d)
                    .arg(&up(&g, &a))
                    .arg(&up(&g, &b))
                    .arg(&up(&g, &c))
                    .arg(&ks)
                    .arg(&fl)
                    .arg(&nt)
                    .launch(cfg(blocks, 32 * warps, 0))
            }
            .unwrap();
            let (want, mag) = mma_ref(&a, &b, &c, k, f16);
            let what = format!(
                "probe_mma_direct {} tiles={tiles} K={k}",
                if f16 { "f16" } else { "bf16" }
            );
            check_mma(&what, &down(&g, &d), &want, &mag, mma_tolerance());
        }
    }
}

#[test]
fn mma_fragments_from_ldmatrix() {
    let Some(g) = gpu() else { return };
    let m = probes(&g, "sim_probe_mma");
    let f = func(&m, "probe_mma_ldmatrix");
    let mut r = Rng::new(12);
    for (tiles, warps) in [(1usize, 1u32), (6, 4), (5, 2)] {
        for f16 in [false, true] {
            let a = random_16bit(&mut r, tiles * 256, f16);
            let b = random_16bit(&mut r, tiles * 128, f16);
            let c: Vec<f32> = (0..tiles * 128).map(|_| r.uniform(-4.0, 4.0)).collect();
            let mut d = up(&g, &vec![f32::NAN; tiles * 256]);
            let (fl, nt) = (f16 as i32, tiles as i32);
            unsafe {
                g.stream()
                    .launch_builder(&f)
                    .arg(&mut d)
                    .arg(&up(&g, &a))
                    .arg(&up(&g, &b))
                    .arg(&up(&g, &c))
                    .arg(&fl)
                    .arg(&nt)
                    .launch(cfg((tiles as u32).div_ceil(warps), 32 * warps, 768 * warps))
            }
            .unwrap();
            let (want, mag) = mma_ref(&a, &b, &c, 16, f16);
            let got = down(&g, &d);
            let ty = if f16 { "f16" } else { "bf16" };
            for (path, half) in ["B by ldmatrix.x2.trans", "B by ldmatrix.x2 of Bᵀ"]
                .iter()
                .zip(0..2)
            {
                let got: Vec<f32> = (0..tiles)
                    .flat_map(|t| got[t * 256 + half * 128..t * 256 + half * 128 + 128].to_vec())
                    .collect();
                check_mma(
                    &format!("probe_mma_ldmatrix {ty} tiles={tiles}, {path}"),
                    &got,
                    &want,
                    &mag,
                    mma_tolerance(),
                );
            }
        }
    }
}

// ---- ldmatrix -----------------------------------------------------------------------------------

/// What lane `lane` receives in register `m` (matrix m): row lane/4, elements 2(lane%4) and +1
/// (low half first); with .trans column lane/4, rows 2(lane%4) and +1.
fn ldmatrix_ref(src: &[u16], lane: usize, m: usize, trans: bool) -> u32 {
    let (g, t) = (lane / 4, lane % 4);
    let at = |row: usize, col: usize| src[64 * m + 8 * row + col] as u32;
    if trans {
        at(2 * t, g) | at(2 * t + 1, g) << 16
    } else {
        at(g, 2 * t) | at(g, 2 * t + 1) << 16
    }
}

#[test]
fn ldmatrix_every_form() {
    let Some(g) = gpu() else { return };
    let m = probes(&g, "sim_probe_mma");
    let f = func(&m, "probe_ldmatrix");
    let mut r = Rng::new(13);
    for _ in 0..3 {
        let src: Vec<u16> = (0..256).map(|_| r.next_u64() as u16).collect();
        let mut perm: Vec<i32> = (0..32).collect();
        r.shuffle(&mut perm);
        const UNTOUCHED: u32 = 0xdead_beef;
        let mut out = up(&g, &vec![UNTOUCHED; 6 * 32 * 4]);
        unsafe {
            g.stream()
                .launch_builder(&f)
                .arg(&mut out)
                .arg(&up(&g, &src))
                .arg(&up(&g, &perm))
                .launch(cfg(1, 32, 0))
        }
        .unwrap();
        let got = down(&g, &out);
        for (form, (n, trans)) in [
            (1, false),
            (2, false),
            (4, false),
            (1, true),
            (2, true),
            (4, true),
        ]
        .into_iter()
        .enumerate()
        {
            for lane in 0..32 {
                for reg in 0..4 {
                    let want = if reg < n {
                        ldmatrix_ref(&src, lane, reg, trans)
                    } else {
                        UNTOUCHED
                    };
                    let got = got[(form * 32 + lane) * 4 + reg];
                    assert_eq!(
                        got,
                        want,
                        "ldmatrix .x{n}{} lane {lane} register {reg}: {got:#010x} vs {want:#010x}",
                        if trans { ".trans" } else { "" }
                    );
                }
            }
        }
    }
}

// ---- cp.async -------------------------------------------------------------------------------------

const POISON: u32 = 0xffff_ffff;

#[test]
fn cp_async_groups_land_in_order() {
    let Some(g) = gpu() else { return };
    let m = probes(&g, "sim_probe_mma");
    let f = func(&m, "probe_cp_async");
    let mut r = Rng::new(14);
    for (blocks, threads, valid) in [
        (1usize, 32usize, 128i32),
        (3, 64, 0),
        (2, 128, 37),
        (2, 32, 5),
    ] {
        let t = 4 * threads;
        let src: Vec<f32> = (0..blocks * 4 * t).map(|_| r.uniform(-1.0, 1.0)).collect();
        let mut out = up(&g, &vec![f32::NAN; blocks * 4 * t]);
        let mut peek = zeros::<f32>(&g, blocks * 3 * t);
        unsafe {
            g.stream()
                .launch_builder(&f)
                .arg(&mut out)
                .arg(&mut peek)
                .arg(&up(&g, &src))
                .arg(&valid)
                .launch(cfg(blocks as u32, threads as u32, 16 * t as u32))
        }
        .unwrap();
        let got = down(&g, &out);
        for (i, (&gv, &sv)) in got.iter().zip(&src).enumerate() {
            let (b, tile, j) = (i / (4 * t), i % (4 * t) / t, i % t);
            let want = if tile == 3 && j as i32 >= valid {
                0
            } else {
                sv.to_bits()
            };
            assert_eq!(
                gv.to_bits(),
                want,
                "blocks {blocks} threads {threads} valid {valid}: block {b} tile {tile} element {j}"
            );
        }
        if sim::requested() {
            // After wait_group 3 the three newer groups are still in flight: the simulator has not
            // copied them, and their destinations hold the poison written at issue.
            let peek = down(&g, &peek);
            let bad = peek.iter().position(|v| v.to_bits() != POISON);
            assert!(
                bad.is_none(),
                "tile {} read before its wait_group: {:?}",
                bad.unwrap() / t + 1,
                &peek[bad.unwrap()..]
            );
        }
    }
}

#[test]
fn cp_async_read_before_wait_is_poison_on_the_simulator() {
    let Some(g) = gpu() else { return };
    let m = probes(&g, "sim_probe_mma");
    let f = func(&m, "probe_cp_async_nowait");
    let mut r = Rng::new(15);
    let threads = 64usize;
    let t = 4 * threads;
    let src: Vec<f32> = (0..2 * t).map(|_| r.uniform(-1.0, 1.0)).collect();
    let mut out = up(&g, &vec![f32::NAN; 2 * t]);
    let mut early = zeros::<f32>(&g, 2 * t);
    unsafe {
        g.stream()
            .launch_builder(&f)
            .arg(&mut out)
            .arg(&mut early)
            .arg(&up(&g, &src))
            .launch(cfg(1, threads as u32, 8 * t as u32))
    }
    .unwrap();
    let got: Vec<u32> = down(&g, &out).iter().map(|v| v.to_bits()).collect();
    let want: Vec<u32> = src.iter().map(|v| v.to_bits()).collect();
    assert_eq!(
        got, want,
        "the waited-for copies (wait_group 0, then wait_all for the uncommitted one)"
    );
    if sim::requested() {
        let early = down(&g, &early);
        let (committed, uncommitted) = early.split_at(t);
        assert!(
            committed.iter().all(|v| v.to_bits() == POISON),
            "a committed group read before any wait must be poison"
        );
        assert!(
            uncommitted.iter().all(|v| v.to_bits() == POISON),
            "a copy never committed is not covered by wait_group 0 and must still be poison"
        );
    }
}

// ---- bf16 / f16 conversions -------------------------------------------------------------------

/// Round half to even of a non-negative f64 that is exact (few significant bits).
fn round_half_even(v: f64) -> f64 {
    let f = v.floor();
    let d = v - f;
    if d > 0.5 || (d == 0.5 && f % 2.0 == 1.0) {
        f + 1.0
    } else {
        f
    }
}

/// f32 → bf16 bits, round to nearest even, by f64 arithmetic; NaN → the canonical 0x7FFF.
fn bf16_rne(x: f32) -> u16 {
    if x.is_nan() {
        return 0x7fff;
    }
    let sign = (x.to_bits() >> 16) as u16 & 0x8000;
    let a = x.abs() as f64;
    if a.is_infinite() {
        return sign | 0x7f80;
    }
    if a < f32::MIN_POSITIVE as f64 {
        // bf16 subnormals: units of 2^-133, as f32 subnormals are units of 2^-149.
        return sign | round_half_even(a * 2f64.powi(133)) as u16;
    }
    let e = ((a.to_bits() >> 52) & 0x7ff) as i32 - 1023; // a in [2^e, 2^(e+1))
    let mut m = round_half_even(a / 2f64.powi(e - 7)); // [128, 256]
    let mut e = e;
    if m == 256.0 {
        m = 128.0;
        e += 1;
    }
    if e + 127 >= 255 {
        return sign | 0x7f80;
    }
    sign | ((e + 127) as u16) << 7 | (m as u16 - 128)
}

/// f32 → f16 bits, round to nearest even, by f64 arithmetic; NaN → the canonical 0x7FFF.
fn f16_rne(x: f32) -> u16 {
    if x.is_nan() {
        return 0x7fff;
    }
    let sign = (x.to_bits() >> 16) as u16 & 0x8000;
    let a = x.abs() as f64;
    if a >= 65520.0 {
        return sign | 0x7c00;
    }
    if a < 2f64.powi(-14) {
        return sign | round_half_even(a * 2f64.powi(24)) as u16; // 0x400 when it rounds up to 2^-14
    }
    let e = ((a.to_bits() >> 52) & 0x7ff) as i32 - 1023;
    let mut m = round_half_even(a / 2f64.powi(e - 10)); // [1024, 2048]
    let mut e = e;
    if m == 2048.0 {
        m = 1024.0;
        e += 1;
    }
    sign | ((e + 15) as u16) << 10 | (m as u16 - 1024)
}

/// The value of f16 magnitude bits `h` (0x7C00 stands for 65536, the next step past the largest).
fn f16_magnitude(h: u32) -> f64 {
    let (e, m) = (h >> 10, h & 0x3ff);
    if e == 0 {
        m as f64 * 2f64.powi(-24)
    } else {
        (1024 + m) as f64 * 2f64.powi(e as i32 - 25)
    }
}

/// Every rounding tie of both formats with its neighbours, in both signs, the exact values,
/// specials, and random floats.
fn conversion_inputs(r: &mut Rng) -> Vec<f32> {
    let mut v = vec![];
    for sign in [0u32, 0x8000_0000] {
        for h in 0..0x7f80u32 {
            let tie = h << 16 | 0x8000;
            v.extend([tie - 1, tie, tie + 1].map(|b| f32::from_bits(sign | b)));
        }
        for h in 0..0x7c00u32 {
            let tie = ((f16_magnitude(h) + f16_magnitude(h + 1)) / 2.0) as f32; // exact
            let exact = f16_magnitude(h) as f32;
            for b in [
                tie.to_bits() - 1,
                tie.to_bits(),
                tie.to_bits() + 1,
                exact.to_bits(),
            ] {
                v.push(f32::from_bits(sign | b));
            }
        }
    }
    v.extend([
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        -f32::NAN,
        f32::MAX,
        f32::MIN_POSITIVE,
        65504.0,
    ]);
    v.extend([0x7f80_0001u32, 0xffc0_1234, 0x0000_0001, 0x8000_0001].map(f32::from_bits));
    v.extend((0..100_000).map(|_| f32::from_bits(r.next_u64() as u32)));
    if v.len() % 2 == 1 {
        v.push(1.0);
    }
    v
}

#[test]
fn bf16_and_f16_conversions_are_exact() {
    let Some(g) = gpu() else { return };
    let m = probes(&g, "sim_probe_mma");
    let f = func(&m, "probe_convert");
    let mut r = Rng::new(16);
    let x = conversion_inputs(&mut r);
    let bits: Vec<u16> = (0..=u16::MAX).collect();
    let n = x.len();
    let (mut to_bf16, mut to_f16) = (zeros::<u16>(&g, n), zeros::<u16>(&g, n));
    let (mut pk_bf16, mut pk_f16) = (zeros::<u32>(&g, n / 2), zeros::<u32>(&g, n / 2));
    let (mut from_bf16, mut from_f16) =
        (zeros::<f32>(&g, bits.len()), zeros::<f32>(&g, bits.len()));
    let (ni, nb) = (n as i32, bits.len() as i32);
    unsafe {
        g.stream()
            .launch_builder(&f)
            .arg(&mut to_bf16)
            .arg(&mut to_f16)
            .arg(&mut pk_bf16)
            .arg(&mut pk_f16)
            .arg(&up(&g, &x))
            .arg(&ni)
            .arg(&mut from_bf16)
            .arg(&mut from_f16)
            .arg(&up(&g, &bits))
            .arg(&nb)
            .launch(cfg(64, 256, 0))
    }
    .unwrap();
    // The simulator promises CUDA's canonical NaNs; a GPU's cvt is only required to give a NaN.
    let exact_nan = sim::requested();
    let (to_bf16, to_f16) = (down(&g, &to_bf16), down(&g, &to_f16));
    let (pk_bf16, pk_f16) = (down(&g, &pk_bf16), down(&g, &pk_f16));
    for (i, &xv) in x.iter().enumerate() {
        for (name, got, want, nan_mask) in [
            ("__float2bfloat16", to_bf16[i], bf16_rne(xv), 0x7f80u16),
            ("__float2half", to_f16[i], f16_rne(xv), 0x7c00),
        ] {
            let ok = if xv.is_nan() && !exact_nan {
                got & nan_mask == nan_mask && got & !(nan_mask | 0x8000) != 0
            } else {
                got == want
            };
            assert!(
                ok,
                "{name}({xv:e} = {:#010x}) = {got:#06x}, want {want:#06x}",
                xv.to_bits()
            );
        }
    }
    for i in 0..n / 2 {
        for (name, got, lo, hi) in [
            (
                "pack_bf16x2",
                pk_bf16[i],
                to_bf16[2 * i],
                to_bf16[2 * i + 1],
            ),
            ("pack_half2", pk_f16[i], to_f16[2 * i], to_f16[2 * i + 1]),
        ] {
            let want = lo as u32 | (hi as u32) << 16;
            assert_eq!(
                got,
                want,
                "{name}({:e}, {:e}): {got:#010x} vs {want:#010x}",
                x[2 * i],
                x[2 * i + 1]
            );
        }
    }
    let (from_bf16, from_f16) = (down(&g, &from_bf16), down(&g, &from_f16));
    for h in 0..=u16::MAX {
        let i = h as usize;
        let want_bf16 = (h as u32) << 16;
        let got = from_bf16[i].to_bits();
        let ok = got == want_bf16
            || (!exact_nan && from_bf16[i].is_nan() && f32::from_bits(want_bf16).is_nan());
        assert!(
            ok,
            "__bfloat162float({h:#06x}) = {got:#010x}, want {want_bf16:#010x}"
        );
        let mag = h as u32 & 0x7fff;
        let got = from_f16[i];
        if mag > 0x7c00 {
            assert!(
                got.is_nan() && (!exact_nan || got.to_bits() == 0x7fff_ffff),
                "__half2float({h:#06x}) = {got:e}"
            );
        } else {
            let v = if mag == 0x7c00 {
                f64::INFINITY
            } else {
                f16_magnitude(mag)
            };
            let want = if h & 0x8000 != 0 { -v } else { v } as f32;
            assert_eq!(
                got.to_bits(),
                want.to_bits(),
                "__half2float({h:#06x}) = {got:e}, want {want:e}"
            );
        }
    }
}

// ---- planted misuses (simulator only: undefined behaviour on a GPU) ------------------------------

#[test]
fn planted_misuses_are_reported() {
    let Some(g) = simulator() else { return };
    let m = probes(&g, "sim_probe_mma");
    expect_failure(
        &g,
        &m,
        "planted_ldmatrix_misaligned",
        cfg(1, 32, 0),
        0,
        &[
            "ldmatrix.sync.aligned.m8n8.x4.shared.b16",
            "not 16-byte aligned (lane 3)",
            "kernels/sim_probe_mma.cu:",
            "kernel planted_ldmatrix_misaligned, block (0,0,0), thread (3,0,0)",
        ],
    );
    expect_failure(
        &g,
        &m,
        "planted_mma_missing_lane",
        cfg(1, 64, 0),
        0,
        &[
            "warp collective cannot complete",
            "kernel planted_mma_missing_lane",
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 at kernels/sim_probe_mma.cu:",
            "lane 31 (thread (63,0,0)) exited",
        ],
    );
    expect_failure(
        &g,
        &m,
        "planted_cp_async_past_smem",
        cfg(2, 32, 4 * 62),
        62,
        &[
            "cp.async.cg.shared.global (16 bytes)",
            "run past the end of the 248 bytes of dynamic shared memory",
            "kernel planted_cp_async_past_smem, block (1,0,0), thread (5,0,0)",
        ],
    );
}
