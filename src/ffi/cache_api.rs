//! Entry points for inference: cache handles, the Bitune prefill, decoding, greedy choice and
//! scoring. A cache remembers its model, so every call that takes both checks they belong
//! together, and it remembers whether it was prefilled, so calls out of order are reported.

use super::args::{check_id, check_ids, slice, Out, OutBuf};
use super::handles::{self, bitune_cache, bitune_model, CacheObj, Kind, Prefilled};
use super::status::{bitune_status, bitune_status::*, engine_err, fail, guard, Res};
use crate::bitune::sample::argmax;

/// The logits buffer of prefill/decode: optional, but when given it must fit the vocabulary
/// exactly, so a buffer sized for another model is caught.
fn check_logits(buf: &Option<OutBuf<f32>>, vocab: usize) -> Res<()> {
    match buf {
        Some(b) if b.len() != vocab => fail(
            BITUNE_ERR_LENGTH,
            format!(
                "`n_logits` is {} but the model's vocabulary has {vocab} entries",
                b.len()
            ),
        ),
        _ => Ok(()),
    }
}

/// The model must be the one the cache was made for: another model's weights would read
/// keys/values of a different shape or meaning.
fn check_owner(model: *const bitune_model, cache: &CacheObj) -> Res<()> {
    if cache.model != model.addr() {
        return fail(
            BITUNE_ERR_WRONG_MODEL,
            format!(
                "the cache belongs to model {:#x}, not to {:#x}",
                cache.model,
                model.addr()
            ),
        );
    }
    Ok(())
}

/// # Safety
/// `out` must be NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn bitune_cache_new(
    model: *const bitune_model,
    out: *mut *mut bitune_cache,
) -> bitune_status {
    guard("bitune_cache_new", || {
        // SAFETY: the contract above.
        let out = unsafe { Out::new(out, "out") }?;
        out.set(std::ptr::null_mut());
        handles::model(model, "model")?;
        out.set(handles::insert_cache(model)?);
        Ok(())
    })
}

/// Frees a cache (NULL is a no-op).
///
/// # Safety
/// None beyond the C contract: the handle is only looked up, never dereferenced.
#[no_mangle]
pub unsafe extern "C" fn bitune_cache_free(cache: *mut bitune_cache) -> bitune_status {
    guard("bitune_cache_free", || {
        if cache.is_null() {
            return Ok(());
        }
        handles::remove(cache.addr(), Kind::Cache, "cache")
    })
}

/// # Safety
/// `ids` must hold `n_ids` ids; `logits` must be NULL or writable for `n_logits` floats.
#[no_mangle]
pub unsafe extern "C" fn bitune_prefill(
    model: *const bitune_model,
    cache: *mut bitune_cache,
    ids: *const u32,
    n_ids: usize,
    logits: *mut f32,
    n_logits: usize,
) -> bitune_status {
    guard("bitune_prefill", || {
        // SAFETY (both): the contract above.
        let ids = unsafe { slice(ids, n_ids, "ids") }?;
        let out = unsafe { OutBuf::optional(logits, n_logits, "logits") }?;
        let m = handles::model(model, "model")?;
        let c = handles::cache(cache, "cache")?;
        let mut c = handles::lock_cache(&c)?;
        check_owner(model, &c)?;
        if ids.is_empty() {
            return fail(BITUNE_ERR_LENGTH, "`n_ids` is 0: nothing to prefill");
        }
        check_ids(ids, m.vocab, "ids")?;
        check_logits(&out, m.vocab)?;
        // A failed prefill leaves the cache empty rather than holding the previous prompt.
        c.state = None;
        let (kv, last) = m
            .engine
            .prefill(ids)
            .map_err(engine_err(BITUNE_ERR_ENGINE))?;
        if let Some(out) = &out {
            out.fill(&last);
        }
        c.state = Some(Prefilled { kv, logits: last });
        Ok(())
    })
}

