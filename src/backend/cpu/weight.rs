//! How the CPU backend holds a frozen weight, and the one matmul that picks how to read it.

use super::lora_decode::{CodeBits, LoraPack, MAX_RANK};
use super::quant::{Quant, MAX_QUANT_ROWS};
use super::tiles::{self, Panels};
use super::{gemm, ops, prof};
use crate::backend::weight::HostWeight;
use rayon::prelude::*;
use std::sync::OnceLock;

/// A frozen weight `[n, k]` on the CPU: its f32 values (the backward, the embedding gather and
/// the fallback of every product), the checkpoint's compact form when it had one (decoding), and
/// AVX-512 panels built on the first many-row product, so decoding alone never pays their memory.
pub struct CpuWeight {
    values: Vec<f32>,
    n: usize,
    k: usize,
    quant: Option<Quant>,
    panels: OnceLock<Option<Panels>>,
}

impl CpuWeight {
    pub fn new(w: HostWeight) -> Self {
        CpuWeight {
            values: w.values,
            n: w.n,
            k: w.k,
            quant: w.quant.map(|q| Quant::for_cpu(q, w.k)),
            panels: OnceLock::new(),
        }
    }

    /// Row-major `[n, k]` f32.
    pub fn values(&self) -> &[f32] {
        &self.values
    }
    /// Rows (output features).
    pub fn n(&self) -> usize {
        self.n
    }
    /// Columns (input features).
    pub fn k(&self) -> usize {
        self.k
    }

    /// The panels, built now if this processor runs the tiles and they do not exist yet.
    fn panels(&self) -> Option<&Panels> {
        self.panels
            .get_or_init(|| tiles::available().then(|| Panels::pack(&self.values, self.n, self.k)))
            .as_ref()
    }

    /// `y[m, n] (+)= x[m, k] · Wᵀ (+ bias)`. A few rows (decoding) read the compact form when
    /// there is one, since reading the weight is the whole cost there; many rows read the panels
    /// where the processor has AVX-512; everything else is the plain f32 product.
    /// `BITUNE_F32_DECODE` turns the compact path off (to compare against it).
    pub(super) fn matmul_fwd(
        &self,
        y: &mut [f32],
        x: &[f32],
        bias: Option<&[f32]>,
        m: usize,
        accumulate: bool,
    ) {
        let (n, k) = (self.n, self.k);
        let (y, x) = (&mut y[..m * n], &x[..m * k]);
        let few = m <= MAX_QUANT_ROWS;
        match (self.compact_for(m), self.panels_for(m)) {
            (Some(q), _) => {
                let _p = prof::scope("matmul_fwd (quant)");
                q.matmul(y, x, m, n, k, accumulate, None);
            }
            (_, Some(p)) => {
                let _p = prof::scope("matmul_fwd (panels)");
                tiles::matmul_nt(y, x, p, m, accumulate);
            }
            _ => {
                let _p = prof::scope("matmul_fwd (f32)");
                if m == 1 {
                    ops::gemv(y, x, &self.values, k, accumulate);
                } else {
                    let w = gemm::tr(&self.values, k);
                    gemm::sgemm(m, n, k, gemm::rm(x, k), w, y, n, accumulate);
                }
            }
        }
        if let Some(b) = bias {
            add_bias(y, b, few);
        }
    }

    /// The integer decoding form of an adapter `s·B·A` on this weight (A `[r, k]`, B `[n, r]`),
    /// where decoding reads the weight against 8-bit activations (a `Q8Dot` form, which exists
    /// only for whole blocks of 32 inputs), its codes as wide as the weight's
    /// ([`CodeBits::for_weight`]), up to rank [`MAX_RANK`]; `None` elsewhere, where decoding
    /// adds the f32 adapter after the product (the same values fused into the product's pass
    /// measured no faster: the bytes are the cost).
    pub fn lora_pack(&self, a: &[f32], b: &[f32], s: f32) -> Option<LoraPack> {
        let Quant::Q8Dot { fmt, .. } = self.compact_for(1)? else {
            return None;
        };
        if a.len() > MAX_RANK * self.k {
            return None;
        }
        let bits = CodeBits::for_weight(fmt.nibbles());
        Some(LoraPack::new(a, b, self.k, self.n, s, bits))
    }

