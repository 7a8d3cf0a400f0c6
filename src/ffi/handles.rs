//! Opaque handles: registry ids that look like pointers to C and are never dereferenced.
//!
//! A handle's bits are `TAG | kind | serial`: the tag marks values this library issued, the kind
//! tells a model from a cache, and the serial counts up and is never reused. A call looks the
//! handle up in a global registry of live objects, so a freed handle (use after free, double
//! free), a foreign pointer, or a cache passed where a model belongs is reported, and a stale
//! handle can never alias a newer object the way a reused heap address could.

use super::status::{bitune_status::*, fail, Failure, Res};
use crate::backend::cpu::Cpu;
#[cfg(feature = "cuda")]
use crate::backend::device::catch_device_failure;
use crate::bitune::engine::Engine;
use crate::model::transformer::KvCache;
use std::collections::BTreeMap;
use std::marker::{PhantomData, PhantomPinned};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError};

/// `bitune_model` in C: never constructed, only named behind a pointer (the nomicon's opaque
/// type pattern: zero-sized, `!Send`, `!Sync`, `!Unpin`).
#[repr(C)]
#[allow(non_camel_case_types)]
pub struct bitune_model {
    _opaque: [u8; 0],
    _marker: PhantomData<(*mut u8, PhantomPinned)>,
}

/// `bitune_cache` in C: see [`bitune_model`].
#[repr(C)]
#[allow(non_camel_case_types)]
pub struct bitune_cache {
    _opaque: [u8; 0],
    _marker: PhantomData<(*mut u8, PhantomPinned)>,
}

const TAG_BITS: u32 = 8;
const KIND_BITS: u32 = 4;
const TAG: usize = 0xB7 << (usize::BITS - TAG_BITS);
const TAG_MASK: usize = !0 << (usize::BITS - TAG_BITS);
const KIND_SHIFT: u32 = usize::BITS - TAG_BITS - KIND_BITS;
const SERIAL_MASK: usize = (1 << KIND_SHIFT) - 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Model = 1,
    Cache = 2,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Model => "model",
            Kind::Cache => "cache",
        }
    }
}

/// An engine on the device `bitune_model_load` named: the C API is one set of functions over
/// either backend, so the handle holds one of the monomorphised engines.
/// Boxed: an engine is large, and the two differ in size.
pub(crate) enum AnyEngine {
    Cpu(Box<Engine<Cpu>>),
    #[cfg(feature = "cuda")]
    Cuda(Box<Engine<crate::backend::cuda::CudaBackend>>),
}

/// A KV cache of the matching backend (a cache only ever meets the model it was made for).
pub(crate) enum AnyKv {
    Cpu(KvCache<Cpu>),
    #[cfg(feature = "cuda")]
    Cuda(KvCache<crate::backend::cuda::CudaBackend>),
}

impl AnyEngine {
    pub fn prefill(&self, ids: &[u32]) -> anyhow::Result<(AnyKv, Vec<f32>)> {
        match self {
            AnyEngine::Cpu(e) => e.prefill(ids).map(|(kv, l)| (AnyKv::Cpu(kv), l)),
            #[cfg(feature = "cuda")]
            AnyEngine::Cuda(e) => {
                catch_device_failure(|| e.prefill(ids)).map(|(kv, l)| (AnyKv::Cuda(kv), l))
            }
        }
    }

    pub fn decode(&self, kv: &mut AnyKv, token: u32) -> anyhow::Result<Vec<f32>> {
        match (self, kv) {
            (AnyEngine::Cpu(e), AnyKv::Cpu(kv)) => e.decode(kv, token),
            #[cfg(feature = "cuda")]
            (AnyEngine::Cuda(e), AnyKv::Cuda(kv)) => catch_device_failure(|| e.decode(kv, token)),
            #[cfg(feature = "cuda")]
            _ => anyhow::bail!("the cache was filled on another device than the model's"),
        }
    }

