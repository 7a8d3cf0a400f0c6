//! The C API called from Rust: results agree with the engine, and every kind of misuse (null
//! pointers, wrong lengths, out-of-range ids, freed and foreign handles, wrong order, the wrong
//! model, concurrent use of one cache) returns its status and a message.

use super::root;
use bitune_rt::backend::cpu::Cpu;
use bitune_rt::bitune::engine::{Engine, PromptMask};
use bitune_rt::ffi::bitune_status::{self, *};
use bitune_rt::ffi::*;
use std::ffi::{CStr, CString};
use std::ptr::{null, null_mut};

const MODEL: &str = "tests/fixtures/models/llama";
const ADAPTER: &str = "tests/fixtures/bitune/llama/init";

fn last_error() -> String {
    // SAFETY: bitune_last_error never returns NULL and the string lives until our next call.
    unsafe { CStr::from_ptr(bitune_last_error()) }
        .to_string_lossy()
        .into_owned()
}

/// Asserts the status and that the message mentions `needle` (and is empty on success).
#[track_caller]
fn expect(got: bitune_status, want: bitune_status, needle: &str) {
    let msg = last_error();
    assert_eq!(got, want, "message: {msg}");
    if want == BITUNE_OK {
        assert!(msg.is_empty(), "a success left the message {msg:?}");
    } else {
        assert!(msg.contains(needle), "{msg:?} does not mention {needle:?}");
    }
}

fn path(rel: &str) -> CString {
    CString::new(root().join(rel).to_str().unwrap()).unwrap()
}

fn load(adapter: bool) -> *mut bitune_model {
    let mut m = null_mut();
    let a = path(ADAPTER);
    let a = if adapter { a.as_ptr() } else { null() };
    // SAFETY: valid strings and out pointer.
    let s = unsafe { bitune_model_load(path(MODEL).as_ptr(), c"cpu".as_ptr(), a, &mut m) };
    expect(s, BITUNE_OK, "");
    m
}

fn new_cache(m: *const bitune_model) -> *mut bitune_cache {
    let mut c = null_mut();
    // SAFETY: valid out pointer.
    expect(unsafe { bitune_cache_new(m, &mut c) }, BITUNE_OK, "");
    c
}

fn engine() -> Engine<Cpu> {
    let a = root().join(ADAPTER);
    Engine::load(Cpu, &root().join(MODEL), Some(&a), PromptMask::Causal).unwrap()
}

const PROMPT: [u32; 5] = [1, 17, 42, 99, 7];

#[test]
fn results_agree_with_the_engine() {
    let e = engine();
    let m = load(true);
    let c = new_cache(m);
    let vocab = e.model.weights.cfg.vocab_size;
    let mut logits = vec![0f32; vocab];
    let (mut kv, want) = e.prefill(&PROMPT).unwrap();
    // SAFETY (every call below): buffers are live Rust allocations of the lengths passed.
    unsafe {
        let s = bitune_prefill(m, c, PROMPT.as_ptr(), 5, logits.as_mut_ptr(), vocab);
        expect(s, BITUNE_OK, "");
        assert_eq!(logits, want);
        let want = e.decode(&mut kv, 33).unwrap();
        let s = bitune_decode(m, c, 33, logits.as_mut_ptr(), vocab);
        expect(s, BITUNE_OK, "");
        assert_eq!(logits, want);
        let mut next = 0;
        expect(bitune_greedy(c, &mut next), BITUNE_OK, "");
        assert_eq!(next, bitune_rt::bitune::sample::argmax(&want));

        let cont = [12u32, 13, 14];
        let want = &e.score(&PROMPT, &[cont.to_vec()]).unwrap()[0];
        let (mut lp, mut sum, mut greedy) = ([0f64; 3], 0f64, true);
        let s = bitune_score(
            m,
            PROMPT.as_ptr(),
            5,
            cont.as_ptr(),
            3,
            lp.as_mut_ptr(),
            3,
            &mut sum,
            &mut greedy,
        );
        expect(s, BITUNE_OK, "");
        assert_eq!((lp.to_vec(), greedy), (want.0.clone(), want.1));
        assert_eq!(sum, want.0.iter().sum::<f64>());

        // Tokenizer: size query, round trip, and a text buffer one byte short of the NUL.
        let text = c"Question: 2+3?";
        let (mut n, mut len) = (0usize, 0usize);
        expect(
            bitune_tokenize(m, text.as_ptr(), true, null_mut(), 0, &mut n),
            BITUNE_OK,
            "",
        );
        let mut ids = vec![0u32; n];
        expect(
            bitune_tokenize(m, text.as_ptr(), true, ids.as_mut_ptr(), n, &mut n),
            BITUNE_OK,
            "",
        );
        assert_eq!(ids, e.model.encode("Question: 2+3?", true).unwrap());
        expect(
            bitune_detokenize(m, ids.as_ptr(), n, null_mut(), 0, &mut len),
            BITUNE_OK,
            "",
        );
        let mut buf = vec![1 as std::ffi::c_char; len + 1];
        let s = bitune_detokenize(m, ids.as_ptr(), n, buf.as_mut_ptr(), len, &mut len);
        expect(s, BITUNE_ERR_BUFFER_TOO_SMALL, "plus the NUL");
        let s = bitune_detokenize(m, ids.as_ptr(), n, buf.as_mut_ptr(), len + 1, &mut len);
        expect(s, BITUNE_OK, "");
        let back = CStr::from_ptr(buf.as_ptr()).to_str().unwrap();
        assert_eq!(back, e.model.decode(&ids).unwrap());

        let mut eos = false;
        expect(bitune_is_eos(m, 2, &mut eos), BITUNE_OK, "");
        assert!(eos, "the fixture's EOS id is 2");
        expect(bitune_cache_free(c), BITUNE_OK, "");
        expect(bitune_model_free(m), BITUNE_OK, "");
    }
}

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