    /// `y[1, n] = x[1, k]·Wᵀ (+ bias) + s·B·A·x` for one row, `pack` built by
    /// [`CpuWeight::lora_pack`] on this weight, in the product's pass over the output rows.
    pub(super) fn matmul_lora_fwd(
        &self,
        y: &mut [f32],
        x: &[f32],
        bias: Option<&[f32]>,
        pack: &LoraPack,
    ) {
        let (n, k) = (self.n, self.k);
        let q = self
            .compact_for(1)
            .expect("a lora pack is built only on a weight decoded through its compact form");
        let _p = prof::scope("matmul_fwd (quant + lora)");
        q.matmul(&mut y[..n], &x[..k], 1, n, k, false, Some(pack));
        if let Some(b) = bias {
            add_bias(&mut y[..n], b, true);
        }
    }

    /// The compact form when a product over `m` rows reads it: decoding sizes, unless
    /// `BITUNE_F32_DECODE` turned the compact path off.
    fn compact_for(&self, m: usize) -> Option<&Quant> {
        static F32_DECODE: OnceLock<bool> = OnceLock::new();
        let f32_decode =
            *F32_DECODE.get_or_init(|| std::env::var_os("BITUNE_F32_DECODE").is_some());
        self.quant
            .as_ref()
            .filter(|_| m <= MAX_QUANT_ROWS && !f32_decode)
    }

    /// Bytes of this weight that [`CpuWeight::matmul_fwd`] over `m` rows reads: the compact form
    /// it reads at that size (as this processor holds it: Q4 blocks re-laid for SIMD are 24 bytes
    /// per 32 values), else the f32 values (the panels hold the same f32 values, re-laid).
    pub fn bytes_read(&self, m: usize) -> u64 {
        match self.compact_for(m) {
            Some(q) => q.bytes(self.n, self.k),
            None => (self.n * self.k * std::mem::size_of::<f32>()) as u64,
        }
    }

    /// The panels when a product over `m` rows should read them: only past the decoding sizes,
    /// which must not build them.
    fn panels_for(&self, m: usize) -> Option<&Panels> {
        (m > MAX_QUANT_ROWS).then(|| self.panels()).flatten()
    }
}

