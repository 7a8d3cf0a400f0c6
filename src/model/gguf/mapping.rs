//! GGUF tensors to the model's Hugging Face names and layouts: renaming, Q/K row un-permutation,
//! Phi-2's fused QKV split, Gemma's `1 + w` norms, and the compact form a decode matmul reads.

use super::config::ArchSpec;
use super::format::{GgmlType, GgufFile, TensorInfo};
use crate::backend::weight::QuantForm;
use crate::model::config::{Arch, ModelConfig};
use crate::model::tensors::{HostTensor, TensorMap};
use anyhow::{anyhow, ensure, Context, Result};
use rayon::prelude::*;

/// llama.cpp's `convert_hf_to_gguf.py` permutation of Q/K projection rows (Llama): it regroups
/// each head's rows from Hugging Face's rotate-half RoPE layout to interleaved pairs,
/// `w.reshape(n_head, 2, head_dim / 2, cols).swapaxes(1, 2).reshape(rows, cols)`.
pub fn permute_qk_rows(w: &[f32], n_head: usize, cols: usize) -> Result<Vec<f32>> {
    remap_qk_rows(w, n_head, cols, false)
}

/// The inverse of [`permute_qk_rows`]: puts GGUF Q/K rows back in Hugging Face order.
pub fn unpermute_qk_rows(w: &[f32], n_head: usize, cols: usize) -> Result<Vec<f32>> {
    remap_qk_rows(w, n_head, cols, true)
}

fn remap_qk_rows(w: &[f32], n_head: usize, cols: usize, inverse: bool) -> Result<Vec<f32>> {
    ensure!(
        cols > 0 && w.len().is_multiple_of(cols),
        "Q/K tensor of {} values is not rows of {cols}",
        w.len()
    );
    let rows = w.len() / cols;
    ensure!(
        n_head > 0 && rows.is_multiple_of(2 * n_head),
        "Q/K tensor with {rows} rows cannot be split into {n_head} heads of even size"
    );
    let half = rows / n_head / 2;
    let mut out = vec![0f32; w.len()];
    for h in 0..n_head {
        for i in 0..half {
            for j in 0..2 {
                // HF row h*hd + j*half + i sits at GGUF row h*hd + 2*i + j.
                let hf = h * 2 * half + j * half + i;
                let gg = h * 2 * half + 2 * i + j;
                let (src, dst) = if inverse { (gg, hf) } else { (hf, gg) };
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&w[src * cols..(src + 1) * cols]);
            }
        }
    }
    Ok(out)
}

/// What a GGUF tensor becomes: nothing (consumed elsewhere), or Hugging Face tensors.
enum Mapped {
    Skip,
    One(String),
    /// Phi-2's fused `attn_qkv` of a layer (weight or bias), split into q/k/v projections.
    Qkv {
        layer: usize,
        bias: bool,
    },
}

