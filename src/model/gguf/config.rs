//! The model's configuration from GGUF metadata: which architecture, and the `{arch}.*` keys
//! read with the defaults the matching Hugging Face `config.json` would get.

use super::format::{GgufFile, MetaValue};
use crate::model::config::{Act, Arch, ModelConfig, NormKind, RopeScaling};
use anyhow::{anyhow, bail, ensure, Context, Result};

/// How one GGUF architecture maps onto [`ModelConfig`] and Hugging Face tensor names.
#[derive(Clone, Copy, Debug)]
pub(super) struct ArchSpec {
    pub(super) arch: Arch,
    /// Metadata key prefix (`general.architecture`).
    pub(super) prefix: &'static str,
    /// llama.cpp permuted Q/K rows (models it runs with "normal", interleaved RoPE).
    pub(super) permuted_qk: bool,
    /// Gemma: the converter stores RMSNorm weights as `1 + w`.
    pub(super) norm_plus_one: bool,
}

pub(super) fn arch_spec(name: &str, path: &str) -> Result<ArchSpec> {
    let spec = |arch, prefix, permuted_qk, norm_plus_one| ArchSpec {
        arch,
        prefix,
        permuted_qk,
        norm_plus_one,
    };
    Ok(match name {
        "llama" => spec(Arch::Llama, "llama", true, false),
        "qwen2" => spec(Arch::Qwen2, "qwen2", false, false),
        "gemma" => spec(Arch::Gemma, "gemma", false, true),
        "phi2" => spec(Arch::Phi, "phi2", false, false),
        other => bail!(
            "{path}: unsupported GGUF architecture {other:?} (supported: llama, qwen2, gemma, phi2)"
        ),
    })
}

/// Fills [`ModelConfig`] from `{arch}.*` metadata, with the same defaults
/// `ModelConfig::from_json` uses for the matching Hugging Face architecture.
pub(super) fn build_config(file: &GgufFile, spec: ArchSpec) -> Result<ModelConfig> {
    let p = spec.prefix;
    let path = &file.path;
    let key = |k: &str| format!("{p}.{k}");
    let req = |k: &str| file.require_u64(&key(k)).map(|v| v as usize);
    let hidden_size = req("embedding_length")?;
    let num_layers = req("block_count")?;
    let num_heads = req("attention.head_count")?;
    let num_kv_heads = file
        .get_u64(&key("attention.head_count_kv"))?
        .map_or(num_heads, |v| v as usize);
    let head_dim = match file.get_u64(&key("attention.key_length"))? {
        Some(v) => v as usize,
        None if num_heads > 0 => hidden_size / num_heads,
        None => 0,
    };
    ensure!(
        num_heads > 0 && num_kv_heads > 0 && num_heads % num_kv_heads == 0 && head_dim > 0,
        "{path}: heads {num_heads}, kv heads {num_kv_heads}, head_dim {head_dim}: not a valid \
         GQA shape"
    );
    let rotary_dim = file
        .get_u64(&key("rope.dimension_count"))?
        .map_or(head_dim, |v| v as usize);
    ensure!(
        rotary_dim % 2 == 0 && rotary_dim <= head_dim,
        "{path}: rope.dimension_count {rotary_dim} must be even and at most head_dim {head_dim}"
    );
    let (norm, eps_key, act) = match spec.arch {
        Arch::Phi => (
            NormKind::Layer,
            "attention.layer_norm_epsilon",
            Act::GeluTanh,
        ),
        Arch::Gemma => (
            NormKind::RmsPlusOne,
            "attention.layer_norm_rms_epsilon",
            Act::GeluTanh,
        ),
        _ => (NormKind::Rms, "attention.layer_norm_rms_epsilon", Act::Silu),
    };
    let default_eps = if spec.arch == Arch::Phi { 1e-5 } else { 1e-6 };
    let has = |t: &str| file.tensor_info(t).is_some();
    let is_phi = spec.arch == Arch::Phi;
    let mut config = ModelConfig {
        arch: spec.arch,
        vocab_size: vocab_size(file)?,
        hidden_size,
        intermediate_size: req("feed_forward_length")?,
        num_layers,
        num_heads,
        num_kv_heads,
        head_dim,
        rotary_dim,
        rope_theta: file.get_f64(&key("rope.freq_base"))?.unwrap_or(10000.0) as f32,
        rope_scaling: RopeScaling::None,
        norm,
        norm_eps: file.get_f64(&key(eps_key))?.unwrap_or(default_eps) as f32,
        act,
        gated_mlp: !is_phi,
        // Biases: whatever the file has (block 0 stands for all layers).
        qkv_bias: has("blk.0.attn_q.bias") || has("blk.0.attn_qkv.bias"),
        o_bias: has("blk.0.attn_output.bias"),
        mlp_bias: has("blk.0.ffn_up.bias"),
        lm_head_bias: has("output.bias"),
        parallel_block: is_phi,
        tie_word_embeddings: !has("output.weight"),
        embed_scale: (spec.arch == Arch::Gemma).then(|| (hidden_size as f32).sqrt()),
        bos_token_id: file
            .get_u64("tokenizer.ggml.bos_token_id")?
            .map(|v| v as u32),
        eos_token_ids: eos_token_ids(file)?,
        max_position_embeddings: file
            .get_u64(&key("context_length"))?
            .map_or(4096, |v| v as usize),
    };
    config.rope_scaling = rope_scaling(file, &config, p)?;
    Ok(config)
}

