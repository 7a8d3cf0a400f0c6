//! Helpers shared by the CUDA test binaries (cuda_ops, cuda_attention_lora, cuda_model).
#![allow(dead_code)]

use bitune_rt::backend::cuda::CudaBackend;
use bitune_rt::backend::Backend;
use bitune_rt::rng::Rng;

/// The GPU or the simulator (BITUNE_CUDA_SIM=1), or None after printing why the test skips (no
/// driver, no device). Skipping is refused where CUDA must run: under the simulator, and with
/// BITUNE_CUDA_REQUIRED=1 (scripts/test.sh sets both, so CI never passes a CUDA test unrun).
pub fn gpu() -> Option<CudaBackend> {
    match CudaBackend::new(0) {
        Ok(g) => Some(g),
        Err(e) if bitune_rt::backend::cuda::sim::requested() => {
            panic!("the CUDA simulator did not open: {e:#}")
        }
        Err(e) if std::env::var_os("BITUNE_CUDA_REQUIRED").is_some_and(|v| v == "1") => {
            panic!("BITUNE_CUDA_REQUIRED=1 but CUDA did not open: {e:#}")
        }
        Err(e) => {
            eprintln!("SKIP: no CUDA device ({e:#})");
            None
        }
    }
}

pub fn rand(rng: &mut Rng, n: usize, a: f32) -> Vec<f32> {
    (0..n).map(|_| rng.uniform(-a, a)).collect()
}

pub fn nan(g: &CudaBackend, n: usize) -> <CudaBackend as Backend>::Buf {
    g.upload(&vec![f32::NAN; n])
}

/// Max |got − want| relative to max(|want|, 1e-3); infinities must match exactly, NaN fails.
#[track_caller]
pub fn close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want
        .iter()
        .filter(|v| v.is_finite())
        .fold(1e-3f32, |m, v| m.max(v.abs()));
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let ok = if w.is_finite() {
            g.is_finite() && (g - w).abs() <= tol * scale
        } else {
            g == w
        };
        assert!(
            ok,
            "{what}: element {i}: cuda {g} vs cpu {w} (tolerance {tol} × {scale})"
        );
    }
}

// ---- raw launches of probe modules (the simulator's own tests) ----------------------------------

/// Loads `kernels/<name>.cu` (a probe module outside the backend's kernel table).
pub fn probes(g: &CudaBackend, name: &str) -> std::sync::Arc<cudarc::driver::CudaModule> {
    let image = bitune_rt::backend::cuda::module_image(name)
        .unwrap_or_else(|| panic!("kernels/{name}.cu was not built"));
    g.context()
        .load_module(cudarc::nvrtc::Ptx::from_binary(image.to_vec()))
        .unwrap_or_else(|e| panic!("loading kernels/{name}.cu: {e:?}"))
}

pub fn func(
    m: &std::sync::Arc<cudarc::driver::CudaModule>,
    name: &str,
) -> cudarc::driver::CudaFunction {
    m.load_function(name)
        .unwrap_or_else(|e| panic!("{name}: {e:?}"))
}

pub fn up<T: cudarc::driver::DeviceRepr>(g: &CudaBackend, v: &[T]) -> cudarc::driver::CudaSlice<T> {
    g.stream().clone_htod(v).unwrap()
}

pub fn zeros<T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits>(
    g: &CudaBackend,
    n: usize,
) -> cudarc::driver::CudaSlice<T> {
    g.stream().alloc_zeros::<T>(n).unwrap()
}

pub fn down<T: cudarc::driver::DeviceRepr + Clone + Default>(
    g: &CudaBackend,
    s: &cudarc::driver::CudaSlice<T>,
) -> Vec<T> {
    g.stream().clone_dtoh(s).unwrap()
}

/// The simulator, or None (printing why) on a GPU or without CUDA: planted failures hang or kill
/// a real GPU's context, so only the simulator runs them.
pub fn simulator() -> Option<CudaBackend> {
    if !bitune_rt::backend::cuda::sim::requested() {
        eprintln!("planted failures run only on the simulator (BITUNE_CUDA_SIM=1)");
        return None;
    }
    gpu()
}

/// Launches probe `name(float* out, int n)` expecting a failure whose simulator message contains
/// every one of `needles`.
pub fn expect_failure(
    g: &CudaBackend,
    m: &std::sync::Arc<cudarc::driver::CudaModule>,
    name: &str,
    c: cudarc::driver::LaunchConfig,
    n: i32,
    needles: &[&str],
) {
    use cudarc::driver::PushKernelArg;
    let f = func(m, name);
    let mut out = zeros::<f32>(g, 4096);
    // SAFETY: every planted probe takes (float* out, int n); `out` holds 4096 floats.
    let r = unsafe {
        g.stream()
            .launch_builder(&f)
            .arg(&mut out)
            .arg(&n)
            .launch(c)
    };
    let err = r.expect_err(&format!("{name} must fail"));
    let msg = bitune_rt::backend::cuda::sim::last_error().unwrap_or_default();
    for needle in needles {
        assert!(
            msg.contains(needle),
            "{name}: {err:?}: message {msg:?} lacks {needle:?}"
        );
    }
}
