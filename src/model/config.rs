//! Model hyperparameters, parsed from a Hugging Face `config.json` (classic and `rope_parameters`
//! forms) or filled in from GGUF metadata.

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Mistral,
    Qwen2,
    Gemma,
    Phi,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormKind {
    /// `x / rms(x) * w`
    Rms,
    /// Gemma: `x / rms(x) * (1 + w)`
    RmsPlusOne,
    /// Phi-2: LayerNorm with weight and bias.
    Layer,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    Silu,
    /// `gelu_pytorch_tanh`, `gelu_new`, `gelu_fast`: the tanh approximation.
    GeluTanh,
    /// `gelu`: the exact erf form.
    Gelu,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RopeScaling {
    None,
    Linear {
        factor: f32,
    },
    Llama3 {
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        original_max_position_embeddings: f32,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub arch: Arch,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    /// Channels of each head that RoPE rotates (Phi-2: partial rotary).
    pub rotary_dim: usize,
    pub rope_theta: f32,
    pub rope_scaling: RopeScaling,
    pub norm: NormKind,
    pub norm_eps: f32,
    pub act: Act,
    /// Gated MLP (gate/up/down) versus Phi's plain fc1 -> act -> fc2.
    pub gated_mlp: bool,
    pub qkv_bias: bool,
    pub o_bias: bool,
    pub mlp_bias: bool,
    pub lm_head_bias: bool,
    /// Phi-2: attention and MLP read the same normed input and add to the residual together.
    pub parallel_block: bool,
    pub tie_word_embeddings: bool,
    /// Gemma multiplies embeddings by sqrt(hidden_size).
    pub embed_scale: Option<f32>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    pub max_position_embeddings: usize,
}

fn get_usize(v: &Value, key: &str) -> Option<usize> {
    v.get(key).and_then(Value::as_u64).map(|x| x as usize)
}

fn get_f32(v: &Value, key: &str) -> Option<f32> {
    v.get(key).and_then(Value::as_f64).map(|x| x as f32)
}

fn token_ids(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64().map(|x| x as u32))
            .collect(),
        _ => vec![],
    }
}

pub fn parse_act(name: &str) -> Result<Act> {
    Ok(match name {
        "silu" | "swish" => Act::Silu,
        "gelu_pytorch_tanh" | "gelu_new" | "gelu_fast" | "gelu_tanh" => Act::GeluTanh,
        "gelu" => Act::Gelu,
        other => bail!("unsupported activation function {other:?}"),
    })
}

