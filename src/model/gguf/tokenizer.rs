//! Rebuilds a Hugging Face [`Tokenizer`] from GGUF `tokenizer.ggml.*` metadata, so that the ids
//! match what the model's own `tokenizer.json` gives.
//!
//! Two vocabulary kinds are supported:
//! - `gpt2`: byte-level BPE (tokens, merges, and a pre-tokenizer chosen by `tokenizer.ggml.pre`,
//!   mirroring llama.cpp's table of pre-tokenizer regexes with the Hugging Face pre-tokenizers
//!   they stand for);
//! - `llama`: SentencePiece BPE with byte fallback; merges are derived from the token scores the
//!   way `transformers` converts SentencePiece models.

use super::format::MetaValue;
use anyhow::{anyhow, bail, ensure, Context, Result};
use std::collections::{BTreeMap, HashMap};
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence, NFC};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, NormalizerWrapper, SplitDelimiterBehavior, Tokenizer};

/// `tokenizer.ggml.token_type` values (llama.cpp's `llama_token_type`).
const TYPE_NORMAL: i64 = 1;
const TYPE_UNKNOWN: i64 = 2;
const TYPE_CONTROL: i64 = 3;
const TYPE_USER_DEFINED: i64 = 4;

/// GPT-2's split regex (what `ByteLevel(use_regex=true)` applies).
const GPT2_FAMILY: &[&str] = &[
    "default",
    "gpt-2",
    "phi-2",
    "mpt",
    "olmo",
    "jais",
    "trillion",
    "jina-es",
    "jina-de",
    "jina-v1-en",
    "jina-v2-es",
    "jina-v2-de",
    "jina-v2-code",
    "roberta-bpe",
    "gigachat",
    "a.x-4.0",
    "mellum",
    "exaone4",
    "granite-docling",
];
/// Every digit split off on its own, then GPT-2's regex (StarCoder's tokenizer, and SmolLM's,
/// whose `tokenizer.json` has `Digits(individual_digits=true)` + `ByteLevel`).
const DIGITS_GPT2_FAMILY: &[&str] = &[
    "smollm",
    "starcoder",
    "refact",
    "command-r",
    "codeshell",
    "exaone",
    "minerva-7b",
];
/// Llama 3's regex; the first group also skips merges for whole-word vocabulary hits
/// (`ignore_merges`, as in Llama 3's tokenizer.json) and adds BOS by default (llama.cpp).
const LLAMA3_FAMILY: &[&str] = &[
    "llama3",
    "llama-v3",
    "llama-bpe",
    "falcon3",
    "falcon-h1",
    "pixtral",
    "midm-2.0",
    "lfm2",
];
const LLAMA3_REGEX_ONLY: &[&str] = &["dbrx", "smaug-bpe"];
/// Qwen2's regex; the first group also normalizes to NFC first, as Qwen2's tokenizer.json does.
const QWEN2_FAMILY: &[&str] = &["qwen2", "deepseek-r1-qwen"];
const QWEN2_REGEX_ONLY: &[&str] = &["kormo", "stablelm2", "megrez", "hunyuan"];
/// The regexes of the Hugging Face `tokenizer.json` files (llama.cpp spells `(?i:...)` out).
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The vocabulary arrays shared by both tokenizer kinds.
struct GgufVocab<'a> {
    tokens: Vec<&'a str>,
    types: Vec<i64>,
    meta: &'a BTreeMap<String, MetaValue>,
}