/// The embedding matrix's row count: the model's real vocabulary (the token list may be shorter
/// but never longer).
fn vocab_size(file: &GgufFile) -> Result<usize> {
    let path = &file.path;
    let embd = file
        .tensor_info("token_embd.weight")
        .ok_or_else(|| anyhow!("{path}: missing tensor `token_embd.weight`"))?;
    ensure!(
        embd.dims.len() == 2,
        "{path}: tensor `token_embd.weight` has dims {:?}, expected 2",
        embd.dims
    );
    let rows = embd.dims[1] as usize;
    if let Some(n) = file
        .get("tokenizer.ggml.tokens")
        .and_then(MetaValue::as_array)
        .map(<[_]>::len)
    {
        ensure!(
            n <= rows,
            "{path}: {n} tokens in the vocabulary but only {rows} embedding rows"
        );
    }
    Ok(rows)
}

/// EOS, then the end-of-turn/end-of-message tokens when the file names different ones: generation
/// stops at any of them.
fn eos_token_ids(file: &GgufFile) -> Result<Vec<u32>> {
    let mut ids: Vec<u32> = Vec::new();
    for k in [
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.eot_token_id",
        "tokenizer.ggml.eom_token_id",
    ] {
        if let Some(id) = file.get_u64(k)? {
            if !ids.contains(&(id as u32)) {
                ids.push(id as u32);
            }
        }
    }
    Ok(ids)
}

/// RoPE scaling from `{arch}.rope.scaling.*`, or (Llama 3.1+) recovered from the `rope_freqs`
/// tensor of per-frequency divisors that llama.cpp's converter writes instead.
fn rope_scaling(file: &GgufFile, config: &ModelConfig, p: &str) -> Result<RopeScaling> {
    let path = &file.path;
    if let Some(info) = file.tensor_info("rope_freqs.weight") {
        let t = file.dequantize(info)?;
        return llama3_scaling_from_factors(config, &t.data)
            .with_context(|| format!("{path}: tensor `rope_freqs.weight`"));
    }
    let ty = file
        .get_str(&format!("{p}.rope.scaling.type"))?
        .unwrap_or("none");
    let factor = file.get_f64(&format!("{p}.rope.scaling.factor"))?;
    match (ty, factor) {
        ("none", _) => Ok(RopeScaling::None),
        ("linear", Some(1.0)) => Ok(RopeScaling::None),
        ("linear", Some(f)) => Ok(RopeScaling::Linear { factor: f as f32 }),
        (other, _) => bail!("{path}: unsupported RoPE scaling {other:?} (factor {factor:?})"),
    }
}

