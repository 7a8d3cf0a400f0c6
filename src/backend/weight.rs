//! A frozen weight as a checkpoint gives it, before any backend has chosen how to hold it: the
//! f32 values every backend can compute with and, when the checkpoint stored the matrix more
//! compactly, that compact form, so a backend that reads it directly (the CPU's decode kernels)
//! need not re-quantise. [`Backend::upload_weight`](super::Backend::upload_weight) turns it into
//! the backend's own `Weight`, once, at load.

/// A checkpoint's compact form of a `[rows, cols]` matrix, row-major. Its values are exactly the
/// f32 values of the [`HostWeight`] holding it (those were widened from the same bytes).
#[derive(Clone, Debug, PartialEq)]
pub enum QuantForm {
    /// ggml blocks of 32: f16 scale + 16 bytes of nibbles, value = (q − 8)·d
    Q4_0(Vec<u8>),
    /// ggml blocks of 32: f16 scale, f16 min, 16 bytes of nibbles, value = q·d + m
    Q4_1(Vec<u8>),
    /// ggml blocks of 32: f16 scale + 32 signed bytes, value = q·d
    Q8_0(Vec<u8>),
    Bf16(Vec<u16>),
    F16(Vec<u16>),
}

impl QuantForm {
    /// Bytes (or u16 elements for bf16/f16) of one row of `cols` values.
    pub fn row_units(&self, cols: usize) -> usize {
        match self {
            QuantForm::Q4_0(_) => cols / 32 * 18,
            QuantForm::Q4_1(_) => cols / 32 * 20,
            QuantForm::Q8_0(_) => cols / 32 * 34,
            QuantForm::Bf16(_) | QuantForm::F16(_) => cols,
        }
    }

    /// Whether this form can hold a `[rows, cols]` matrix.
    pub fn fits(&self, rows: usize, cols: usize) -> bool {
        let (blocked, len) = match self {
            QuantForm::Q4_0(v) | QuantForm::Q4_1(v) | QuantForm::Q8_0(v) => (true, v.len()),
            QuantForm::Bf16(v) | QuantForm::F16(v) => (false, v.len()),
        };
        (!blocked || cols.is_multiple_of(32)) && len == rows * self.row_units(cols)
    }

    /// Reorders rows: row `i` of the result is row `src_of(i)` of `self`.
    pub fn permute_rows(&self, rows: usize, cols: usize, src_of: impl Fn(usize) -> usize) -> Self {
        let u = self.row_units(cols);
        fn perm<T: Copy>(v: &[T], rows: usize, u: usize, f: &dyn Fn(usize) -> usize) -> Vec<T> {
            (0..rows)
                .flat_map(|i| v[f(i) * u..(f(i) + 1) * u].iter().copied())
                .collect()
        }
        match self {
            QuantForm::Q4_0(v) => QuantForm::Q4_0(perm(v, rows, u, &src_of)),
            QuantForm::Q4_1(v) => QuantForm::Q4_1(perm(v, rows, u, &src_of)),
            QuantForm::Q8_0(v) => QuantForm::Q8_0(perm(v, rows, u, &src_of)),
            QuantForm::Bf16(v) => QuantForm::Bf16(perm(v, rows, u, &src_of)),
            QuantForm::F16(v) => QuantForm::F16(perm(v, rows, u, &src_of)),
        }
    }
}

/// A frozen matrix `[n, k]` on the host (a linear layer's `W` in `y = x·Wᵀ`, or the embedding
/// table `[vocab, dim]`): what [`Backend::upload_weight`](super::Backend::upload_weight) takes.
#[derive(Clone, Debug, PartialEq)]
pub struct HostWeight {
    /// Row-major `[n, k]` f32.
    pub values: Vec<f32>,
    /// Rows (output features).
    pub n: usize,
    /// Columns (input features).
    pub k: usize,
    /// The checkpoint's compact form of `values`, when it had one that fits `[n, k]`.
    pub quant: Option<QuantForm>,
}

impl HostWeight {
    /// A weight with f32 values only.
    pub fn dense(values: Vec<f32>, n: usize, k: usize) -> Self {
        Self::new(values, n, k, None)
    }

    /// A weight with its compact form, which is dropped when it does not fit `[n, k]` (the f32
    /// values alone serve every product).
    pub fn new(values: Vec<f32>, n: usize, k: usize, quant: Option<QuantForm>) -> Self {
        assert_eq!(values.len(), n * k, "weight values are not [{n}, {k}]");
        let quant = quant.filter(|q| q.fits(n, k));
        HostWeight {
            values,
            n,
            k,
            quant,
        }
    }
}
