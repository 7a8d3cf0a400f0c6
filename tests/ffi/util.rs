//! Helpers for calling the C API from Rust in the tests.

use super::root;
use bitune_rt::backend::cpu::Cpu;
use bitune_rt::bitune::engine::{Engine, PromptMask};
use bitune_rt::ffi::bitune_status::{self, *};
use bitune_rt::ffi::*;
use std::ffi::{CStr, CString};
use std::ptr::{null, null_mut};

pub const MODEL: &str = "tests/fixtures/models/llama";
pub const ADAPTER: &str = "tests/fixtures/bitune/llama/init";

pub fn last_error() -> String {
    // SAFETY: bitune_last_error never returns NULL and the string lives until our next call.
    unsafe { CStr::from_ptr(bitune_last_error()) }
        .to_string_lossy()
        .into_owned()
}

/// Asserts the status and that the message mentions `needle` (and is empty on success).
#[track_caller]
pub fn expect(got: bitune_status, want: bitune_status, needle: &str) {
    let msg = last_error();
    assert_eq!(got, want, "message: {msg}");
    if want == BITUNE_OK {
        assert!(msg.is_empty(), "a success left the message {msg:?}");
    } else {
        assert!(msg.contains(needle), "{msg:?} does not mention {needle:?}");
    }
}

pub fn path(rel: &str) -> CString {
    CString::new(root().join(rel).to_str().unwrap()).unwrap()
}

pub fn load(adapter: bool) -> *mut bitune_model {
    let mut m = null_mut();
    let a = path(ADAPTER);
    let a = if adapter { a.as_ptr() } else { null() };
    // SAFETY: valid strings and out pointer.
    let s = unsafe { bitune_model_load(path(MODEL).as_ptr(), c"cpu".as_ptr(), a, &mut m) };
    expect(s, BITUNE_OK, "");
    m
}

pub fn new_cache(m: *const bitune_model) -> *mut bitune_cache {
    let mut c = null_mut();
    // SAFETY: valid out pointer.
    expect(unsafe { bitune_cache_new(m, &mut c) }, BITUNE_OK, "");
    c
}

pub fn engine() -> Engine<Cpu> {
    let a = root().join(ADAPTER);
    Engine::load(Cpu, &root().join(MODEL), Some(&a), PromptMask::Causal).unwrap()
}

pub const PROMPT: [u32; 5] = [1, 17, 42, 99, 7];