impl<'a> GgufVocab<'a> {
    fn read(meta: &'a BTreeMap<String, MetaValue>) -> Result<Self> {
        let tokens = str_array(meta, "tokenizer.ggml.tokens")?
            .ok_or_else(|| anyhow!("missing metadata key `tokenizer.ggml.tokens`"))?;
        ensure!(!tokens.is_empty(), "`tokenizer.ggml.tokens` is empty");
        ensure!(
            tokens.len() <= u32::MAX as usize,
            "`tokenizer.ggml.tokens` has too many tokens"
        );
        let types = match meta.get("tokenizer.ggml.token_type") {
            None => vec![TYPE_NORMAL; tokens.len()],
            Some(v) => v
                .as_array()
                .and_then(|a| a.iter().map(MetaValue::as_i64).collect::<Option<Vec<_>>>())
                .filter(|t| t.len() == tokens.len())
                .ok_or_else(|| {
                    anyhow!(
                        "`tokenizer.ggml.token_type` is not an integer array of {} entries",
                        tokens.len()
                    )
                })?,
        };
        Ok(GgufVocab {
            tokens,
            types,
            meta,
        })
    }

    fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.meta.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| anyhow!("metadata `{key}` = {} is not a boolean", v.summary())),
        }
    }

    /// A token id from the metadata (`tokenizer.ggml.bos_token_id`, ...), checked to exist.
    fn token_id(&self, key: &str) -> Result<Option<u32>> {
        match self.meta.get(key) {
            None => Ok(None),
            Some(v) => {
                let id = v.as_u64().filter(|&id| id < self.tokens.len() as u64);
                id.map(|id| Some(id as u32))
                    .ok_or_else(|| anyhow!("metadata `{key}` = {} is not a token id", v.summary()))
            }
        }
    }

    fn vocab_map(&self) -> Vocab {
        self.tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.to_string(), i as u32))
            .collect()
    }

    /// Control (and unknown) tokens become special added tokens, user-defined ones plain added
    /// tokens: either way the text `<|im_start|>` encodes to its single id, as in Hugging Face.
    fn added_tokens(&self) -> (Vec<AddedToken>, Vec<AddedToken>) {
        let mut special = Vec::new();
        let mut user = Vec::new();
        for (t, &ty) in self.tokens.iter().zip(&self.types) {
            match ty {
                TYPE_CONTROL | TYPE_UNKNOWN => {
                    special.push(AddedToken::from(*t, true).normalized(false))
                }
                TYPE_USER_DEFINED => user.push(AddedToken::from(*t, false).normalized(false)),
                _ => {}
            }
        }
        (special, user)
    }
}

fn str_array<'a>(meta: &'a BTreeMap<String, MetaValue>, key: &str) -> Result<Option<Vec<&'a str>>> {
    match meta.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_array()
            .and_then(|a| a.iter().map(MetaValue::as_str).collect::<Option<Vec<_>>>())
            .map(Some)
            .ok_or_else(|| anyhow!("metadata `{key}` is not an array of strings")),
    }
}

/// Builds the tokenizer described by GGUF metadata (`tokenizer.ggml.*`).
pub fn tokenizer_from_metadata(meta: &BTreeMap<String, MetaValue>) -> Result<Tokenizer> {
    let model = match meta.get("tokenizer.ggml.model") {
        Some(MetaValue::Str(s)) => s.as_str(),
        Some(v) => bail!(
            "metadata `tokenizer.ggml.model` = {} is not a string",
            v.summary()
        ),
        None => bail!("missing metadata key `tokenizer.ggml.model`"),
    };
    let vocab = GgufVocab::read(meta)?;
    let (mut tokenizer, default_add_bos) = match model {
        "gpt2" => byte_level_bpe(&vocab)?,
        "llama" => (sentencepiece_bpe(&vocab)?, true),
        other => bail!("unsupported tokenizer model {other:?} (supported: gpt2, llama)"),
    };
    let (special, user) = vocab.added_tokens();
    tokenizer.add_special_tokens(&special);
    tokenizer.add_tokens(&user);
    let add_bos = vocab.bool_or("tokenizer.ggml.add_bos_token", default_add_bos)?;
    let add_eos = vocab.bool_or("tokenizer.ggml.add_eos_token", false)?;
    let bos = if add_bos {
        vocab.token_id("tokenizer.ggml.bos_token_id")?
    } else {
        None
    };
    let eos = if add_eos {
        vocab.token_id("tokenizer.ggml.eos_token_id")?
    } else {
        None
    };
    if bos.is_some() || eos.is_some() {
        tokenizer.with_post_processor(Some(bos_eos_template(&vocab, bos, eos)?));
    } else if model == "gpt2" {
        // What byte-level `tokenizer.json` files carry; it only adjusts offsets.
        tokenizer.with_post_processor(Some(ByteLevel::new(true, false, true)));
    }
    Ok(tokenizer)
}

