//! Status codes, the thread-local last-error message, and the guard every entry point runs in.

use std::any::Any;
use std::cell::RefCell;
use std::ffi::{c_char, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// The result of every C API call; names and values mirror `enum bitune_status` in
/// `ffi/bitune.h` (the `ffi` test checks the two against each other).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(non_camel_case_types, clippy::enum_variant_names)]
pub enum bitune_status {
    BITUNE_OK = 0,
    BITUNE_ERR_NULL_POINTER = 1,
    BITUNE_ERR_INVALID_ARGUMENT = 2,
    BITUNE_ERR_LENGTH = 3,
    BITUNE_ERR_BUFFER_TOO_SMALL = 4,
    BITUNE_ERR_TOKEN_RANGE = 5,
    BITUNE_ERR_BAD_HANDLE = 6,
    BITUNE_ERR_WRONG_MODEL = 7,
    BITUNE_ERR_STATE = 8,
    BITUNE_ERR_BUSY = 9,
    BITUNE_ERR_UNSUPPORTED = 10,
    BITUNE_ERR_LOAD = 11,
    BITUNE_ERR_ENGINE = 12,
    BITUNE_ERR_PANIC = 13,
}

use bitune_status::*;

impl bitune_status {
    /// Every status, for `bitune_status_name` (an int from C is mapped, never transmuted).
    pub const ALL: [bitune_status; 14] = [
        BITUNE_OK,
        BITUNE_ERR_NULL_POINTER,
        BITUNE_ERR_INVALID_ARGUMENT,
        BITUNE_ERR_LENGTH,
        BITUNE_ERR_BUFFER_TOO_SMALL,
        BITUNE_ERR_TOKEN_RANGE,
        BITUNE_ERR_BAD_HANDLE,
        BITUNE_ERR_WRONG_MODEL,
        BITUNE_ERR_STATE,
        BITUNE_ERR_BUSY,
        BITUNE_ERR_UNSUPPORTED,
        BITUNE_ERR_LOAD,
        BITUNE_ERR_ENGINE,
        BITUNE_ERR_PANIC,
    ];

    /// The C name as a static NUL-terminated string.
    pub fn c_name(self) -> &'static std::ffi::CStr {
        match self {
            BITUNE_OK => c"BITUNE_OK",
            BITUNE_ERR_NULL_POINTER => c"BITUNE_ERR_NULL_POINTER",
            BITUNE_ERR_INVALID_ARGUMENT => c"BITUNE_ERR_INVALID_ARGUMENT",
            BITUNE_ERR_LENGTH => c"BITUNE_ERR_LENGTH",
            BITUNE_ERR_BUFFER_TOO_SMALL => c"BITUNE_ERR_BUFFER_TOO_SMALL",
            BITUNE_ERR_TOKEN_RANGE => c"BITUNE_ERR_TOKEN_RANGE",
            BITUNE_ERR_BAD_HANDLE => c"BITUNE_ERR_BAD_HANDLE",
            BITUNE_ERR_WRONG_MODEL => c"BITUNE_ERR_WRONG_MODEL",
            BITUNE_ERR_STATE => c"BITUNE_ERR_STATE",
            BITUNE_ERR_BUSY => c"BITUNE_ERR_BUSY",
            BITUNE_ERR_UNSUPPORTED => c"BITUNE_ERR_UNSUPPORTED",
            BITUNE_ERR_LOAD => c"BITUNE_ERR_LOAD",
            BITUNE_ERR_ENGINE => c"BITUNE_ERR_ENGINE",
            BITUNE_ERR_PANIC => c"BITUNE_ERR_PANIC",
        }
    }
}

/// A failed call: the code C sees and the message `bitune_last_error` returns.
#[derive(Debug)]
pub(crate) struct Failure {
    pub status: bitune_status,
    pub msg: String,
}

pub(crate) type Res<T> = Result<T, Failure>;

pub(crate) fn fail<T>(status: bitune_status, msg: impl Into<String>) -> Res<T> {
    Err(Failure {
        status,
        msg: msg.into(),
    })
}

/// Maps an engine error (anyhow) to a status, keeping its whole context chain as the message.
pub(crate) fn engine_err(status: bitune_status) -> impl FnOnce(anyhow::Error) -> Failure {
    move |e| Failure {
        status,
        msg: format!("{e:#}"),
    }
}

thread_local! {
    // Per thread, so concurrent callers never read each other's messages.
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(msg: &str) {
    // A message with an interior NUL would be cut short in C: replace it rather than lose it all.
    let c = CString::new(msg.replace('\0', "\\0")).unwrap_or_default();
    // `try_with` fails only while the thread is being torn down; there is no one left to read it.
    let _ = LAST_ERROR.try_with(|e| *e.borrow_mut() = c);
}

/// The current thread's message: valid until this thread's next `bitune_*` call.
pub(crate) fn last_error_ptr() -> *const c_char {
    LAST_ERROR
        .try_with(|e| e.borrow().as_ptr())
        .unwrap_or(c"".as_ptr())
}

fn panic_text(payload: &(dyn Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "(no message)"
    }
}

/// Runs one entry point's body: success clears the last error, a failure records
/// "`func`: message", and a panic becomes `BITUNE_ERR_PANIC` instead of unwinding into C.
///
/// `AssertUnwindSafe` holds because nothing a body touches stays broken after a panic: the
/// handle registry is only mutated in single infallible steps, and a cache whose lock was
/// poisoned is reset before anyone can read it again (`handles::lock_cache`).
pub(crate) fn guard(func: &str, body: impl FnOnce() -> Res<()>) -> bitune_status {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => {
            set_last_error("");
            BITUNE_OK
        }
        Ok(Err(f)) => {
            set_last_error(&format!("{func}: {}", f.msg));
            f.status
        }
        Err(payload) => {
            set_last_error(&format!(
                "{func}: internal error (panic): {}",
                panic_text(payload.as_ref())
            ));
            BITUNE_ERR_PANIC
        }
    }
}