/// Llama 3 frequency scaling, recovered from the per-pair divisors the converter bakes in.
///
/// With `s = (original_context / wavelength - low) / (high - low)` the divisor is 1 where
/// `s >= 1`, `factor` where `s <= 0`, and `1 / ((1 - s) / factor + s)` in between. `factor` is the
/// largest divisor; `s` is linear in `1 / wavelength`, so the in-between divisors fix its slope and
/// intercept, and any (low, high, original context) with that line gives the same frequencies: take
/// low = 1. The result is checked against every divisor.
fn llama3_scaling_from_factors(config: &ModelConfig, factors: &[f32]) -> Result<RopeScaling> {
    ensure!(
        factors.len() == config.rotary_dim / 2,
        "{} factors for a rotary dimension of {}",
        factors.len(),
        config.rotary_dim
    );
    let plain = ModelConfig {
        rope_scaling: RopeScaling::None,
        ..config.clone()
    }
    .rope_inv_freq();
    let factor = factors.iter().copied().fold(1.0f32, f32::max) as f64;
    if factor <= 1.0 + 1e-6 {
        return Ok(RopeScaling::None);
    }
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-4 * b.abs().max(1.0);
    // (1 / wavelength, s) for every pair, classified by its divisor.
    let mut low_x = Vec::new();
    let mut high_x = Vec::new();
    let mut medium = Vec::new();
    for (&f, &inv) in factors.iter().zip(&plain) {
        let x = inv as f64 / (2.0 * std::f64::consts::PI);
        let f = f as f64;
        if close(f, 1.0) {
            high_x.push(x);
        } else if close(f, factor) {
            low_x.push(x);
        } else {
            medium.push((x, (1.0 / f - 1.0 / factor) / (1.0 - 1.0 / factor)));
        }
    }
    if high_x.is_empty() && medium.is_empty() {
        // Every frequency divided alike: plain linear scaling.
        return Ok(RopeScaling::Linear {
            factor: factor as f32,
        });
    }
    let low_edge = low_x.iter().copied().reduce(f64::max).map(|x| (x, 0.0));
    let high_edge = high_x.iter().copied().reduce(f64::min).map(|x| (x, 1.0));
    let points: Vec<(f64, f64)> = match medium.len() {
        0 | 1 => low_edge
            .into_iter()
            .chain(medium)
            .chain(high_edge)
            .take(2)
            .collect(),
        _ => medium,
    };
    let (slope, intercept) = fit_line(&points).ok_or_else(|| {
        anyhow!("cannot recover Llama 3 RoPE scaling from the per-frequency factors {factors:?}")
    })?;
    // s = slope * x + intercept = (orig / (high - low)) x - low / (high - low), with low = 1.
    let (a, b) = (slope, -intercept);
    ensure!(
        a > 0.0 && b > 0.0,
        "per-frequency RoPE factors {factors:?} do not follow Llama 3 scaling"
    );
    let scaling = RopeScaling::Llama3 {
        factor: factor as f32,
        low_freq_factor: 1.0,
        high_freq_factor: (1.0 + 1.0 / b) as f32,
        original_max_position_embeddings: (a / b) as f32,
    };
    let scaled = ModelConfig {
        rope_scaling: scaling,
        ..config.clone()
    }
    .rope_inv_freq();
    let matches = plain
        .iter()
        .zip(&scaled)
        .zip(factors)
        .all(|((&p, &s), &f)| close((p / s) as f64, f as f64));
    ensure!(
        matches,
        "per-frequency RoPE factors {factors:?} do not follow Llama 3 scaling"
    );
    Ok(scaling)
}

/// Least-squares line through at least two points with distinct x.
fn fit_line(points: &[(f64, f64)]) -> Option<(f64, f64)> {
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    let (sx, sy) = points
        .iter()
        .fold((0.0, 0.0), |(a, b), &(x, y)| (a + x, b + y));
    let (mx, my) = (sx / n, sy / n);
    let sxx: f64 = points.iter().map(|&(x, _)| (x - mx) * (x - mx)).sum();
    let sxy: f64 = points.iter().map(|&(x, y)| (x - mx) * (y - my)).sum();
    if sxx <= 0.0 {
        return None;
    }
    let slope = sxy / sxx;
    Some((slope, my - slope * mx))
}