/// Byte-level BPE; returns whether BOS is added by default for this pre-tokenizer (llama.cpp: the
/// Llama-3 family), which `tokenizer.ggml.add_bos_token` overrides.
fn byte_level_bpe(vocab: &GgufVocab) -> Result<(Tokenizer, bool)> {
    let merges = str_array(vocab.meta, "tokenizer.ggml.merges")?
        .ok_or_else(|| anyhow!("missing metadata key `tokenizer.ggml.merges`"))?
        .into_iter()
        .map(split_merge)
        .collect::<Result<Vec<_>>>()?;
    let pre = match vocab.meta.get("tokenizer.ggml.pre") {
        None => "default",
        Some(v) => v.as_str().ok_or_else(|| {
            anyhow!(
                "metadata `tokenizer.ggml.pre` = {} is not a string",
                v.summary()
            )
        })?,
    };
    let llama3 = LLAMA3_FAMILY.contains(&pre);
    let bpe = BPE::builder()
        .vocab_and_merges(vocab.vocab_map(), merges)
        // Llama 3's tokenizer.json takes whole-word vocabulary hits before merging.
        .ignore_merges(llama3)
        .build()
        .map_err(|e| anyhow!("building the BPE model: {e}"))?;
    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer.with_pre_tokenizer(Some(byte_level_pre_tokenizer(pre)?));
    if QWEN2_FAMILY.contains(&pre) {
        tokenizer.with_normalizer(Some(NFC));
    }
    tokenizer.with_decoder(Some(ByteLevel::default()));
    Ok((tokenizer, llama3))
}

/// A merge rule "left right"; like llama.cpp, the separator is the first space after the first
/// character (byte-level tokens never contain a raw space).
fn split_merge(rule: &str) -> Result<(String, String)> {
    rule.char_indices()
        .skip(1)
        .find(|&(_, c)| c == ' ')
        .map(|(i, _)| (rule[..i].to_string(), rule[i + 1..].to_string()))
        .ok_or_else(|| anyhow!("merge rule {rule:?} has no space separating two tokens"))
}