/// # Safety
/// `logits` must be NULL or writable for `n_logits` floats.
#[no_mangle]
pub unsafe extern "C" fn bitune_decode(
    model: *const bitune_model,
    cache: *mut bitune_cache,
    token: u32,
    logits: *mut f32,
    n_logits: usize,
) -> bitune_status {
    guard("bitune_decode", || {
        // SAFETY: the contract above.
        let out = unsafe { OutBuf::optional(logits, n_logits, "logits") }?;
        let m = handles::model(model, "model")?;
        let c = handles::cache(cache, "cache")?;
        let mut c = handles::lock_cache(&c)?;
        check_owner(model, &c)?;
        check_id(token, m.vocab, "token")?;
        check_logits(&out, m.vocab)?;
        let Some(st) = c.state.as_mut() else {
            return fail(
                BITUNE_ERR_STATE,
                "the cache was never prefilled: call bitune_prefill first",
            );
        };
        let next = m
            .engine
            .decode(&mut st.kv, token)
            .map_err(engine_err(BITUNE_ERR_ENGINE))?;
        if let Some(out) = &out {
            out.fill(&next);
        }
        st.logits = next;
        Ok(())
    })
}

/// # Safety
/// `next` must be NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn bitune_greedy(
    cache: *const bitune_cache,
    next: *mut u32,
) -> bitune_status {
    guard("bitune_greedy", || {
        // SAFETY: the contract above.
        let next = unsafe { Out::new(next, "next") }?;
        let c = handles::cache(cache, "cache")?;
        let c = handles::lock_cache(&c)?;
        match &c.state {
            Some(st) => {
                next.set(argmax(&st.logits));
                Ok(())
            }
            None => fail(
                BITUNE_ERR_STATE,
                "the cache was never prefilled: call bitune_prefill first",
            ),
        }
    })
}

/// # Safety
/// `context` must hold `n_context` ids and `continuation` `n_continuation`; `logprobs` must be
/// NULL or writable for `n_logprobs` doubles; `sum` NULL or writable; `greedy` NULL or writable.
#[no_mangle]
#[allow(clippy::too_many_arguments)] // the C signature: each buffer travels with its length
pub unsafe extern "C" fn bitune_score(
    model: *const bitune_model,
    context: *const u32,
    n_context: usize,
    continuation: *const u32,
    n_continuation: usize,
    logprobs: *mut f64,
    n_logprobs: usize,
    sum: *mut f64,
    greedy: *mut bool,
) -> bitune_status {
    guard("bitune_score", || {
        // SAFETY (all five): the contract above.
        let ctx = unsafe { slice(context, n_context, "context") }?;
        let cont = unsafe { slice(continuation, n_continuation, "continuation") }?;
        let lp_out = unsafe { OutBuf::optional(logprobs, n_logprobs, "logprobs") }?;
        let sum = unsafe { Out::new(sum, "sum") }?;
        let greedy = unsafe { Out::optional(greedy, "greedy") }?;
        let m = handles::model(model, "model")?;
        if ctx.is_empty() || cont.is_empty() {
            return fail(
                BITUNE_ERR_LENGTH,
                "`n_context` and `n_continuation` must both be at least 1",
            );
        }
        if let Some(b) = lp_out.as_ref().filter(|b| b.len() != cont.len()) {
            return fail(
                BITUNE_ERR_LENGTH,
                format!(
                    "`n_logprobs` is {} but the continuation has {} tokens",
                    b.len(),
                    cont.len()
                ),
            );
        }
        check_ids(ctx, m.vocab, "context")?;
        check_ids(cont, m.vocab, "continuation")?;
        let res = m
            .engine
            .score(ctx, &[cont.to_vec()])
            .map_err(engine_err(BITUNE_ERR_ENGINE))?;
        let (lp, is_greedy) = res.into_iter().next().expect("one result per continuation");
        if let Some(b) = &lp_out {
            b.fill(&lp);
        }
        sum.set(lp.iter().sum());
        if let Some(g) = greedy {
            g.set(is_greedy);
        }
        Ok(())
    })
}