    pub fn score(&self, ctx: &[u32], conts: &[Vec<u32>]) -> anyhow::Result<Vec<(Vec<f64>, bool)>> {
        match self {
            AnyEngine::Cpu(e) => e.score(ctx, conts),
            #[cfg(feature = "cuda")]
            AnyEngine::Cuda(e) => catch_device_failure(|| e.score(ctx, conts)),
        }
    }

    pub fn is_eos(&self, id: u32) -> bool {
        match self {
            AnyEngine::Cpu(e) => e.model.is_eos(id),
            #[cfg(feature = "cuda")]
            AnyEngine::Cuda(e) => e.model.is_eos(id),
        }
    }

    pub fn encode(&self, text: &str, add_special: bool) -> anyhow::Result<Vec<u32>> {
        match self {
            AnyEngine::Cpu(e) => e.model.encode(text, add_special),
            #[cfg(feature = "cuda")]
            AnyEngine::Cuda(e) => e.model.encode(text, add_special),
        }
    }

    pub fn detokenize(&self, ids: &[u32]) -> anyhow::Result<String> {
        match self {
            AnyEngine::Cpu(e) => e.model.decode(ids),
            #[cfg(feature = "cuda")]
            AnyEngine::Cuda(e) => e.model.decode(ids),
        }
    }

    pub fn vocab(&self) -> usize {
        match self {
            AnyEngine::Cpu(e) => e.model.weights.cfg.vocab_size,
            #[cfg(feature = "cuda")]
            AnyEngine::Cuda(e) => e.model.weights.cfg.vocab_size,
        }
    }
}

/// A loaded model: immutable after load, so it is shared by reference across threads.
pub(crate) struct ModelObj {
    pub engine: AnyEngine,
    pub vocab: usize,
}

/// What a prefill left: the KV cache and the logits for the next token.
pub(crate) struct Prefilled {
    pub kv: AnyKv,
    pub logits: Vec<f32>,
}

/// A cache belongs to the model it was made for (by handle value, so freeing the model really
/// frees it) and is empty until its first prefill.
pub(crate) struct CacheObj {
    pub model: usize,
    pub state: Option<Prefilled>,
}

enum Obj {
    Model(Arc<ModelObj>),
    Cache(Arc<Mutex<CacheObj>>),
}

struct Registry {
    live: BTreeMap<usize, Obj>,
    /// The last serial handed out (0: none yet).
    issued: usize,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    live: BTreeMap::new(),
    issued: 0,
});

fn registry() -> MutexGuard<'static, Registry> {
    // Every mutation below is a single insert/remove that cannot leave the map half-changed,
    // so a poisoned lock (a panic elsewhere while holding it) still guards a consistent map.
    REGISTRY.lock().unwrap_or_else(PoisonError::into_inner)
}

fn bad(msg: String) -> Failure {
    Failure {
        status: BITUNE_ERR_BAD_HANDLE,
        msg,
    }
}

/// Explains why `addr` is not a live handle of kind `want`.
fn diagnose(reg: &Registry, addr: usize, want: Kind, what: &str) -> Failure {
    if addr == 0 {
        return Failure {
            status: BITUNE_ERR_NULL_POINTER,
            msg: format!("`{what}` is NULL"),
        };
    }
    let serial = addr & SERIAL_MASK;
    let kind = (addr >> KIND_SHIFT) & ((1 << KIND_BITS) - 1);
    let kind = [Kind::Model, Kind::Cache]
        .into_iter()
        .find(|k| *k as usize == kind);
    match kind {
        Some(k) if addr & TAG_MASK == TAG && serial != 0 && serial <= reg.issued => {
            let state = if reg.live.contains_key(&addr) {
                "a live"
            } else {
                "a freed"
            };
            if k != want {
                bad(format!(
                    "`{what}` ({addr:#x}) is {state} {} handle, not a {} handle",
                    k.name(),
                    want.name()
                ))
            } else {
                bad(format!(
                    "`{what}` ({addr:#x}) is a {} handle that was already freed \
                     (use after free or double free)",
                    k.name()
                ))
            }
        }
        _ => bad(format!(
            "`{what}` ({addr:#x}) is not a handle issued by this library \
             (a foreign or corrupted pointer)"
        )),
    }
}