/// The Hugging Face pre-tokenizer matching llama.cpp's `tokenizer.ggml.pre` name.
fn byte_level_pre_tokenizer(pre: &str) -> Result<PreTokenizerWrapper> {
    let split = |regex: &str| -> Result<PreTokenizerWrapper> {
        let split = Split::new(
            SplitPattern::Regex(regex.to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| anyhow!("compiling the pre-tokenizer regex: {e}"))?;
        Ok(PreSequence::new(vec![
            split.into(),
            ByteLevel::new(false, true, false).into(),
        ])
        .into())
    };
    if GPT2_FAMILY.contains(&pre) {
        Ok(ByteLevel::new(false, true, true).into())
    } else if DIGITS_GPT2_FAMILY.contains(&pre) {
        Ok(PreSequence::new(vec![
            Digits::new(true).into(),
            ByteLevel::new(false, true, true).into(),
        ])
        .into())
    } else if LLAMA3_FAMILY.contains(&pre) || LLAMA3_REGEX_ONLY.contains(&pre) {
        split(LLAMA3_REGEX)
    } else if QWEN2_FAMILY.contains(&pre) || QWEN2_REGEX_ONLY.contains(&pre) {
        split(QWEN2_REGEX)
    } else {
        bail!(
            "unsupported pre-tokenizer `tokenizer.ggml.pre` = {pre:?} (supported: {})",
            [
                GPT2_FAMILY,
                DIGITS_GPT2_FAMILY,
                LLAMA3_FAMILY,
                LLAMA3_REGEX_ONLY,
                QWEN2_FAMILY,
                QWEN2_REGEX_ONLY
            ]
            .concat()
            .join(", ")
        )
    }
}

/// SentencePiece BPE as `transformers` converts it (legacy Llama layout): spaces become `▁`, a
/// `▁` is prepended unless `tokenizer.ggml.add_space_prefix` is false, unknown characters fall
/// back to `<0xXX>` byte tokens.
fn sentencepiece_bpe(vocab: &GgufVocab) -> Result<Tokenizer> {
    let scores = vocab
        .meta
        .get("tokenizer.ggml.scores")
        .and_then(MetaValue::as_array)
        .and_then(|a| a.iter().map(MetaValue::as_f64).collect::<Option<Vec<_>>>())
        .filter(|s| s.len() == vocab.tokens.len())
        .ok_or_else(|| {
            anyhow!(
                "`tokenizer.ggml.scores` must be a float array of {} entries",
                vocab.tokens.len()
            )
        })?;
    let add_prefix = vocab.bool_or("tokenizer.ggml.add_space_prefix", true)?;
    let mut builder = BPE::builder()
        .vocab_and_merges(
            vocab.vocab_map(),
            sentencepiece_merges(&vocab.tokens, &scores),
        )
        .fuse_unk(true)
        .byte_fallback(true);
    if let Some(unk) = vocab.token_id("tokenizer.ggml.unknown_token_id")? {
        builder = builder.unk_token(vocab.tokens[unk as usize].to_string());
    }
    let bpe = builder
        .build()
        .map_err(|e| anyhow!("building the BPE model: {e}"))?;
    let mut tokenizer = Tokenizer::new(bpe);
    let space = Replace::new(" ", "▁").map_err(|e| anyhow!("{e}"))?;
    let mut normalizers: Vec<NormalizerWrapper> = Vec::new();
    if add_prefix {
        normalizers.push(Prepend::new("▁".to_string()).into());
    }
    normalizers.push(space.into());
    tokenizer.with_normalizer(Some(NormalizerSequence::new(normalizers)));
    let mut decoders: Vec<DecoderWrapper> = vec![
        Replace::new("▁", " ").map_err(|e| anyhow!("{e}"))?.into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ];
    if add_prefix {
        decoders.push(Strip::new(' ', 1, 0).into());
    }
    tokenizer.with_decoder(Some(DecoderSequence::new(decoders)));
    Ok(tokenizer)
}

/// Merges implied by SentencePiece scores (transformers' `SentencePieceExtractor`): every split
/// of a token into two tokens is a merge, ranked by the merged token's score (higher first),
/// ties by the ids of the two halves.
fn sentencepiece_merges(tokens: &[&str], scores: &[f64]) -> Vec<(String, String)> {
    let ids: HashMap<&str, usize> = tokens.iter().enumerate().map(|(i, t)| (*t, i)).collect();
    let mut merges: Vec<(f64, usize, usize, usize)> = Vec::new();
    for (merged, &t) in tokens.iter().enumerate() {
        let mut local: Vec<(usize, usize)> = t
            .char_indices()
            .skip(1)
            .filter_map(|(i, _)| Some((*ids.get(&t[..i])?, *ids.get(&t[i..])?)))
            .collect();
        local.sort_unstable();
        merges.extend(
            local
                .into_iter()
                .map(|(l, r)| (scores[merged], merged, l, r)),
        );
    }
    // Stable: equal scores keep vocabulary order.
    merges.sort_by(|a, b| b.0.total_cmp(&a.0));
    merges
        .into_iter()
        .map(|(_, _, l, r)| (tokens[l].to_string(), tokens[r].to_string()))
        .collect()
}

/// `[BOS] $A [EOS]` (pairs: both sequences wrapped), as Llama's fast tokenizer does.
fn bos_eos_template(
    vocab: &GgufVocab,
    bos: Option<u32>,
    eos: Option<u32>,
) -> Result<TemplateProcessing> {
    let name = |id: u32| vocab.tokens[id as usize].to_string();
    let mut single: Vec<String> = Vec::new();
    let mut pair: Vec<String> = Vec::new();
    for (seq, type_id) in [("$A", 0), ("$B", 1)] {
        let mut part = Vec::new();
        if let Some(b) = bos {
            part.push(format!("{}:{type_id}", name(b)));
        }
        part.push(format!("{seq}:{type_id}"));
        if let Some(e) = eos {
            part.push(format!("{}:{type_id}", name(e)));
        }
        if type_id == 0 {
            single = part.clone();
        }
        pair.extend(part);
    }
    let specials: Vec<(String, u32)> = bos
        .into_iter()
        .chain(eos)
        .map(|id| (name(id), id))
        .collect();
    TemplateProcessing::builder()
        .try_single(single)
        .map_err(|e| anyhow!("BOS/EOS template: {e}"))?
        .try_pair(pair)
        .map_err(|e| anyhow!("BOS/EOS template: {e}"))?
        .special_tokens(specials)
        .build()
        .context("BOS/EOS template")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(entries: Vec<(&str, MetaValue)>) -> BTreeMap<String, MetaValue> {
        entries
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect()
    }

    fn strs(v: &[&str]) -> MetaValue {
        MetaValue::Array(v.iter().map(|s| MetaValue::Str(s.to_string())).collect())
    }

    #[test]
    fn merge_rules_split_at_first_inner_space() {
        assert_eq!(split_merge("Ġ t").unwrap(), ("Ġ".into(), "t".into()));
        assert_eq!(split_merge("é x").unwrap(), ("é".into(), "x".into()));
        assert!(split_merge("ab").is_err());
    }

    #[test]
    fn sentencepiece_merges_follow_scores() {
        let tokens = ["a", "b", "c", "ab", "bc", "abc"];
        let scores = [0.0, 0.0, 0.0, -2.0, -1.0, -3.0];
        let m = sentencepiece_merges(&tokens, &scores);
        let m: Vec<String> = m.iter().map(|(l, r)| format!("{l} {r}")).collect();
        assert_eq!(m, ["b c", "a b", "a bc", "ab c"]);
    }

    #[test]
    fn tiny_sentencepiece_tokenizer() {
        let tokens = [
            "<unk>", "<s>", "</s>", "<0x21>", "▁", "h", "i", "▁h", "hi", "▁hi",
        ];
        let scores: Vec<MetaValue> = (0..tokens.len())
            .map(|i| MetaValue::F32(-(i as f32)))
            .collect();
        let types = [2, 3, 3, 6, 1, 1, 1, 1, 1, 1].map(MetaValue::I32).to_vec();
        let m = meta(vec![
            ("tokenizer.ggml.model", MetaValue::Str("llama".into())),
            ("tokenizer.ggml.tokens", strs(&tokens)),
            ("tokenizer.ggml.scores", MetaValue::Array(scores)),
            ("tokenizer.ggml.token_type", MetaValue::Array(types)),
            ("tokenizer.ggml.bos_token_id", MetaValue::U32(1)),
            ("tokenizer.ggml.unknown_token_id", MetaValue::U32(0)),
        ]);
        let tok = tokenizer_from_metadata(&m).unwrap();
        let enc = tok.encode("hi!", true).unwrap();
        // BOS, "▁hi", byte fallback for "!".
        assert_eq!(enc.get_ids(), &[1, 9, 3]);
        assert_eq!(tok.decode(&[9, 3], true).unwrap(), "hi!");
    }

    #[test]
    fn unknown_pre_tokenizer_is_an_error() {
        let err = byte_level_pre_tokenizer("nonesuch")
            .unwrap_err()
            .to_string();
        assert!(err.contains("nonesuch") && err.contains("smollm"), "{err}");
    }
}
