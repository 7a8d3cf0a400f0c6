//! The CUDA backend: hand-written kernels (kernels/*.cu, compiled by build.rs and embedded) plus
//! cuBLAS for the base-weight matmuls, driven through cudarc on one stream.
//!
//! This first version keeps **f32 buffers everywhere**: activations (the trait's `Buf` is f32
//! on every backend) and frozen weights (`CudaWeight`, whose bf16 and quantised forms are the
//! planned next step; see "Precision per device" in docs/ARCHITECTURE.md).
//!
//! Layout: `mod.rs` the backend object, its buffers and launch helpers; `imp.rs` the `Backend`
//! impl (one-line delegations); `ops.rs` elementwise and row-movement ops; `rowwise.rs` norms,
//! RoPE, cross-entropy, optimizers; `gemm.rs` frozen weights, cuBLAS, the decode GEMV and the
//! segment GEMM; `lora.rs` LoRA on that GEMM; `attention.rs` the segment flash attention;
//! `kernels.rs` the eager kernel table.

mod attention;
mod cols;
mod gemm;
mod imp;
mod kernels;
mod lora;
mod ops;
mod rowwise;
pub mod sim;

pub use gemm::CudaWeight;

use crate::backend::device::device_failure;
use anyhow::{anyhow, bail, Result};
use cudarc::cublas::CudaBlas;
use cudarc::driver::sys::CUdevice_attribute;
use cudarc::driver::{CudaContext, CudaSlice, CudaStream, DeviceRepr, LaunchConfig};
use kernels::Kernels;
use std::collections::HashMap;
use std::mem::ManuallyDrop;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A device buffer of `len` f32 in an allocation of `capacity() >= len` (a KV cache grows into
/// its spare rows in place). The allocation holds at least one element because the driver
/// refuses zero-byte allocations, and the model asks for empty buffers (`zeros(0)`). Dropping it
/// returns the allocation to the backend's pool ([`Pool`]) rather than to the driver.
pub struct CudaBuf {
    pub(crate) data: ManuallyDrop<CudaSlice<f32>>,
    len: usize,
    pool: Arc<Pool>,
}

impl CudaBuf {
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Elements the allocation holds.
    pub fn capacity(&self) -> usize {
        self.data.len()
    }
    /// Grows (or shrinks) the buffer within its allocation; new elements keep what the
    /// allocation held (zeros from `alloc_with_capacity`).
    pub(crate) fn set_len(&mut self, n: usize) {
        assert!(n <= self.capacity(), "cuda: length {n} over capacity");
        self.len = n;
    }
}

impl Drop for CudaBuf {
    fn drop(&mut self) {
        // SAFETY: `data` is taken exactly once, here, and `self` is never used again.
        let data = unsafe { ManuallyDrop::take(&mut self.data) };
        self.pool.give_back(data);
    }
}

/// The caching allocator behind every [`CudaBuf`]: freed allocations are kept by size and handed
/// out again (zeroed by an asynchronous memset), so the intermediates of a forward or backward,
/// which have the same sizes step after step, cost no driver allocation after the first step.
/// Frees are stream-ordered, so a kept allocation is reused only after the kernels that used it.
/// At most `limit` bytes are kept; the rest go back to the driver, and so does everything kept
/// when an allocation fails (then it is retried once).
pub(crate) struct Pool {
    free: Mutex<HashMap<usize, Vec<CudaSlice<f32>>>>,
    cached: AtomicU64,
    limit: u64,
    /// Bytes held from the driver (live buffers + kept ones), their peak, and driver allocations.
    held: AtomicU64,
    peak: AtomicU64,
    allocs: AtomicU64,
}

impl Pool {
    fn new() -> Self {
        let limit_mib = std::env::var("BITUNE_CUDA_POOL_MIB")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(2048);
        Pool {
            free: Mutex::default(),
            cached: AtomicU64::new(0),
            limit: limit_mib << 20,
            held: AtomicU64::new(0),
            peak: AtomicU64::new(0),
            allocs: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<usize, Vec<CudaSlice<f32>>>> {
        // A panic while holding the lock cannot leave the map inconsistent (single push/pop).
        self.free
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn take(&self, cap: usize) -> Option<CudaSlice<f32>> {
        let s = self.lock().get_mut(&cap)?.pop()?;
        self.cached.fetch_sub(4 * cap as u64, Ordering::Relaxed);
        Some(s)
    }

    fn give_back(&self, s: CudaSlice<f32>) {
        let bytes = 4 * s.len() as u64;
        if self.cached.load(Ordering::Relaxed) + bytes > self.limit {
            self.held.fetch_sub(bytes, Ordering::Relaxed);
            return; // dropped: freed on the stream
        }
        self.cached.fetch_add(bytes, Ordering::Relaxed);
        self.lock().entry(s.len()).or_default().push(s);
    }

    /// Frees every kept allocation (before retrying one that failed).
    fn trim(&self) {
        let drained: Vec<_> = self.lock().drain().flat_map(|(_, v)| v).collect();
        let bytes: u64 = drained.iter().map(|s| 4 * s.len() as u64).sum();
        self.cached.fetch_sub(bytes, Ordering::Relaxed);
        self.held.fetch_sub(bytes, Ordering::Relaxed);
    }

    fn stats(&self) -> crate::backend::MemoryStats {
        crate::backend::MemoryStats {
            in_use_bytes: self.held.load(Ordering::Relaxed),
            peak_bytes: self.peak.load(Ordering::Relaxed),
            allocations: self.allocs.load(Ordering::Relaxed),
        }
    }
}

/// Small constant host arrays uploaded once and reused while unchanged: RoPE's inverse
/// frequencies, and the positions and attention plan that every layer of a forward passes again.
/// Matched by content (small arrays: a scan costs less than a copy); the last few kept.
pub(crate) struct UploadCache<T> {
    slots: Mutex<std::collections::VecDeque<Uploaded<T>>>,
}

/// A host array and its device copy.
type Uploaded<T> = (Vec<T>, Arc<CudaSlice<T>>);

impl<T: DeviceRepr + Copy + Default + PartialEq> UploadCache<T> {
    const SLOTS: usize = 8;

    fn new() -> Self {
        UploadCache {
            slots: Mutex::default(),
        }
    }

    pub(crate) fn get(&self, be: &CudaBackend, v: &[T]) -> Arc<CudaSlice<T>> {
        let mut slots = self
            .slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((_, d)) = slots.iter().find(|(h, _)| h.as_slice() == v) {
            return d.clone();
        }
        let d = Arc::new(be.upload_small(v));
        if slots.len() == Self::SLOTS {
            slots.pop_front();
        }
        slots.push_back((v.to_vec(), d.clone()));
        d
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

/// Cheap to clone (shared context, stream and kernels): `Engine::load` takes the backend by value.
#[derive(Clone)]
pub struct CudaBackend {
    inner: Arc<Inner>,
}

pub struct Inner {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    k: Kernels,
    /// None when libcublas cannot be loaded or `BITUNE_NO_CUBLAS` is set: matmuls then run on
    /// the segment-GEMM kernel (also how the tests cover that kernel as a plain matmul).
    blas: Option<CudaBlas>,
    /// Dynamic shared memory the attention kernels may use (bytes; set at start).
    attn_smem_limit: usize,
    name: String,
    pool: Arc<Pool>,
    pub(crate) up_u32: UploadCache<u32>,
    pub(crate) up_i32: UploadCache<i32>,
    pub(crate) up_f32: UploadCache<f32>,
}

impl std::ops::Deref for CudaBackend {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.inner
    }
}

impl CudaBackend {
    /// Opens GPU `ordinal`: fails with a clear error (never a panic) when there is no driver or no
    /// device, and loads every kernel now so a missing one fails here. Base matmuls use cuBLAS
    /// when libcublas loads, unless `BITUNE_NO_CUBLAS` is set.
    pub fn new(ordinal: usize) -> Result<Self> {
        Self::open(ordinal, std::env::var_os("BITUNE_NO_CUBLAS").is_none())
    }

    /// [`CudaBackend::new`] choosing whether to try cuBLAS (the tests run both matmul paths).
    pub fn open(ordinal: usize, use_cublas: bool) -> Result<Self> {
        sim::activate()?;
        // SAFETY: only tries to dlopen libcuda.so; calls no CUDA function. cudarc panics on the
        // first driver call when the library is absent, so this check has to come first.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            bail!("no CUDA driver (libcuda.so could not be loaded)");
        }
        let count = CudaContext::device_count()
            .map_err(|e| anyhow!("CUDA driver present but unusable (cuInit: {e:?})"))?;
        if count <= 0 {
            bail!("CUDA driver present but no CUDA device visible");
        }
        if ordinal >= count as usize {
            bail!("CUDA device {ordinal} requested, {count} visible");
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| anyhow!("creating CUDA context: {e:?}"))?;
        // SAFETY: everything runs on the one stream below, so cudarc's per-buffer events (which
        // order uses across streams) are pure overhead; no buffer exists yet.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.default_stream();
        let k = Kernels::load(&ctx)?;
        let attn_smem_limit = attention::configure(&ctx, &k)?;
        let blas = if !use_cublas {
            None
        } else if unsafe { cudarc::cublas::sys::is_culib_present() } {
            // SAFETY (above): dlopen probe only, as for libcuda.
            Some(CudaBlas::new(stream.clone()).map_err(|e| anyhow!("cuBLAS init: {e:?}"))?)
        } else {
            None
        };
        let (major, minor) = ctx
            .compute_capability()
            .map_err(|e| anyhow!("compute capability: {e:?}"))?;
        let gib = ctx.total_mem().unwrap_or(0) as f64 / (1u64 << 30) as f64;
        let name = format!(
            "cuda:{ordinal} ({}, sm_{major}{minor}, {gib:.0} GiB, f32, matmul: {})",
            ctx.name().unwrap_or_else(|_| "?".into()),
            if blas.is_some() { "cuBLAS" } else { "seg_gemm" }
        );
        Ok(Self {
            inner: Arc::new(Inner {
                ctx,
                stream,
                k,
                blas,
                attn_smem_limit,
                name,
                pool: Arc::new(Pool::new()),
                up_u32: UploadCache::new(),
                up_i32: UploadCache::new(),
                up_f32: UploadCache::new(),
            }),
        })
    }

    /// The driver context (tests load extra modules, such as the simulator's probes, into it).
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The one stream every op of this backend is queued on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Whether base matmuls go through cuBLAS (else the segment-GEMM kernel).
    pub fn has_cublas(&self) -> bool {
        self.blas.is_some()
    }

    /// Waits for all queued work; surfaces asynchronous kernel faults at a known point.
    pub fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(|e| anyhow!("CUDA stream: {e:?}"))
    }

    /// A zeroed buffer of `n` f32. Out of device memory is a [`device_failure`] naming the size,
    /// the memory in use and the caller (the model line that asked: `#[track_caller]`).
    #[track_caller]
    pub(crate) fn alloc_zeros(&self, n: usize) -> CudaBuf {
        self.alloc_with_capacity(n, n)
    }

    /// [`CudaBuf`] of `n` zeros in an allocation of `cap >= n` elements (zeroed too): a kept one
    /// of that size from the pool, else a new one from the driver.
    #[track_caller]
    pub(crate) fn alloc_with_capacity(&self, n: usize, cap: usize) -> CudaBuf {
        let cap = cap.max(n).max(1);
        let bytes = 4 * cap as u64;
        // Taken here: a closure does not inherit `#[track_caller]`.
        let at = std::panic::Location::caller();
        let data = match self.pool.take(cap) {
            Some(mut s) => {
                self.stream
                    .memset_zeros(&mut s)
                    .unwrap_or_else(|e| self.fail(&format!("zeroing {cap} f32"), e));
                s
            }
            None => {
                let fresh = || self.stream.alloc_zeros::<f32>(cap);
                let s = fresh()
                    .or_else(|_| {
                        self.pool.trim();
                        fresh()
                    })
                    .unwrap_or_else(|e| {
                        let what = format!("{e:?}");
                        let cause = if what.contains("OUT_OF_MEMORY") {
                            "out of device memory"
                        } else {
                            "device allocation failed"
                        };
                        device_failure(format!(
                            "CUDA: {cause} allocating {cap} f32 ({bytes} bytes, {}) for {}:{} \
                             ({what}); this process holds {} of device memory (peak {})",
                            mib(bytes),
                            at.file(),
                            at.line(),
                            mib(self.pool.held.load(Ordering::Relaxed)),
                            mib(self.pool.peak.load(Ordering::Relaxed)),
                        ))
                    });
                let now = self.pool.held.fetch_add(bytes, Ordering::Relaxed) + bytes;
                self.pool.peak.fetch_max(now, Ordering::Relaxed);
                self.pool.allocs.fetch_add(1, Ordering::Relaxed);
                s
            }
        };
        CudaBuf {
            data: ManuallyDrop::new(data),
            len: n,
            pool: self.pool.clone(),
        }
    }

    /// The device address of `buf`'s allocation (tests check that a KV cache grows in place).
    pub fn device_addr(&self, buf: &CudaBuf) -> u64 {
        use cudarc::driver::DevicePtr;
        let (p, _sync) = buf.data.device_ptr(&self.stream);
        p
    }

    /// Device memory this backend holds (live and pooled buffers) now and at most, and the
    /// driver allocations it made.
    pub fn memory_stats(&self) -> crate::backend::MemoryStats {
        self.pool.stats()
    }

    /// Small host arrays (indices, plans, positions) for one launch.
    pub(crate) fn upload_small<T: DeviceRepr + Copy + Default>(&self, v: &[T]) -> CudaSlice<T> {
        let r = if v.is_empty() {
            self.stream.clone_htod(&[T::default()])
        } else {
            self.stream.clone_htod(v)
        };
        r.unwrap_or_else(|e| {
            device_failure(format!(
                "CUDA: uploading {} values of {} bytes failed: {e:?}",
                v.len().max(1),
                std::mem::size_of::<T>()
            ))
        })
    }

    pub(crate) fn download_small<T: DeviceRepr + Default + Clone>(
        &self,
        s: &CudaSlice<T>,
        n: usize,
    ) -> Vec<T> {
        if n == 0 {
            return vec![];
        }
        let mut out = vec![T::default(); n];
        self.stream
            .memcpy_dtoh(&s.slice(0..n), &mut out)
            .and_then(|_| self.stream.synchronize())
            .unwrap_or_else(|e| self.fail("downloading a result", e));
        out
    }

    /// A failed copy, synchronisation or launch as a [`device_failure`]: a kernel fault surfaces
    /// at the next synchronising call, so the message adds what the simulator or driver said.
    pub(crate) fn fail(&self, what: &str, e: impl std::fmt::Debug) -> ! {
        let detail = sim::last_error()
            .filter(|s| !s.is_empty())
            .map(|s| format!(" ({s})"))
            .unwrap_or_default();
        device_failure(format!("CUDA: {what} failed: {e:?}{detail}"))
    }

    /// Device attribute, for sizing launches.
    pub(crate) fn attribute(ctx: &CudaContext, a: CUdevice_attribute) -> Result<i32> {
        ctx.attribute(a)
            .map_err(|e| anyhow!("device attribute {a:?}: {e:?}"))
    }
}

/// 1-D launch for the grid-stride kernels: 256 threads, at most 2^16 blocks.
pub(crate) fn grid(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.div_ceil(256).clamp(1, 1 << 16) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One block per row (row-reduction kernels loop over rows beyond the grid).
pub(crate) fn per_row(rows: usize, threads: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows.clamp(1, 1 << 16) as u32, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Launches kernel `$f` with the listed arguments (chained, so temporaries such as
/// `&(n as u64)` live until the launch is queued).
macro_rules! launch {
    ($be:expr, $f:ident, $cfg:expr; $($arg:expr),* $(,)?) => {{
        #[allow(unused_imports)]
        use cudarc::driver::PushKernelArg;
        // SAFETY: the argument list matches the kernel's C signature in kernels/*.cu in order
        // and type (u64 ↔ unsigned long long, i32 ↔ int, f32 ↔ float, buffers ↔ pointers, &0u64
        // ↔ nullptr), and the calling wrapper has checked every index the kernel derives from
        // these sizes against the buffers' lengths.
        let r = unsafe { $be.stream.launch_builder(&$be.k.$f)$(.arg($arg))*.launch($cfg) };
        if let Err(e) = r {
            $be.fail(concat!("launching kernel ", stringify!($f)), e);
        }
    }};
}
pub(crate) use launch;

/// A null device pointer argument (optional inputs).
pub(crate) const NULL: u64 = 0;

/// The fatbin build.rs made from `kernels/<name>.cu`, for loading modules outside the kernel
/// table (the simulator's probe kernels).
pub fn module_image(name: &str) -> Option<&'static [u8]> {
    kernels::MODULES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, image)| *image)
}
