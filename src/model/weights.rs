//! Frozen base weights, named as Hugging Face names them, on a backend.

use super::config::{Act, Arch, ModelConfig, NormKind};
use super::tensors::TensorMap;
use crate::backend::{Activation, Backend, Norm};
use anyhow::Result;

/// The linear layers an adapter can target, in a fixed order per block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

pub const ALL_TARGETS: [Target; 7] = [
    Target::Q,
    Target::K,
    Target::V,
    Target::O,
    Target::Gate,
    Target::Up,
    Target::Down,
];

impl Target {
    /// The module path inside a block, e.g. `self_attn.q_proj` or Phi's `mlp.fc1`.
    pub fn module(self, arch: Arch) -> &'static str {
        let phi = arch == Arch::Phi;
        match self {
            Target::Q => "self_attn.q_proj",
            Target::K => "self_attn.k_proj",
            Target::V => "self_attn.v_proj",
            Target::O if phi => "self_attn.dense",
            Target::O => "self_attn.o_proj",
            Target::Gate => "mlp.gate_proj",
            Target::Up if phi => "mlp.fc1",
            Target::Up => "mlp.up_proj",
            Target::Down if phi => "mlp.fc2",
            Target::Down => "mlp.down_proj",
        }
    }

    /// The short module name (`q_proj`, `dense`, `fc1`, …) as PEFT's `target_modules` lists it.
    pub fn short(self, arch: Arch) -> &'static str {
        let m = self.module(arch);
        &m[m.find('.').map_or(0, |i| i + 1)..]
    }

    pub fn from_short(name: &str, arch: Arch) -> Option<Target> {
        ALL_TARGETS
            .into_iter()
            .find(|t| t.short(arch) == name && (arch != Arch::Phi || *t != Target::Gate))
    }

    /// (in, out) features of this linear.
    pub fn dims(self, c: &ModelConfig) -> (usize, usize) {
        let (d, i) = (c.hidden_size, c.intermediate_size);
        match self {
            Target::Q => (d, c.q_dim()),
            Target::K | Target::V => (d, c.kv_dim()),
            Target::O => (c.q_dim(), d),
            Target::Gate | Target::Up => (d, i),
            Target::Down => (i, d),
        }
    }
}

pub struct Linear<B: Backend> {
    /// `[out_dim, in_dim]`, held as the backend chose (compact forms included).
    pub w: B::Weight,
    pub b: Option<B::Buf>,
    pub in_dim: usize,
    pub out_dim: usize,
}

pub struct NormW<B: Backend> {
    pub w: B::Buf,
    pub b: Option<B::Buf>,
}

pub struct Block<B: Backend> {
    pub attn_norm: NormW<B>,
    /// None for Phi's parallel block (one norm feeds both branches).
    pub mlp_norm: Option<NormW<B>>,
    pub q: Linear<B>,
    pub k: Linear<B>,
    pub v: Linear<B>,
    pub o: Linear<B>,
    pub gate: Option<Linear<B>>,
    pub up: Linear<B>,
    pub down: Linear<B>,
}

impl<B: Backend> Block<B> {
    pub fn linear(&self, t: Target) -> &Linear<B> {
        match t {
            Target::Q => &self.q,
            Target::K => &self.k,
            Target::V => &self.v,
            Target::O => &self.o,
            Target::Gate => self.gate.as_ref().expect("gate exists only for gated MLPs"),
            Target::Up => &self.up,
            Target::Down => &self.down,
        }
    }
}

pub struct Weights<B: Backend> {
    pub cfg: ModelConfig,
    /// `[vocab, hidden]`: the gather table of the embedding and, when tied, the LM head's weight
    /// (one copy serves both).
    pub embed: B::Weight,
    pub blocks: Vec<Block<B>>,
    pub final_norm: NormW<B>,
    /// None when tied to the embeddings.
    pub lm_head: Option<Linear<B>>,
    pub inv_freq: Vec<f32>,
}

