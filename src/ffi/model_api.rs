//! Entry points for errors, set-up, model handles and the tokenizer (`ffi/bitune.h` documents
//! each one for C callers; the comments here say what Rust guarantees).

use super::args::{c_str, check_id, check_ids, slice, Out, OutBuf};
use super::handles::AnyEngine;
use super::handles::{self, bitune_model, Kind};
use super::status::{bitune_status, bitune_status::*, engine_err, fail, guard, last_error_ptr};
use crate::backend::cpu::Cpu;
use crate::backend::device::Device;
#[cfg(feature = "cuda")]
use crate::backend::device::{catch_device_failure, open_cuda};
use crate::bitune::engine::{Engine, PromptMask};
use std::ffi::{c_char, c_int};
use std::path::Path;

/// The message of this thread's last failed call ("" after a success). Never NULL.
#[no_mangle]
pub extern "C" fn bitune_last_error() -> *const c_char {
    last_error_ptr()
}

/// The name of a status code ("BITUNE_ERR_LENGTH"), or "BITUNE_UNKNOWN_STATUS". Takes an `int`
/// rather than the enum: an out-of-range value from C must be mapped, not trusted as an enum.
#[no_mangle]
pub extern "C" fn bitune_status_name(status: c_int) -> *const c_char {
    bitune_status::ALL
        .into_iter()
        .find(|s| *s as c_int == status)
        .map_or(c"BITUNE_UNKNOWN_STATUS", bitune_status::c_name)
        .as_ptr()
}

/// Sizes the global CPU thread pool; only possible before the first model is loaded.
#[no_mangle]
pub extern "C" fn bitune_set_threads(n_threads: usize) -> bitune_status {
    guard("bitune_set_threads", || {
        if n_threads == 0 {
            return fail(
                BITUNE_ERR_INVALID_ARGUMENT,
                "`n_threads` must be at least 1",
            );
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(n_threads)
            .build_global()
            .or_else(|e| {
                fail(
                    BITUNE_ERR_STATE,
                    format!("the thread pool is already running ({e}); call this first"),
                )
            })
    })
}

/// # Safety
/// `model_path` and `device` must be NUL-terminated strings, `adapter_path` NULL or one, and
/// `out` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn bitune_model_load(
    model_path: *const c_char,
    device: *const c_char,
    adapter_path: *const c_char,
    out: *mut *mut bitune_model,
) -> bitune_status {
    guard("bitune_model_load", || {
        // SAFETY (all four): the contract above, which `args` states per helper.
        let out = unsafe { Out::new(out, "out") }?;
        out.set(std::ptr::null_mut());
        let path = unsafe { c_str(model_path, "model_path") }?;
        let device = unsafe { c_str(device, "device") }?;
        let adapter = if adapter_path.is_null() {
            None
        } else {
            Some(unsafe { c_str(adapter_path, "adapter_path") }?)
        };
        let load = |be| {
            Engine::load(
                be,
                Path::new(path),
                adapter.map(Path::new),
                PromptMask::Causal,
            )
            .map_err(engine_err(BITUNE_ERR_LOAD))
        };
        let engine = match device.parse::<Device>() {
            Ok(Device::Cpu) => AnyEngine::Cpu(Box::new(load(Cpu)?)),
            #[cfg(feature = "cuda")]
            Ok(Device::Cuda(n)) => {
                let be = open_cuda(n).map_err(engine_err(BITUNE_ERR_UNSUPPORTED))?;
                AnyEngine::Cuda(Box::new(
                    catch_device_failure(|| {
                        Engine::load(
                            be,
                            Path::new(path),
                            adapter.map(Path::new),
                            PromptMask::Causal,
                        )
                    })
                    .map_err(engine_err(BITUNE_ERR_LOAD))?,
                ))
            }
            #[cfg(not(feature = "cuda"))]
            Ok(Device::Cuda(_)) => {
                return fail(
                    BITUNE_ERR_UNSUPPORTED,
                    format!(
                        "device {device:?}: this library was built without CUDA \
                         (cargo build --features cuda)"
                    ),
                )
            }
            Err(e) => return fail(BITUNE_ERR_INVALID_ARGUMENT, e),
        };
        out.set(handles::insert_model(engine)?);
        Ok(())
    })
}

