//! A byte buffer that starts on a cache line, so the integer dot kernels' code loads, which sit
//! at multiples of their own width from the start of a row's codes, stay on one line wherever
//! the rows' code bytes are a multiple of 64.

use std::ops::{Deref, DerefMut};

/// One 64-byte cache line.
#[derive(Clone, Copy, PartialEq)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// `len` zero-initialised bytes, 64-byte aligned.
#[derive(Clone, PartialEq)]
pub struct Lines {
    buf: Vec<Line>,
    len: usize,
}

impl Lines {
    pub fn zeros(len: usize) -> Self {
        Lines {
            buf: vec![Line([0; 64]); len.div_ceil(64)],
            len,
        }
    }
}

impl Deref for Lines {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `Line` is `repr(C)` over `[u8; 64]` (no padding, any bit pattern valid), so the
        // vector's memory is `64·buf.len() ≥ len` initialised bytes, borrowed for `&self`.
        unsafe { std::slice::from_raw_parts(self.buf.as_ptr().cast::<u8>(), self.len) }
    }
}

impl DerefMut for Lines {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`, borrowed mutably for `&mut self`.
        unsafe { std::slice::from_raw_parts_mut(self.buf.as_mut_ptr().cast::<u8>(), self.len) }
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
        for len in [0, 1, 63, 64, 65, 1000] {
            let mut l = super::Lines::zeros(len);
            assert_eq!(l.len(), len);
            assert!(l.iter().all(|&b| b == 0));
            l.iter_mut().for_each(|b| *b = 7);
            assert_eq!(l.as_ptr() as usize % 64, 0);
            assert!(l.iter().all(|&b| b == 7));
        }
    }
}
