//! The C API called from Rust agrees with the engine, and threads may share a model while a
//! cache used from two threads at once answers `BITUNE_ERR_BUSY`, never anything worse.

use super::util::*;
use bitune_rt::ffi::bitune_status::*;
use bitune_rt::ffi::*;
use std::ffi::CStr;
use std::ptr::null_mut;

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