/// Frees a model (NULL is a no-op). Caches made for it stay valid handles that must still be
/// freed; they can no longer be used for decoding.
///
/// # Safety
/// None beyond the C contract: the handle is only looked up, never dereferenced. `unsafe` keeps
/// every handle-taking entry point alike.
#[no_mangle]
pub unsafe extern "C" fn bitune_model_free(model: *mut bitune_model) -> bitune_status {
    guard("bitune_model_free", || {
        if model.is_null() {
            return Ok(());
        }
        handles::remove(model.addr(), Kind::Model, "model")
    })
}

/// # Safety
/// `out` must be NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn bitune_vocab_size(
    model: *const bitune_model,
    out: *mut usize,
) -> bitune_status {
    guard("bitune_vocab_size", || {
        // SAFETY: the contract above.
        let out = unsafe { Out::new(out, "out") }?;
        out.set(handles::model(model, "model")?.vocab);
        Ok(())
    })
}

/// # Safety
/// `out` must be NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn bitune_is_eos(
    model: *const bitune_model,
    token: u32,
    out: *mut bool,
) -> bitune_status {
    guard("bitune_is_eos", || {
        // SAFETY: the contract above.
        let out = unsafe { Out::new(out, "out") }?;
        let m = handles::model(model, "model")?;
        check_id(token, m.vocab, "token")?;
        out.set(m.engine.is_eos(token));
        Ok(())
    })
}

/// # Safety
/// `text` must be a NUL-terminated string, `ids` NULL or writable for `cap` ids, `n_ids` NULL or
/// writable.
#[no_mangle]
pub unsafe extern "C" fn bitune_tokenize(
    model: *const bitune_model,
    text: *const c_char,
    add_special: bool,
    ids: *mut u32,
    cap: usize,
    n_ids: *mut usize,
) -> bitune_status {
    guard("bitune_tokenize", || {
        // SAFETY (all three): the contract above.
        let text = unsafe { c_str(text, "text") }?;
        let buf = unsafe { OutBuf::optional(ids, cap, "ids") }?;
        let n_out = unsafe { Out::new(n_ids, "n_ids") }?;
        let m = handles::model(model, "model")?;
        let toks = m
            .engine
            .encode(text, add_special)
            .map_err(engine_err(BITUNE_ERR_INVALID_ARGUMENT))?;
        n_out.set(toks.len());
        match buf {
            Some(b) if b.len() < toks.len() => fail(
                BITUNE_ERR_BUFFER_TOO_SMALL,
                format!("`ids` holds {} ids; the text needs {}", b.len(), toks.len()),
            ),
            Some(b) => {
                b.fill(&toks);
                Ok(())
            }
            None => Ok(()),
        }
    })
}

/// # Safety
/// `ids` must be NULL or hold `n_ids` ids, `text` NULL or writable for `cap` bytes, `len` NULL
/// or writable.
#[no_mangle]
pub unsafe extern "C" fn bitune_detokenize(
    model: *const bitune_model,
    ids: *const u32,
    n_ids: usize,
    text: *mut c_char,
    cap: usize,
    len: *mut usize,
) -> bitune_status {
    guard("bitune_detokenize", || {
        // SAFETY (all three): the contract above.
        let ids = unsafe { slice(ids, n_ids, "ids") }?;
        let buf = unsafe { OutBuf::optional(text, cap, "text") }?;
        let len = unsafe { Out::new(len, "len") }?;
        let m = handles::model(model, "model")?;
        check_ids(ids, m.vocab, "ids")?;
        let s = m
            .engine
            .detokenize(ids)
            .map_err(engine_err(BITUNE_ERR_ENGINE))?;
        len.set(s.len());
        match buf {
            Some(b) if b.len() <= s.len() => fail(
                BITUNE_ERR_BUFFER_TOO_SMALL,
                format!(
                    "`text` holds {} bytes; the text needs {} plus the NUL",
                    b.len(),
                    s.len()
                ),
            ),
            Some(b) => {
                let bytes: Vec<c_char> = s.bytes().map(|c| c as c_char).chain([0]).collect();
                b.fill(&bytes);
                Ok(())
            }
            None => Ok(()),
        }
    })
}
