//! Checked views of C arguments: null, alignment and size are tested before any Rust reference
//! or slice is formed. Whether a non-null pointer really points at `n` valid elements cannot be
//! checked from here; that is the header's contract with the caller.

use super::status::{bitune_status::*, fail, Res};
use std::ffi::{c_char, CStr};
use std::ptr::NonNull;

fn check_ptr<T>(p: *const T, n: usize, what: &str) -> Res<()> {
    if p.is_null() {
        return fail(BITUNE_ERR_NULL_POINTER, format!("`{what}` is NULL"));
    }
    if !p.is_aligned() {
        return fail(
            BITUNE_ERR_INVALID_ARGUMENT,
            format!(
                "`{what}` ({p:p}) is not aligned to {} bytes",
                align_of::<T>()
            ),
        );
    }
    // `slice::from_raw_parts` requires the byte size to fit in an isize.
    if n.checked_mul(size_of::<T>())
        .is_none_or(|b| b > isize::MAX as usize)
    {
        return fail(
            BITUNE_ERR_LENGTH,
            format!("length {n} of `{what}` is impossibly large"),
        );
    }
    Ok(())
}

/// `n` elements at `p`, read-only. `n == 0` needs no pointer (NULL is fine).
///
/// # Safety
/// If `p` is non-null and `n > 0`, it must point to `n` initialised `T`s that stay unchanged
/// for `'a`.
pub(crate) unsafe fn slice<'a, T>(p: *const T, n: usize, what: &str) -> Res<&'a [T]> {
    if n == 0 {
        return Ok(&[]);
    }
    check_ptr(p, n, what)?;
    // SAFETY: non-null, aligned and of a valid total size (checked above); validity of the
    // memory is the caller's contract stated on this function.
    Ok(unsafe { std::slice::from_raw_parts(p, n) })
}

/// A NUL-terminated UTF-8 string.
///
/// # Safety
/// A non-null `p` must point to a NUL-terminated string that stays unchanged for `'a`.
pub(crate) unsafe fn c_str<'a>(p: *const c_char, what: &str) -> Res<&'a str> {
    if p.is_null() {
        return fail(BITUNE_ERR_NULL_POINTER, format!("`{what}` is NULL"));
    }
    // SAFETY: non-null; NUL termination is the caller's contract stated on this function.
    let s = unsafe { CStr::from_ptr(p) };
    s.to_str().map_err(|e| super::status::Failure {
        status: BITUNE_ERR_INVALID_ARGUMENT,
        msg: format!("`{what}` is not valid UTF-8: {e}"),
    })
}

/// Where to write one result. Built from a checked pointer, so writing is safe afterwards.
pub(crate) struct Out<T>(NonNull<T>);

impl<T> Out<T> {
    /// # Safety
    /// A non-null `p` must be valid for writing one `T` for as long as the `Out` lives.
    pub(crate) unsafe fn new(p: *mut T, what: &str) -> Res<Self> {
        check_ptr(p, 1, what)?;
        Ok(Out(NonNull::new(p).expect("checked non-null")))
    }

    /// Like [`Out::new`], but NULL means "the caller does not want this result".
    ///
    /// # Safety
    /// As for [`Out::new`].
    pub(crate) unsafe fn optional(p: *mut T, what: &str) -> Res<Option<Self>> {
        if p.is_null() {
            return Ok(None);
        }
        // SAFETY: forwarded contract.
        unsafe { Self::new(p, what) }.map(Some)
    }

    pub(crate) fn set(&self, v: T) {
        // SAFETY: `new` checked non-null and alignment, and its contract makes `p` writable.
        // `write` never reads the old value, so uninitialised C memory is fine.
        unsafe { self.0.as_ptr().write(v) }
    }
}

/// A caller-owned output array of `len` elements (possibly uninitialised memory, so it is only
/// ever written through raw copies, never viewed as a Rust slice).
pub(crate) struct OutBuf<T> {
    ptr: *mut T,
    len: usize,
}

impl<T: Copy> OutBuf<T> {
    /// `(NULL, 0)` is "no buffer" (`None`); `(NULL, n > 0)` is an error.
    ///
    /// # Safety
    /// A non-null `p` must be valid for writing `len` `T`s for as long as the `OutBuf` lives and
    /// must not overlap the call's input buffers.
    pub(crate) unsafe fn optional(p: *mut T, len: usize, what: &str) -> Res<Option<Self>> {
        if p.is_null() && len == 0 {
            return Ok(None);
        }
        check_ptr(p, len, what)?;
        Ok(Some(OutBuf { ptr: p, len }))
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Copies `src` to the start of the buffer; `src.len() <= self.len()` is the caller's check.
    pub(crate) fn fill(&self, src: &[T]) {
        assert!(src.len() <= self.len, "OutBuf::fill past the end");
        // SAFETY: the destination holds `len >= src.len()` writable elements (contract of
        // `optional`) and does not overlap `src`, which is Rust-owned memory.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.ptr, src.len()) }
    }
}

/// One token id, as [`check_ids`] (the message names the argument without an index).
pub(crate) fn check_id(id: u32, vocab: usize, what: &str) -> Res<()> {
    if id as usize >= vocab {
        return fail(
            BITUNE_ERR_TOKEN_RANGE,
            format!("`{what}` = {id} is outside the model's vocabulary of {vocab}"),
        );
    }
    Ok(())
}

/// Token ids must index the vocabulary: checked here so C gets `BITUNE_ERR_TOKEN_RANGE` with
/// the position, before any engine work.
pub(crate) fn check_ids(ids: &[u32], vocab: usize, what: &str) -> Res<()> {
    match ids.iter().position(|&t| t as usize >= vocab) {
        Some(i) => fail(
            BITUNE_ERR_TOKEN_RANGE,
            format!(
                "`{what}[{i}]` = {} is outside the model's vocabulary of {vocab}",
                ids[i]
            ),
        ),
        None => Ok(()),
    }
}