/// Handles cross threads as plain addresses (they are ids, not pointers to shared memory).
#[derive(Clone, Copy)]
struct Handles(usize, usize);

#[test]
fn threads_share_a_model_and_never_share_a_cache_unsafely() {
    let m = load(true);
    let greedy_run = |h: Handles| {
        let (m, c) = (
            std::ptr::without_provenance::<bitune_model>(h.0),
            std::ptr::without_provenance_mut::<bitune_cache>(h.1),
        );
        let mut out = vec![];
        // SAFETY: live handles and local out pointers.
        unsafe {
            expect(
                bitune_prefill(m, c, PROMPT.as_ptr(), 5, null_mut(), 0),
                BITUNE_OK,
                "",
            );
            for _ in 0..6 {
                let mut t = 0;
                expect(bitune_greedy(c, &mut t), BITUNE_OK, "");
                out.push(t);
                expect(bitune_decode(m, c, t, null_mut(), 0), BITUNE_OK, "");
            }
        }
        out
    };
    // One model, a cache per thread: all threads agree.
    let runs: Vec<Vec<u32>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..3)
            .map(|_| Handles(m.addr(), new_cache(m).addr()))
            .map(|h| s.spawn(move || (greedy_run(h), h)))
            .collect();
        hs.into_iter()
            .map(|j| {
                let (run, h) = j.join().unwrap();
                // SAFETY: a live cache handle.
                expect(
                    unsafe { bitune_cache_free(std::ptr::without_provenance_mut(h.1)) },
                    BITUNE_OK,
                    "",
                );
                run
            })
            .collect()
    });
    assert!(runs.windows(2).all(|w| w[0] == w[1]), "{runs:?}");

    // One cache hammered by two threads: every call is OK or BUSY, never anything worse.
    let h = Handles(m.addr(), new_cache(m).addr());
    // SAFETY: live handles.
    expect(
        unsafe {
            bitune_prefill(
                m,
                std::ptr::without_provenance_mut(h.1),
                PROMPT.as_ptr(),
                5,
                null_mut(),
                0,
            )
        },
        BITUNE_OK,
        "",
    );
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(move || {
                let (m, c) = (
                    std::ptr::without_provenance::<bitune_model>(h.0),
                    std::ptr::without_provenance_mut::<bitune_cache>(h.1),
                );
                for _ in 0..10 {
                    let mut t = 0;
                    // SAFETY: live handles and a local out pointer.
                    let st = unsafe { bitune_greedy(c, &mut t) };
                    assert!(matches!(st, BITUNE_OK | BITUNE_ERR_BUSY), "{st:?}");
                    // SAFETY: as above.
                    let st = unsafe { bitune_decode(m, c, 9, null_mut(), 0) };
                    assert!(
                        matches!(st, BITUNE_OK | BITUNE_ERR_BUSY),
                        "{st:?}: {}",
                        last_error()
                    );
                }
            });
        }
    });
    // SAFETY: live handles.
    unsafe {
        expect(
            bitune_cache_free(std::ptr::without_provenance_mut(h.1)),
            BITUNE_OK,
            "",
        );
        expect(bitune_model_free(m), BITUNE_OK, "");
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