/// `y[i, :] += b` for every row of `y` (rows as long as `b`); a decoding step's `few` rows are
/// not worth a hand-off to other threads.
fn add_bias(y: &mut [f32], b: &[f32], few: bool) {
    let _p = prof::scope("matmul_fwd (bias)");
    let add = |row: &mut [f32]| row.iter_mut().zip(b).for_each(|(a, c)| *a += c);
    if few {
        y.chunks_mut(b.len()).for_each(add);
    } else {
        y.par_chunks_mut(b.len()).for_each(add);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::quant::Q8Rows;
    use crate::backend::weight::QuantForm;
    use crate::rng::Rng;
    use half::bf16;

    /// The three paths (compact, panels, plain) compute one product: a bf16 weight, whose f32
    /// values are exact, against an f64 reference, at decoding and at many-row sizes, with and
    /// without bias and accumulation.
    #[test]
    fn every_path_gives_the_same_product() {
        let mut rng = Rng::new(7);
        let (n, k) = (70, 96);
        let bits: Vec<u16> = (0..n * k)
            .map(|_| bf16::from_f32(rng.uniform(-1.0, 1.0)).to_bits())
            .collect();
        let values: Vec<f32> = bits
            .iter()
            .map(|&b| f32::from_bits((b as u32) << 16))
            .collect();
        let bias: Vec<f32> = (0..n).map(|_| rng.uniform(-1.0, 1.0)).collect();
        let compact = CpuWeight::new(HostWeight::new(
            values.clone(),
            n,
            k,
            Some(QuantForm::Bf16(bits)),
        ));
        let plain = CpuWeight::new(HostWeight::dense(values.clone(), n, k));
        assert!(compact.quant.is_some() && plain.quant.is_none());
        for m in [1, 3, MAX_QUANT_ROWS, MAX_QUANT_ROWS + 1, 40] {
            let x: Vec<f32> = (0..m * k).map(|_| rng.uniform(-1.0, 1.0)).collect();
            if m <= MAX_QUANT_ROWS {
                // Decoding sizes never build panels.
                assert!(compact.panels.get().is_none() && plain.panels.get().is_none());
            }
            let y0: Vec<f32> = (0..m * n).map(|_| rng.uniform(-1.0, 1.0)).collect();
            for (with_bias, acc) in [(false, false), (true, false), (true, true)] {
                let want: Vec<f64> = (0..m * n)
                    .map(|e| {
                        let (i, j) = (e / n, e % n);
                        let dot: f64 = (0..k)
                            .map(|c| x[i * k + c] as f64 * values[j * k + c] as f64)
                            .sum();
                        let b = if with_bias { bias[j] as f64 } else { 0.0 };
                        dot + b + if acc { y0[e] as f64 } else { 0.0 }
                    })
                    .collect();
                for (name, w) in [("compact", &compact), ("plain", &plain)] {
                    let mut y = y0.clone();
                    w.matmul_fwd(&mut y, &x, with_bias.then_some(&bias[..]), m, acc);
                    for (e, (&g, &r)) in y.iter().zip(&want).enumerate() {
                        assert!(
                            (g as f64 - r).abs() <= 1e-5 * (1.0 + r.abs()),
                            "{name} m={m} bias={with_bias} acc={acc} [{e}]: {g} vs {r}"
                        );
                    }
                }
            }
        }
        // A many-row product builds the panels where AVX-512 runs.
        assert_eq!(
            compact.panels.get().map(Option::is_some),
            Some(tiles::available())
        );
    }

    /// The adapter fused into a decoding product adds `B·(s·A·x)` with the values its pack
    /// holds, with and without bias; output rows span several chunks and end off a tile of B.
    /// Only a weight read against 8-bit activations gets a pack (Q8_0 with 8-bit codes, Q4_0
    /// with 4-bit ones, where the integer dot kernels run); bf16 and plain f32 weights decode
    /// through the product and `lora_fwd`.
    #[test]
    fn fused_adapter_adds_what_its_pack_holds() {
        let mut rng = Rng::new(5);
        let (n, k, r, s) = (200, 96, 8, 0.75);
        let a: Vec<f32> = (0..r * k).map(|_| rng.uniform(-0.3, 0.3)).collect();
        let b: Vec<f32> = (0..n * r).map(|_| rng.uniform(-0.05, 0.05)).collect();
        let x: Vec<f32> = (0..k).map(|_| rng.uniform(-1.0, 1.0)).collect();
        let bias: Vec<f32> = (0..n).map(|_| rng.uniform(-1.0, 1.0)).collect();
        let mut q8 = Vec::new();
        let mut q8_values = Vec::new();
        for _ in 0..n * k / 32 {
            let d = half::f16::from_f32(rng.uniform(0.001, 0.02));
            q8.extend_from_slice(&d.to_bits().to_le_bytes());
            for _ in 0..32 {
                let q = rng.below(255) as i32 - 127;
                q8.push(q as i8 as u8);
                q8_values.push(q as f32 * d.to_f32());
            }
        }
        // Q4_0: an f16 scale and 16 bytes, byte j holding value j low and j + 16 high.
        let mut q4 = Vec::new();
        let mut q4_values = vec![0f32; n * k];
        for blk in q4_values.chunks_exact_mut(32) {
            let d = half::f16::from_f32(rng.uniform(0.001, 0.02));
            q4.extend_from_slice(&d.to_bits().to_le_bytes());
            let codes: Vec<u8> = (0..32).map(|_| rng.below(16) as u8).collect();
            q4.extend((0..16).map(|j| codes[j] | codes[j + 16] << 4));
            for (v, &q) in blk.iter_mut().zip(&codes) {
                *v = (q as f32 - 8.0) * d.to_f32();
            }
        }
        let bits: Vec<u16> = (0..n * k)
            .map(|_| bf16::from_f32(rng.uniform(-1.0, 1.0)).to_bits())
            .collect();
        let bf16_values: Vec<f32> = bits.iter().map(|&v| bf16::from_bits(v).to_f32()).collect();
        let weights = [
            HostWeight::new(q8_values, n, k, Some(QuantForm::Q8_0(q8))),
            HostWeight::new(q4_values, n, k, Some(QuantForm::Q4_0(q4))),
            HostWeight::new(bf16_values, n, k, Some(QuantForm::Bf16(bits))),
        ];
        let mut widths = vec![];
        for hw in weights {
            let w = CpuWeight::new(hw);
            let int8 = matches!(w.quant, Some(Quant::Q8Dot { .. }));
            let Some(pack) = w.lora_pack(&a, &b, s) else {
                assert!(!int8, "a weight read against 8-bit activations gets a pack");
                continue;
            };
            assert!(
                int8,
                "only a weight read against 8-bit activations gets a pack"
            );
            // The codes are as wide as the weight's.
            let Some(Quant::Q8Dot { fmt, .. }) = &w.quant else {
                unreachable!("checked above")
            };
            assert_eq!(pack.bits(), CodeBits::for_weight(fmt.nibbles()));
            widths.push(pack.bits());
            // A, 3 blocks of 32 a rank: codes in pairs of blocks (2 pairs, the last block's
            // pair zero), 64 bytes a pair in bytes and 32 in nibbles, and an f16 step a block
            // (4 a rank with the padding), its ranks padded to 8. B: an f32 scale a rank, an f16
            // step a tile of 16 outputs and codes for 8 ranks, its outputs padded to 16. Each
            // section on whole cache lines.
            let (n_pad, ra) = (n.next_multiple_of(16), r.next_multiple_of(8));
            let lines = |b: usize| b.next_multiple_of(64);
            let (a_bytes, b_codes) = match pack.bits() {
                CodeBits::Four => (lines(ra * 64) + lines(2 * ra * 4), n_pad * r / 2),
                CodeBits::Eight => (lines(ra * 128) + lines(2 * ra * 4), n_pad * r),
            };
            assert_eq!(
                pack.bytes(),
                (a_bytes + lines(4 * r) + lines(2 * n_pad / 16) + lines(b_codes)) as u64
            );
            // The adapter's input is the activations as the product quantised them (Q8_0's
            // codes are stored offset by 128, Q4_0's by 8), and its `xa` in 8 bits within half a
            // step of the f64 projection of the values A holds, times B's rank scales.
            let offset = if fmt.nibbles() { 8 } else { 128 };
            let x8 = Q8Rows::quantize_portable(&x, 1, k, offset);
            let (aq, bc) = (pack.a_values(), pack.b_codes());
            let want: Vec<f64> = (0..r)
                .map(|c| {
                    s as f64
                        * pack.bs(c) as f64
                        * (0..k)
                            .map(|i| aq[c * k + i] as f64 * x8.q[i] as f64 * x8.d[i / 32] as f64)
                            .sum::<f64>()
                })
                .collect();
            let xa = pack.xa_values(&pack.project(&x8).expect("a nonzero adapter"));
            let amax = want.iter().fold(0f64, |m, v| m.max(v.abs()));
            for c in 0..r {
                let step = (xa[c] as f64 - want[c]).abs() / (amax / 127.0);
                assert!(step <= 0.5 + 1e-3, "xa[{c}]: {} vs {}", xa[c], want[c]);
            }
            for with_bias in [false, true] {
                let bias = with_bias.then_some(&bias[..]);
                let mut plain = vec![0f32; n];
                w.matmul_fwd(&mut plain, &x, bias, 1, false);
                let mut fused = vec![f32::NAN; n];
                w.matmul_lora_fwd(&mut fused, &x, bias, &pack);
                for j in 0..n {
                    let add: f64 = (0..r)
                        .map(|c| bc[j * r + c] as f64 * xa[c] as f64)
                        .sum::<f64>()
                        * pack.tile_step(j) as f64;
                    let want = plain[j] as f64 + add;
                    assert!(
                        (fused[j] as f64 - want).abs() <= 1e-5 * (1.0 + want.abs()),
                        "bias={with_bias} y[{j}]: {} vs {want}",
                        fused[j]
                    );
                }
            }
        }
        if crate::backend::cpu::quant::int8_dot_available() {
            assert_eq!(widths.len(), 2, "Q8_0 and Q4_0 get packs");
        }
        let plain = CpuWeight::new(HostWeight::dense(vec![0.0; n * k], n, k));
        assert!(plain.lora_pack(&a, &b, s).is_none());
    }

    /// The bytes a product reads, against a hand count for `[n, k] = [64, 96]` (3 blocks of 32
    /// per row): the ggml blocks as stored (Q4_0 18 bytes, Q4_1 20, Q8_0 34 per 32 values), Q4
    /// re-laid for SIMD (24), two bytes a value for bf16/f16, four for f32; past the decoding
    /// sizes every form reads f32.
    #[test]
    fn bytes_read_counts_the_form_the_product_reads() {
        let (n, k) = (64, 96);
        let blocks = (n * k / 32) as u64;
        assert_eq!(Quant::Q4_0(vec![]).bytes(n, k), blocks * 18);
        assert_eq!(Quant::Q4_1(vec![]).bytes(n, k), blocks * 20);
        assert_eq!(Quant::Q8_0(vec![]).bytes(n, k), blocks * 34);
        assert_eq!(Quant::Bf16(vec![]).bytes(n, k), (n * k * 2) as u64);
        let lanes = Quant::Q4Lanes {
            data: vec![],
            offset8: true,
        };
        assert_eq!(lanes.bytes(n, k), blocks * 24);

        let f32_bytes = (n * k * 4) as u64;
        let weight =
            |q: Option<QuantForm>| CpuWeight::new(HostWeight::new(vec![0.0; n * k], n, k, q));
        let plain = weight(None);
        assert_eq!(plain.bytes_read(1), f32_bytes);
        let forms = [
            (QuantForm::Q4_0(vec![0; n * k / 32 * 18]), 18),
            (QuantForm::Q4_1(vec![0; n * k / 32 * 20]), 20),
            (QuantForm::Q8_0(vec![0; n * k / 32 * 34]), 34),
        ];
        for (form, block_bytes) in forms {
            let w = weight(Some(form));
            // This processor may hold Q4 blocks re-laid (24 bytes), or blocks paired for the
            // integer dot (a row's odd third block pairs with 16 or 32 bytes of zero codes); the
            // product reads those.
            let want = match w.quant {
                Some(Quant::Q4Lanes { .. }) => blocks * 24,
                Some(Quant::Q8Dot { .. }) => {
                    let pad = if block_bytes == 34 { 32 } else { 16 };
                    blocks * block_bytes + n as u64 * pad
                }
                _ => blocks * block_bytes,
            };
            assert_eq!(w.bytes_read(1), want);
            assert_eq!(w.bytes_read(MAX_QUANT_ROWS), want);
            assert_eq!(w.bytes_read(MAX_QUANT_ROWS + 1), f32_bytes);
        }
        let half = weight(Some(QuantForm::F16(vec![0; n * k])));
        assert_eq!(half.bytes_read(1), (n * k * 2) as u64);
    }
}