fn insert(kind: Kind, obj: Obj) -> Res<usize> {
    let mut reg = registry();
    if reg.issued >= SERIAL_MASK {
        return fail(BITUNE_ERR_STATE, "out of handle serial numbers");
    }
    reg.issued += 1;
    let addr = TAG | (kind as usize) << KIND_SHIFT | reg.issued;
    reg.live.insert(addr, obj);
    Ok(addr)
}

/// Registers a loaded model and returns its handle.
pub(crate) fn insert_model(engine: AnyEngine) -> Res<*mut bitune_model> {
    let vocab = engine.vocab();
    let addr = insert(
        Kind::Model,
        Obj::Model(Arc::new(ModelObj { engine, vocab })),
    )?;
    Ok(std::ptr::without_provenance_mut(addr))
}

/// Registers an empty cache for the model `model` and returns its handle.
pub(crate) fn insert_cache(model: *const bitune_model) -> Res<*mut bitune_cache> {
    let obj = CacheObj {
        model: model.addr(),
        state: None,
    };
    let addr = insert(Kind::Cache, Obj::Cache(Arc::new(Mutex::new(obj))))?;
    Ok(std::ptr::without_provenance_mut(addr))
}

/// The live model behind `h`. The `Arc` keeps it alive for the caller's whole call even if
/// another thread frees the handle meanwhile.
pub(crate) fn model(h: *const bitune_model, what: &str) -> Res<Arc<ModelObj>> {
    let reg = registry();
    match reg.live.get(&h.addr()) {
        Some(Obj::Model(m)) => Ok(m.clone()),
        _ => Err(diagnose(&reg, h.addr(), Kind::Model, what)),
    }
}

/// The live cache behind `h` (see [`model`] for why an `Arc`).
pub(crate) fn cache(h: *const bitune_cache, what: &str) -> Res<Arc<Mutex<CacheObj>>> {
    let reg = registry();
    match reg.live.get(&h.addr()) {
        Some(Obj::Cache(c)) => Ok(c.clone()),
        _ => Err(diagnose(&reg, h.addr(), Kind::Cache, what)),
    }
}

/// Unregisters `addr` (of kind `kind`); the object is dropped after the registry lock is
/// released, so freeing a large model never stalls other threads' lookups.
pub(crate) fn remove(addr: usize, kind: Kind, what: &str) -> Res<()> {
    let obj = {
        let mut reg = registry();
        let matches = match reg.live.get(&addr) {
            Some(Obj::Model(_)) => kind == Kind::Model,
            Some(Obj::Cache(_)) => kind == Kind::Cache,
            None => false,
        };
        if !matches {
            return Err(diagnose(&reg, addr, kind, what));
        }
        reg.live.remove(&addr)
    };
    drop(obj);
    Ok(())
}

/// Locks a cache for one call. Concurrent use is the caller's bug, but it must not be UB: it
/// is reported as `BITUNE_ERR_BUSY` rather than waited on. A lock poisoned by a panic mid-update
/// may guard a half-grown KV cache, so the cache is emptied and the caller told to prefill again.
pub(crate) fn lock_cache(c: &Mutex<CacheObj>) -> Res<MutexGuard<'_, CacheObj>> {
    match c.try_lock() {
        Ok(g) => Ok(g),
        Err(TryLockError::WouldBlock) => fail(
            BITUNE_ERR_BUSY,
            "the cache is in use by another thread (a cache handle must not be used concurrently)",
        ),
        Err(TryLockError::Poisoned(p)) => {
            p.into_inner().state = None;
            c.clear_poison();
            fail(
                BITUNE_ERR_STATE,
                "an earlier call on this cache failed midway and the cache was emptied; \
                 prefill it again",
            )
        }
    }
}
