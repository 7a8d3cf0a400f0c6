//! Every kind of misuse of the C API, called from Rust: null pointers, wrong lengths,
//! out-of-range ids, freed, foreign and mistyped handles, calls out of order, a cache used with
//! another model. Each returns its status and a message that says what was wrong.

use super::util::*;
use bitune_rt::ffi::bitune_status::*;
use bitune_rt::ffi::*;
use std::ptr::{null, null_mut};

#[test]
fn null_pointers_and_wrong_lengths() {
    let m = load(false);
    let c = new_cache(m);
    let mut vocab = 0;
    // SAFETY (every call below): non-null pointers address live buffers of the lengths passed;
    // the NULL ones are what is being tested.
    unsafe {
        expect(bitune_vocab_size(m, &mut vocab), BITUNE_OK, "");
        let mut logits = vec![0f32; vocab + 1];
        let mut out = null_mut();
        let s = bitune_model_load(null(), c"cpu".as_ptr(), null(), &mut out);
        expect(s, BITUNE_ERR_NULL_POINTER, "`model_path` is NULL");
        let s = bitune_model_load(path(MODEL).as_ptr(), c"cuda".as_ptr(), null(), &mut out);
        expect(s, BITUNE_ERR_UNSUPPORTED, "cuda");
        let bad_utf8 = c"\xff\xfe";
        let s = bitune_model_load(bad_utf8.as_ptr(), c"cpu".as_ptr(), null(), &mut out);
        expect(s, BITUNE_ERR_INVALID_ARGUMENT, "UTF-8");
        let s = bitune_model_load(c"/nonexistent".as_ptr(), c"cpu".as_ptr(), null(), &mut out);
        expect(s, BITUNE_ERR_LOAD, "/nonexistent");
        assert!(out.is_null(), "a failed load leaves *out NULL");

        expect(
            bitune_prefill(m, c, null(), 5, null_mut(), 0),
            BITUNE_ERR_NULL_POINTER,
            "`ids`",
        );
        expect(
            bitune_prefill(m, c, PROMPT.as_ptr(), 0, null_mut(), 0),
            BITUNE_ERR_LENGTH,
            "`n_ids` is 0",
        );
        let s = bitune_prefill(m, c, PROMPT.as_ptr(), 5, logits.as_mut_ptr(), vocab + 1);
        expect(s, BITUNE_ERR_LENGTH, "`n_logits`");
        let s = bitune_prefill(m, c, PROMPT.as_ptr(), 5, null_mut(), vocab);
        expect(s, BITUNE_ERR_NULL_POINTER, "`logits`");
        let misaligned = logits.as_mut_ptr().cast::<u8>().add(1).cast::<f32>();
        let s = bitune_prefill(m, c, PROMPT.as_ptr(), 5, misaligned, vocab);
        expect(s, BITUNE_ERR_INVALID_ARGUMENT, "aligned");
        expect(
            bitune_greedy(c, null_mut()),
            BITUNE_ERR_NULL_POINTER,
            "`next`",
        );
        expect(
            bitune_vocab_size(m, null_mut()),
            BITUNE_ERR_NULL_POINTER,
            "`out`",
        );
        expect(
            bitune_vocab_size(null(), &mut vocab),
            BITUNE_ERR_NULL_POINTER,
            "`model`",
        );

        let mut n = 0;
        let mut one = [0u32; 1];
        let s = bitune_tokenize(
            m,
            c"a longer text".as_ptr(),
            true,
            one.as_mut_ptr(),
            1,
            &mut n,
        );
        expect(s, BITUNE_ERR_BUFFER_TOO_SMALL, "needs");
        assert!(n > 1, "the size needed is reported");
        let s = bitune_tokenize(m, c"text".as_ptr(), true, null_mut(), 4, &mut n);
        expect(s, BITUNE_ERR_NULL_POINTER, "`ids`");

        let (cont, mut lp, mut sum) = ([3u32, 4], [0f64; 1], 0f64);
        let s = bitune_score(
            m,
            PROMPT.as_ptr(),
            5,
            cont.as_ptr(),
            2,
            lp.as_mut_ptr(),
            1,
            &mut sum,
            null_mut(),
        );
        expect(s, BITUNE_ERR_LENGTH, "`n_logprobs`");
        let s = bitune_score(
            m,
            PROMPT.as_ptr(),
            0,
            cont.as_ptr(),
            2,
            null_mut(),
            0,
            &mut sum,
            null_mut(),
        );
        expect(s, BITUNE_ERR_LENGTH, "at least 1");
        let s = bitune_score(
            m,
            PROMPT.as_ptr(),
            5,
            cont.as_ptr(),
            2,
            null_mut(),
            0,
            null_mut(),
            null_mut(),
        );
        expect(s, BITUNE_ERR_NULL_POINTER, "`sum`");
        expect(
            bitune_set_threads(0),
            BITUNE_ERR_INVALID_ARGUMENT,
            "at least 1",
        );

        expect(bitune_cache_free(c), BITUNE_OK, "");
        expect(bitune_model_free(m), BITUNE_OK, "");
    }
}

