//! Dequantisation of ggml's block formats (F32, F16, BF16, Q8_0, Q4_0, Q4_1) to f32.

use super::format::{GgmlType, GgufFile, TensorInfo};
use crate::model::tensors::HostTensor;
use anyhow::Result;
use half::{bf16, f16};
use rayon::prelude::*;

/// Elements dequantized per rayon task (a multiple of every block size).
const CHUNK_ELEMS: usize = 32 * 1024;

impl GgufFile {
    /// Dequantizes a tensor to f32 in its row-major shape, under its GGUF name and layout (no
    /// renaming, no Q/K un-permutation).
    pub fn dequantize(&self, info: &TensorInfo) -> Result<HostTensor> {
        let bytes = self.tensor_bytes(info)?;
        let mut out = vec![0f32; info.n_elements() as usize];
        dequantize_into(info.dtype, bytes, &mut out);
        Ok(HostTensor::new(info.shape(), out))
    }
}

/// Dequantizes whole blocks of `src` into `dst` (sized by the caller), in parallel chunks.
fn dequantize_into(dtype: GgmlType, src: &[u8], dst: &mut [f32]) {
    let (block_elems, block_bytes) = dtype.block().expect("checked by tensor_bytes");
    let chunk_bytes = CHUNK_ELEMS / block_elems * block_bytes;
    dst.par_chunks_mut(CHUNK_ELEMS)
        .zip(src.par_chunks(chunk_bytes))
        .for_each(|(out, bytes)| {
            out.chunks_exact_mut(block_elems)
                .zip(bytes.chunks_exact(block_bytes))
                .for_each(|(o, b)| dequantize_block(dtype, b, o))
        });
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// One block of ggml's layouts (`ggml-common.h`): Q8_0 = f16 scale + 32 i8; Q4_0 = f16 scale +
/// 16 bytes whose low nibbles are elements 0..16 and high nibbles 16..32, value (q - 8) * d;
/// Q4_1 = f16 scale, f16 min, then the same nibbles, value q * d + m.
fn dequantize_block(dtype: GgmlType, b: &[u8], out: &mut [f32]) {
    match dtype {
        GgmlType::F32 => out[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        GgmlType::F16 => out[0] = f16_at(b, 0),
        GgmlType::BF16 => out[0] = bf16::from_le_bytes([b[0], b[1]]).to_f32(),
        GgmlType::Q8_0 => {
            let d = f16_at(b, 0);
            for (o, &q) in out.iter_mut().zip(&b[2..34]) {
                *o = q as i8 as f32 * d;
            }
        }
        GgmlType::Q4_0 => {
            let d = f16_at(b, 0);
            unpack_nibbles(&b[2..18], out, |q| (q as f32 - 8.0) * d);
        }
        GgmlType::Q4_1 => {
            let (d, m) = (f16_at(b, 0), f16_at(b, 2));
            unpack_nibbles(&b[4..20], out, |q| q as f32 * d + m);
        }
        GgmlType::Other(_) => unreachable!("checked by tensor_bytes"),
    }
}

fn unpack_nibbles(qs: &[u8], out: &mut [f32], f: impl Fn(u8) -> f32) {
    let (lo, hi) = out.split_at_mut(16);
    for ((&q, l), h) in qs.iter().zip(lo).zip(hi) {
        *l = f(q & 0x0f);
        *h = f(q >> 4);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nibble_order_and_offsets() {
        // Q4_0 block: d = 1.0, byte k holds element k (low) and k + 16 (high).
        let mut b = vec![0u8; 18];
        b[..2].copy_from_slice(&f16::from_f32(1.0).to_le_bytes());
        b[2] = 0x9f; // element 0 = 15 - 8 = 7, element 16 = 9 - 8 = 1
        let mut out = [0f32; 32];
        dequantize_block(GgmlType::Q4_0, &b, &mut out);
        assert_eq!((out[0], out[16], out[1]), (7.0, 1.0, -8.0));
    }
}
