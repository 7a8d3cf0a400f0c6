//! A byte buffer that starts on a cache line, so the integer dot kernels' code loads, which sit
//! at multiples of their own width from the start of a row's codes, stay on one line wherever
//! the rows' code bytes are a multiple of 64.
//!
//! The buffers are cut from shared 32 MiB slabs in transparent huge pages (`madvise`, where the
//! system leaves them to the program, as most do). Decoding streams every weight once a token,
//! and a model's matrices are each well under 2 MiB: allocated apart, in 4 KiB pages, each page
//! is a TLB miss and a point where the hardware prefetcher stops and starts again. A slab lives
//! while any buffer cut from it does.

use std::alloc::{alloc, dealloc, handle_alloc_error, Layout};
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;
use std::sync::{Arc, Mutex, Weak};

/// One 64-byte cache line.
const LINE: usize = 64;
/// A cache line's alignment, for the address of zero bytes.
#[repr(C, align(64))]
struct Line([u8; LINE]);
/// A huge page of x86-64 (and of arm64's 4 KiB-granule kernels).
const HUGE: usize = 2 << 20;
/// The slabs buffers are cut from; a buffer of half a slab or more gets its own.
const SLAB: usize = 32 << 20;

/// Memory in huge pages, 2 MiB aligned.
struct Slab {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: a slab is plain memory that its `Lines` cut into disjoint ranges; it is never read or
// written through the slab itself.
unsafe impl Send for Slab {}
// SAFETY: as above.
unsafe impl Sync for Slab {}

impl Slab {
    fn new(size: usize) -> Self {
        let size = size.next_multiple_of(HUGE);
        let layout = Layout::from_size_align(size, HUGE).expect("a buffer the address space holds");
        // SAFETY: `layout` has a nonzero size.
        let ptr =
            NonNull::new(unsafe { alloc(layout) }).unwrap_or_else(|| handle_alloc_error(layout));
        #[cfg(target_os = "linux")]
        // Before the first write, so the pages are faulted in huge. Only advice: where the system
        // refuses, the buffers work the same in small pages.
        // SAFETY: the range is the allocation just made, whole huge pages from its start.
        unsafe {
            libc::madvise(ptr.as_ptr().cast(), size, libc::MADV_HUGEPAGE)
        };
        Slab { ptr, layout }
    }
}

impl Drop for Slab {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout, freed only here.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) };
    }
}

/// The slab buffers are being cut from and how much of it is taken. Weak: a slab whose buffers
/// were all dropped is freed, and the next buffer starts a new one.
static CURRENT: Mutex<(Weak<Slab>, usize)> = Mutex::new((Weak::new(), 0));

/// A range of `len` bytes of a slab, its own slab where `len` is half a slab or more.
fn cut(len: usize) -> (NonNull<u8>, Arc<Slab>) {
    let size = len.next_multiple_of(LINE);
    if size >= SLAB / 2 {
        let slab = Arc::new(Slab::new(size));
        return (slab.ptr, slab);
    }
    let mut cur = CURRENT.lock().unwrap_or_else(|e| e.into_inner());
    let slab = match cur.0.upgrade() {
        Some(s) if cur.1 + size <= s.layout.size() => s,
        _ => {
            let s = Arc::new(Slab::new(SLAB));
            *cur = (Arc::downgrade(&s), 0);
            s
        }
    };
    // SAFETY: `cur.1 + size` is within the slab (checked, or a new slab of `SLAB > size`).
    let ptr = unsafe { NonNull::new_unchecked(slab.ptr.as_ptr().add(cur.1)) };
    cur.1 += size;
    (ptr, slab)
}

/// `len` zero-initialised bytes, 64-byte aligned, in huge pages where the system gives them.
pub struct Lines {
    ptr: NonNull<u8>,
    len: usize,
    /// The slab the bytes are in, `None` for zero bytes.
    _slab: Option<Arc<Slab>>,
}

impl Lines {
    pub fn zeros(len: usize) -> Self {
        if len == 0 {
            return Lines {
                ptr: NonNull::<Line>::dangling().cast(),
                len,
                _slab: None,
            };
        }
        let (ptr, slab) = cut(len);
        // SAFETY: `ptr` is valid for `len` bytes of writes, a range no other `Lines` holds.
        unsafe { ptr.as_ptr().write_bytes(0, len) };
        Lines {
            ptr,
            len,
            _slab: Some(slab),
        }
    }
}

// SAFETY: `Lines` owns its range of the slab as a `Vec<u8>` owns its buffer (no other `Lines`
// holds it; the shared `Arc<Slab>` only keeps the memory alive), so it moves and is shared
// across threads as soundly as a `Vec<u8>`.
unsafe impl Send for Lines {}
// SAFETY: as above.
unsafe impl Sync for Lines {}

impl Clone for Lines {
    fn clone(&self) -> Self {
        let mut c = Lines::zeros(self.len);
        c.copy_from_slice(self);
        c
    }
}

impl PartialEq for Lines {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Deref for Lines {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr` holds `len` initialised bytes (zeroed in `zeros`; dangling but aligned
        // for `len` 0), borrowed for `&self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for Lines {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`, borrowed mutably for `&mut self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl std::fmt::Debug for Lines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Lines({} bytes)", self.len)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn starts_on_a_line_and_holds_len_bytes() {
        for len in [0, 1, 63, 64, 65, 1000, (2 << 20) + 5, (16 << 20) + 1] {
            let mut l = super::Lines::zeros(len);
            assert_eq!(l.len(), len);
            assert!(l.iter().all(|&b| b == 0));
            l.iter_mut().for_each(|b| *b = 7);
            assert_eq!(l.as_ptr() as usize % 64, 0);
            assert_eq!(l.clone()[..], l[..]);
            assert!(l.iter().all(|&b| b == 7));
        }
    }
}