#[test]
fn out_of_range_ids() {
    let m = load(true);
    let c = new_cache(m);
    let mut bad = PROMPT;
    bad[3] = 200; // the fixture's vocabulary has 200 entries
    let (mut sum, mut eos, mut len) = (0f64, false, 0usize);
    // SAFETY (every call below): buffers are live Rust arrays of the lengths passed.
    unsafe {
        let s = bitune_prefill(m, c, bad.as_ptr(), 5, null_mut(), 0);
        expect(s, BITUNE_ERR_TOKEN_RANGE, "`ids[3]` = 200");
        let s = bitune_score(
            m,
            PROMPT.as_ptr(),
            5,
            bad.as_ptr(),
            5,
            null_mut(),
            0,
            &mut sum,
            null_mut(),
        );
        expect(s, BITUNE_ERR_TOKEN_RANGE, "`continuation[3]`");
        expect(
            bitune_is_eos(m, u32::MAX, &mut eos),
            BITUNE_ERR_TOKEN_RANGE,
            "vocabulary",
        );
        let s = bitune_detokenize(m, bad.as_ptr(), 5, null_mut(), 0, &mut len);
        expect(s, BITUNE_ERR_TOKEN_RANGE, "`ids[3]`");
        expect(
            bitune_prefill(m, c, PROMPT.as_ptr(), 5, null_mut(), 0),
            BITUNE_OK,
            "",
        );
        expect(
            bitune_decode(m, c, 200, null_mut(), 0),
            BITUNE_ERR_TOKEN_RANGE,
            "`token",
        );
        // A rejected decode leaves the cache usable.
        expect(bitune_decode(m, c, 199, null_mut(), 0), BITUNE_OK, "");
        expect(bitune_cache_free(c), BITUNE_OK, "");
        expect(bitune_model_free(m), BITUNE_OK, "");
    }
}

#[test]
fn freed_foreign_and_mistyped_handles() {
    let m = load(false);
    let c = new_cache(m);
    let mut vocab = 0usize;
    let mut local = 0u64;
    let foreign = (&raw mut local).cast::<bitune_model>();
    // SAFETY (every call below): handles are only looked up by the library, never dereferenced,
    // which is exactly what is being tested; out pointers are live locals.
    unsafe {
        expect(
            bitune_vocab_size(foreign, &mut vocab),
            BITUNE_ERR_BAD_HANDLE,
            "not a handle issued",
        );
        let odd = std::ptr::without_provenance::<bitune_model>(0xB710_0000_FFFF_FFFF);
        expect(
            bitune_vocab_size(odd, &mut vocab),
            BITUNE_ERR_BAD_HANDLE,
            "not a handle issued",
        );
        expect(
            bitune_model_free(c.cast()),
            BITUNE_ERR_BAD_HANDLE,
            "cache handle, not a model",
        );
        expect(
            bitune_cache_free(m.cast()),
            BITUNE_ERR_BAD_HANDLE,
            "model handle, not a cache",
        );
        expect(bitune_cache_free(c), BITUNE_OK, "");
        expect(bitune_cache_free(c), BITUNE_ERR_BAD_HANDLE, "already freed");
        let mut next = 0;
        expect(
            bitune_greedy(c, &mut next),
            BITUNE_ERR_BAD_HANDLE,
            "already freed",
        );
        expect(bitune_model_free(m), BITUNE_OK, "");
        expect(bitune_model_free(m), BITUNE_ERR_BAD_HANDLE, "double free");
        expect(
            bitune_vocab_size(m, &mut vocab),
            BITUNE_ERR_BAD_HANDLE,
            "use after free",
        );
        let mut c2 = null_mut();
        expect(
            bitune_cache_new(m, &mut c2),
            BITUNE_ERR_BAD_HANDLE,
            "already freed",
        );
        expect(bitune_model_free(null_mut()), BITUNE_OK, "");
        expect(bitune_cache_free(null_mut()), BITUNE_OK, "");
    }
}

#[test]
fn wrong_call_order_and_wrong_model() {
    let (m, other) = (load(true), load(false));
    let c = new_cache(m);
    let mut next = 0;
    // SAFETY (every call below): buffers are live Rust arrays of the lengths passed.
    unsafe {
        expect(
            bitune_decode(m, c, 5, null_mut(), 0),
            BITUNE_ERR_STATE,
            "never prefilled",
        );
        expect(
            bitune_greedy(c, &mut next),
            BITUNE_ERR_STATE,
            "never prefilled",
        );
        let s = bitune_prefill(other, c, PROMPT.as_ptr(), 5, null_mut(), 0);
        expect(s, BITUNE_ERR_WRONG_MODEL, "belongs to model");
        expect(
            bitune_prefill(m, c, PROMPT.as_ptr(), 5, null_mut(), 0),
            BITUNE_OK,
            "",
        );
        expect(
            bitune_decode(other, c, 5, null_mut(), 0),
            BITUNE_ERR_WRONG_MODEL,
            "belongs to model",
        );
        // A cache outlives its model as a handle, but cannot decode with a freed one.
        expect(bitune_model_free(m), BITUNE_OK, "");
        expect(
            bitune_decode(m, c, 5, null_mut(), 0),
            BITUNE_ERR_BAD_HANDLE,
            "already freed",
        );
        expect(bitune_greedy(c, &mut next), BITUNE_OK, "");
        expect(bitune_cache_free(c), BITUNE_OK, "");
        expect(bitune_model_free(other), BITUNE_OK, "");
    }
}

#[test]
fn last_error_is_per_thread() {
    let mut v = 0usize;
    // SAFETY: a NULL handle is rejected before anything is read.
    let s = unsafe { bitune_vocab_size(null(), &mut v) };
    expect(s, BITUNE_ERR_NULL_POINTER, "`model` is NULL");
    let other = std::thread::spawn(last_error).join().unwrap();
    assert_eq!(other, "", "another thread's message leaked");
    assert!(last_error().contains("`model` is NULL"));
}