impl<B: Backend> Weights<B> {
    pub fn norm_kind(&self) -> Norm {
        match self.cfg.norm {
            NormKind::Rms => Norm::Rms,
            NormKind::RmsPlusOne => Norm::RmsPlusOne,
            NormKind::Layer => Norm::Layer,
        }
    }

    pub fn activation(&self) -> Activation {
        match self.cfg.act {
            Act::Silu => Activation::Silu,
            Act::GeluTanh => Activation::GeluTanh,
            Act::Gelu => Activation::Gelu,
        }
    }

    pub fn lm_head_w(&self) -> &B::Weight {
        self.lm_head.as_ref().map_or(&self.embed, |l| &l.w)
    }

    /// Builds the model from a tensor map, checking every name and shape against the config.
    pub fn from_tensors(be: &B, cfg: ModelConfig, mut t: TensorMap) -> Result<Self> {
        let c = &cfg;
        let (d, v) = (c.hidden_size, c.vocab_size);
        let embed = be.upload_weight(t.take_weight("model.embed_tokens.weight", v, d)?);
        let layer_norm = c.norm == NormKind::Layer;
        let norm = |t: &mut TensorMap, name: &str| -> Result<NormW<B>> {
            let w = be.upload(&t.take(&format!("{name}.weight"), &[d])?);
            let b = if layer_norm {
                Some(be.upload(&t.take(&format!("{name}.bias"), &[d])?))
            } else {
                None
            };
            Ok(NormW { w, b })
        };
        let linear =
            |t: &mut TensorMap, name: &str, i: usize, o: usize, bias: bool| -> Result<Linear<B>> {
                let w = be.upload_weight(t.take_weight(&format!("{name}.weight"), o, i)?);
                let b = if bias {
                    Some(be.upload(&t.take(&format!("{name}.bias"), &[o])?))
                } else {
                    t.take_opt(&format!("{name}.bias"), &[o])?
                        .map(|b| be.upload(&b))
                };
                Ok(Linear {
                    w,
                    b,
                    in_dim: i,
                    out_dim: o,
                })
            };
        let mut blocks = Vec::with_capacity(c.num_layers);
        for l in 0..c.num_layers {
            let p = format!("model.layers.{l}");
            let lin = |t: &mut TensorMap, tg: Target, bias: bool| {
                let (i, o) = tg.dims(c);
                linear(t, &format!("{p}.{}", tg.module(c.arch)), i, o, bias)
            };
            blocks.push(Block {
                attn_norm: norm(&mut t, &format!("{p}.input_layernorm"))?,
                mlp_norm: if c.parallel_block {
                    None
                } else {
                    Some(norm(&mut t, &format!("{p}.post_attention_layernorm"))?)
                },
                q: lin(&mut t, Target::Q, c.qkv_bias)?,
                k: lin(&mut t, Target::K, c.qkv_bias)?,
                v: lin(&mut t, Target::V, c.qkv_bias)?,
                o: lin(&mut t, Target::O, c.o_bias)?,
                gate: if c.gated_mlp {
                    Some(lin(&mut t, Target::Gate, c.mlp_bias)?)
                } else {
                    None
                },
                up: lin(&mut t, Target::Up, c.mlp_bias)?,
                down: lin(&mut t, Target::Down, c.mlp_bias)?,
            });
        }
        let final_name = if c.arch == Arch::Phi {
            "model.final_layernorm"
        } else {
            "model.norm"
        };
        let final_norm = norm(&mut t, final_name)?;
        let lm_head = if t.contains("lm_head.weight") && !c.tie_word_embeddings {
            Some(linear(&mut t, "lm_head", d, v, c.lm_head_bias)?)
        } else if c.tie_word_embeddings {
            None
        } else {
            anyhow::bail!(
                "{}: missing tensor `lm_head.weight` (config says untied)",
                t.source
            );
        };
        let inv_freq = cfg.rope_inv_freq();
        Ok(Weights {
            cfg,
            embed,
            blocks,
            final_norm,
            lm_head,
            inv_freq,
        })
    }
}