fn map_name(name: &str, arch: Arch, num_layers: usize) -> Option<Mapped> {
    let phi = arch == Arch::Phi;
    let global = match name {
        "rope_freqs.weight" => return Some(Mapped::Skip),
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" if phi => Some("model.final_layernorm.weight"),
        "output_norm.bias" if phi => Some("model.final_layernorm.bias"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        "output.bias" => Some("lm_head.bias"),
        _ => None,
    };
    if let Some(g) = global {
        return Some(Mapped::One(g.to_string()));
    }
    let rest = name.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok().filter(|&l| l < num_layers)?;
    let (part, kind) = rest.rsplit_once('.')?;
    if !matches!(kind, "weight" | "bias") {
        return None;
    }
    let hf = match part {
        "attn_qkv" if phi => {
            let bias = kind == "bias";
            return Some(Mapped::Qkv { layer, bias });
        }
        "attn_norm" => "input_layernorm",
        "ffn_norm" if !phi => "post_attention_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" if phi => "self_attn.dense",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" if !phi => "mlp.gate_proj",
        "ffn_up" if phi => "mlp.fc1",
        "ffn_down" if phi => "mlp.fc2",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(Mapped::One(format!("model.layers.{layer}.{hf}.{kind}")))
}

/// Dequantizes every tensor (in parallel) and converts it to its Hugging Face name and layout.
pub(super) fn load_tensors(
    file: &GgufFile,
    spec: ArchSpec,
    config: &ModelConfig,
) -> Result<TensorMap> {
    let converted: Vec<Vec<(String, HostTensor)>> = file
        .tensors
        .par_iter()
        .map(|info| convert_tensor(file, spec, config, info))
        .collect::<Result<_>>()?;
    let mut map = TensorMap::new(file.path.clone());
    for (name, t) in converted.into_iter().flatten() {
        map.insert(name, t);
    }
    Ok(map)
}

fn convert_tensor(
    file: &GgufFile,
    spec: ArchSpec,
    config: &ModelConfig,
    info: &TensorInfo,
) -> Result<Vec<(String, HostTensor)>> {
    let path = &file.path;
    let mapped = map_name(&info.name, spec.arch, config.num_layers).ok_or_else(|| {
        anyhow!(
            "{path}: unrecognised tensor `{}` for architecture {:?}",
            info.name,
            spec.arch
        )
    })?;
    let hf_name = match mapped {
        Mapped::Skip => return Ok(vec![]),
        Mapped::Qkv { layer, bias } => {
            let t = file.dequantize(info)?;
            return split_qkv(t, config, layer, if bias { "bias" } else { "weight" })
                .with_context(|| format!("{path}: tensor `{}`", info.name));
        }
        Mapped::One(n) => n,
    };
    let mut t = file.dequantize(info)?;
    if spec.permuted_qk {
        let heads = if info.name.contains(".attn_q.") {
            Some(config.num_heads)
        } else if info.name.contains(".attn_k.") {
            Some(config.num_kv_heads)
        } else {
            None
        };
        if let Some(n_head) = heads {
            let cols = t.shape.get(1).copied().unwrap_or(1);
            t.data = unpermute_qk_rows(&t.data, n_head, cols)
                .with_context(|| format!("{path}: tensor `{}`", info.name))?;
        }
    }
    t.quant = quant_form(file, info, &t)?;
    if let (Some(p), true) = (&t.quant, spec.permuted_qk) {
        let heads = if info.name.contains(".attn_q.") {
            Some(config.num_heads)
        } else if info.name.contains(".attn_k.") {
            Some(config.num_kv_heads)
        } else {
            None
        };
        if let (Some(n_head), &[rows, cols]) = (heads, &t.shape[..]) {
            let half = rows / n_head / 2;
            // HF row h*hd + j*half + i sits at GGUF row h*hd + 2*i + j (as for the f32 copy).
            let src_of = |hf: usize| {
                let (h, rest) = (hf / (2 * half), hf % (2 * half));
                h * 2 * half + 2 * (rest % half) + rest / half
            };
            t.quant = Some(p.permute_rows(rows, cols, src_of));
        }
    }
    if spec.norm_plus_one && info.name.contains("norm.weight") {
        t.data.iter_mut().for_each(|w| *w -= 1.0);
    }
    Ok(vec![(hf_name, t)])
}

/// The compact form of a 2-D weight the decode matmuls can read directly.
fn quant_form(file: &GgufFile, info: &TensorInfo, t: &HostTensor) -> Result<Option<QuantForm>> {
    if t.shape.len() != 2 || !info.name.ends_with(".weight") {
        return Ok(None);
    }
    let bytes = file.tensor_bytes(info)?;
    let u16s = || {
        bytes
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect()
    };
    Ok(match info.dtype {
        GgmlType::Q4_0 => Some(QuantForm::Q4_0(bytes.to_vec())),
        GgmlType::Q4_1 => Some(QuantForm::Q4_1(bytes.to_vec())),
        GgmlType::Q8_0 => Some(QuantForm::Q8_0(bytes.to_vec())),
        GgmlType::BF16 => Some(QuantForm::Bf16(u16s())),
        GgmlType::F16 => Some(QuantForm::F16(u16s())),
        _ => None,
    })
}

/// Splits a fused `[q; k; v]` projection (rows) into the three Hugging Face tensors.
fn split_qkv(
    t: HostTensor,
    config: &ModelConfig,
    layer: usize,
    kind: &str,
) -> Result<Vec<(String, HostTensor)>> {
    let (q, kv) = (config.q_dim(), config.kv_dim());
    let rows = t.shape[0];
    ensure!(
        rows == q + 2 * kv,
        "fused QKV has {rows} rows, the config implies {q} + 2 x {kv}"
    );
    let cols = t.data.len() / rows;
    let mut out = Vec::with_capacity(3);
    let mut start = 0;
    for (proj, n) in [("q_proj", q), ("k_proj", kv), ("v_proj", kv)] {
        let mut shape = t.shape.clone();
        shape[0] = n;
        let data = t.data[start * cols..(start + n) * cols].to_vec();
        out.push((
            format!("model.layers.{layer}.self_attn.{proj}.{kind}"),
            HostTensor::new(shape, data),
        ));
        start += n;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_matches_numpy_reference() {
        // One head, head_dim 4, one column: rows [0,1,2,3] -> reshape(1,2,2,1).swapaxes(1,2)
        // gives rows [0,2,1,3].
        let w = [0.0, 1.0, 2.0, 3.0];
        assert_eq!(permute_qk_rows(&w, 1, 1).unwrap(), vec![0.0, 2.0, 1.0, 3.0]);
        // Two heads of 6 rows, two columns: each head's rows [a0 a1 a2 b0 b1 b2] become
        // [a0 b0 a1 b1 a2 b2].
        let w: Vec<f32> = (0..24).map(|x| x as f32).collect();
        let p = permute_qk_rows(&w, 2, 2).unwrap();
        let rows: Vec<f32> = p.chunks(2).map(|r| r[0] / 2.0).collect();
        assert_eq!(rows, vec![0., 3., 1., 4., 2., 5., 6., 9., 7., 10., 8., 11.]);
        assert_eq!(unpermute_qk_rows(&p, 2, 2).unwrap(), w);
    }

    #[test]
    fn permutation_rejects_odd_heads() {
        assert!(permute_qk_rows(&[0.0; 6], 2, 1).is_err());
        assert!(permute_qk_rows(&[0.0; 5], 1, 2).is_err());
    }
}