impl ModelConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let v: Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: not valid JSON", path.display()))?;
        Self::from_json(&v).with_context(|| format!("{}: unusable model config", path.display()))
    }

    pub fn from_json(v: &Value) -> Result<Self> {
        let arch_name = v
            .get("architectures")
            .and_then(|a| a.get(0))
            .and_then(Value::as_str)
            .or_else(|| v.get("model_type").and_then(Value::as_str))
            .ok_or_else(|| anyhow!("no `architectures` or `model_type` key"))?;
        let arch = match arch_name {
            "LlamaForCausalLM" | "llama" => Arch::Llama,
            "MistralForCausalLM" | "mistral" => Arch::Mistral,
            "Qwen2ForCausalLM" | "qwen2" => Arch::Qwen2,
            "GemmaForCausalLM" | "gemma" => Arch::Gemma,
            "PhiForCausalLM" | "phi" => Arch::Phi,
            other => bail!(
                "unknown architecture {other:?} (supported: LlamaForCausalLM, MistralForCausalLM, \
                 Qwen2ForCausalLM, GemmaForCausalLM, PhiForCausalLM)"
            ),
        };
        let req = |k: &str| get_usize(v, k).ok_or_else(|| anyhow!("missing integer key `{k}`"));
        let hidden_size = req("hidden_size")?;
        let num_heads = req("num_attention_heads")?;
        let num_layers = req("num_hidden_layers")?;
        let num_kv_heads = get_usize(v, "num_key_value_heads").unwrap_or(num_heads);
        let head_dim = match v.get("head_dim") {
            Some(Value::Number(n)) => n.as_u64().unwrap_or(0) as usize,
            _ => hidden_size / num_heads,
        };
        if num_heads == 0 || num_kv_heads == 0 || num_heads % num_kv_heads != 0 || head_dim == 0 {
            bail!("heads {num_heads}, kv heads {num_kv_heads}, head_dim {head_dim}: not a valid GQA shape");
        }
        // RoPE: the classic top-level keys, or the newer nested `rope_parameters`.
        let rope_params = v.get("rope_parameters").filter(|x| x.is_object());
        let rope_src = rope_params.unwrap_or(v);
        let rope_theta = get_f32(rope_src, "rope_theta")
            .or_else(|| get_f32(v, "rope_theta"))
            .unwrap_or(10000.0);
        let partial = get_f32(rope_src, "partial_rotary_factor")
            .or_else(|| get_f32(v, "partial_rotary_factor"))
            .unwrap_or(1.0);
        let rotary_dim = ((head_dim as f32) * partial) as usize;
        if !rotary_dim.is_multiple_of(2) || rotary_dim > head_dim {
            bail!("rotary dimension {rotary_dim} (head_dim {head_dim} x {partial}) must be even");
        }
        let scaling_obj = v
            .get("rope_scaling")
            .filter(|x| x.is_object())
            .or(rope_params);
        let rope_scaling = match scaling_obj {
            None => RopeScaling::None,
            Some(s) => {
                let ty = s
                    .get("rope_type")
                    .or_else(|| s.get("type"))
                    .and_then(Value::as_str)
                    .unwrap_or("default");
                match ty {
                    "default" => RopeScaling::None,
                    "linear" => RopeScaling::Linear {
                        factor: get_f32(s, "factor")
                            .ok_or_else(|| anyhow!("rope_scaling: no factor"))?,
                    },
                    "llama3" => RopeScaling::Llama3 {
                        factor: get_f32(s, "factor")
                            .ok_or_else(|| anyhow!("llama3 rope: no factor"))?,
                        low_freq_factor: get_f32(s, "low_freq_factor").unwrap_or(1.0),
                        high_freq_factor: get_f32(s, "high_freq_factor").unwrap_or(4.0),
                        original_max_position_embeddings: get_f32(
                            s,
                            "original_max_position_embeddings",
                        )
                        .unwrap_or(8192.0),
                    },
                    other => bail!("unsupported rope scaling type {other:?}"),
                }
            }
        };
        let act_name = v
            .get("hidden_activation")
            .and_then(Value::as_str)
            .or_else(|| v.get("hidden_act").and_then(Value::as_str))
            .unwrap_or("silu");
        let act = parse_act(act_name)?;
        let (norm, norm_eps) = match arch {
            Arch::Phi => (
                NormKind::Layer,
                get_f32(v, "layer_norm_eps").unwrap_or(1e-5),
            ),
            Arch::Gemma => (
                NormKind::RmsPlusOne,
                get_f32(v, "rms_norm_eps").unwrap_or(1e-6),
            ),
            _ => (NormKind::Rms, get_f32(v, "rms_norm_eps").unwrap_or(1e-6)),
        };
        let attention_bias = v
            .get("attention_bias")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let mlp_bias = v.get("mlp_bias").and_then(Value::as_bool).unwrap_or(false);
        if arch == Arch::Phi && v.get("qk_layernorm").and_then(Value::as_bool) == Some(true) {
            bail!("Phi with qk_layernorm=true is not supported");
        }
        let is_phi = arch == Arch::Phi;
        let tie_default = matches!(arch, Arch::Gemma);
        Ok(ModelConfig {
            arch,
            vocab_size: req("vocab_size")?,
            hidden_size,
            intermediate_size: req("intermediate_size")?,
            num_layers,
            num_heads,
            num_kv_heads,
            head_dim,
            rotary_dim,
            rope_theta,
            rope_scaling,
            norm,
            norm_eps,
            act,
            gated_mlp: !is_phi,
            qkv_bias: is_phi || arch == Arch::Qwen2 || attention_bias,
            o_bias: is_phi || attention_bias,
            mlp_bias: is_phi || mlp_bias,
            lm_head_bias: is_phi,
            parallel_block: is_phi,
            tie_word_embeddings: v
                .get("tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(tie_default),
            embed_scale: (arch == Arch::Gemma).then(|| (hidden_size as f32).sqrt()),
            bos_token_id: token_ids(v.get("bos_token_id")).first().copied(),
            eos_token_ids: token_ids(v.get("eos_token_id")),
            max_position_embeddings: get_usize(v, "max_position_embeddings").unwrap_or(4096),
        })
    }

    pub fn q_dim(&self) -> usize {
        self.num_heads * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }

    /// Per-pair inverse frequencies for RoPE, with llama3/linear scaling applied.
    pub fn rope_inv_freq(&self) -> Vec<f32> {
        let half = self.rotary_dim / 2;
        (0..half)
            .map(|i| {
                let base =
                    1.0 / (self.rope_theta as f64).powf((2 * i) as f64 / self.rotary_dim as f64);
                let f = match self.rope_scaling {
                    RopeScaling::None => base,
                    RopeScaling::Linear { factor } => base / factor as f64,
                    RopeScaling::Llama3 {
                        factor,
                        low_freq_factor,
                        high_freq_factor,
                        original_max_position_embeddings,
                    } => {
                        let (factor, lo, hi, omax) = (
                            factor as f64,
                            low_freq_factor as f64,
                            high_freq_factor as f64,
                            original_max_position_embeddings as f64,
                        );
                        let wavelen = 2.0 * std::f64::consts::PI / base;
                        if wavelen < omax / hi {
                            base
                        } else if wavelen > omax / lo {
                            base / factor
                        } else {
                            let smooth = (omax / wavelen - lo) / (hi - lo);
                            (1.0 - smooth) * base / factor + smooth * base
                        }
                    }
                };
                f as f32
            })
            .collect()
    }
}
