//! The CUDA simulator's entry on the Rust side (docs/ARCHITECTURE.md, "CUDA without a GPU").
//! With `BITUNE_CUDA_SIM=1`, the stand-ins for libcuda and libcublas that build.rs made from
//! sim/ and kernels/ are written to a private folder and loaded with RTLD_GLOBAL before cudarc's
//! first call. cudarc then opens "libcuda.so" / "libcublas.so", which glibc answers with the
//! already-loaded library of that soname, so everything above the driver — cudarc's marshalling,
//! module loading, the backend's launch configurations and plans — runs unchanged.

use anyhow::{anyhow, Context, Result};
use std::path::PathBuf;
use std::sync::OnceLock;

type Lib = libloading::os::unix::Library;

/// The loaded stand-ins, kept for the life of the process (cudarc's own handles expect that).
static LIBS: OnceLock<std::result::Result<Vec<Lib>, String>> = OnceLock::new();

include!(concat!(env!("OUT_DIR"), "/sim.rs"));

/// Whether `BITUNE_CUDA_SIM` asks for the simulator ("1", "true" or "yes").
pub fn requested() -> bool {
    std::env::var("BITUNE_CUDA_SIM")
        .map(|v| matches!(v.trim(), "1" | "true" | "yes"))
        .unwrap_or(false)
}

/// Loads the stand-ins once per process when the simulator is requested; a no-op otherwise.
pub fn activate() -> Result<()> {
    if !requested() {
        return Ok(());
    }
    match LIBS.get_or_init(|| load().map_err(|e| format!("{e:#}"))) {
        Ok(_) => Ok(()),
        Err(e) => Err(anyhow!("BITUNE_CUDA_SIM=1: {e}")),
    }
}

fn load() -> Result<Vec<Lib>> {
    let dir = write_libraries()?;
    let mut libs = vec![];
    for name in ["libcuda.so", "libcublas.so"] {
        let path = dir.join(name);
        // SAFETY: the library is ours (built by build.rs from sim/); its static initialisers only
        // fill the kernel registry.
        let lib = unsafe {
            libloading::os::unix::Library::open(
                Some(&path),
                libloading::os::unix::RTLD_NOW | libloading::os::unix::RTLD_GLOBAL,
            )
        }
        .with_context(|| format!("loading the simulator's {}", path.display()))?;
        libs.push(lib);
    }
    Ok(libs)
}

/// The libraries, in a folder named by their content hash (written once, atomically).
fn write_libraries() -> Result<PathBuf> {
    let hash = LIBCUDA
        .iter()
        .chain(LIBCUBLAS)
        .fold(0xcbf29ce484222325u64, |h, &b| {
            (h ^ b as u64).wrapping_mul(0x100000001b3)
        });
    let dir = std::env::temp_dir().join(format!("bitune-rt-cuda-sim-{hash:016x}"));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for (name, bytes) in [("libcuda.so", LIBCUDA), ("libcublas.so", LIBCUBLAS)] {
        let path = dir.join(name);
        if std::fs::metadata(&path).is_ok_and(|m| m.len() == bytes.len() as u64) {
            continue;
        }
        let tmp = dir.join(format!("{name}.{}.tmp", std::process::id()));
        std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(dir)
}

/// The simulator's last error message (kernel, block, thread), or None without the simulator.
pub fn last_error() -> Option<String> {
    let libs = LIBS.get()?.as_ref().ok()?;
    // SAFETY: the stand-in exports this with exactly this signature; it returns a NUL-terminated
    // string owned by the calling thread that stays valid until that thread's next call.
    unsafe {
        let f: libloading::os::unix::Symbol<unsafe extern "C" fn() -> *const std::ffi::c_char> =
            libs[0].get(b"bitune_sim_last_error\0").ok()?;
        let p = f();
        (!p.is_null()).then(|| std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned())
    }
}

/// What the process has asked of the simulated device so far (see [`counters`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Device-to-host copies (each one a synchronisation point on a GPU).
    pub dtoh_copies: u64,
    pub htod_copies: u64,
    /// Device allocations.
    pub allocs: u64,
}

impl std::ops::Sub for Counters {
    type Output = Counters;
    fn sub(self, o: Counters) -> Counters {
        Counters {
            dtoh_copies: self.dtoh_copies - o.dtoh_copies,
            htod_copies: self.htod_copies - o.htod_copies,
            allocs: self.allocs - o.allocs,
        }
    }
}

/// The simulator's copy and allocation counters since the process started, or None without the
/// simulator: tests take the difference around one decode or train step.
pub fn counters() -> Option<Counters> {
    let libs = LIBS.get()?.as_ref().ok()?;
    let (mut d, mut h, mut a) = (0u64, 0u64, 0u64);
    // SAFETY: the stand-in exports this with exactly this signature (sim/driver_mem.cpp); it
    // writes one integer through each non-null pointer, all three valid for the call.
    unsafe {
        let f: libloading::os::unix::Symbol<unsafe extern "C" fn(*mut u64, *mut u64, *mut u64)> =
            libs[0].get(b"bitune_sim_counters\0").ok()?;
        f(&mut d, &mut h, &mut a);
    }
    Some(Counters {
        dtoh_copies: d,
        htod_copies: h,
        allocs: a,
    })
}
