//! Text generation: dual prefill, then cached decoding, streaming decoded text as it grows.

use super::engine::Engine;
use super::sample::sample;
use crate::backend::Backend;
use crate::rng::Rng;
use anyhow::Result;
use std::time::Instant;

pub struct GenOptions {
    pub max_new: usize,
    pub temperature: f32,
    pub top_p: f32,
    pub seed: u64,
    /// Stop strings: generation stops once the text contains one (the text is cut there).
    pub stops: Vec<String>,
}

pub struct GenStats {
    pub prompt_tokens: usize,
    pub new_tokens: usize,
    pub prefill_s: f64,
    pub decode_s: f64,
}

pub struct Generated {
    pub ids: Vec<u32>,
    pub text: String,
    pub stats: GenStats,
}

/// Generates after `prompt_ids`; `on_text` receives each newly decoded piece of text.
pub fn generate<B: Backend>(
    e: &Engine<B>,
    prompt_ids: &[u32],
    o: &GenOptions,
    mut on_text: impl FnMut(&str),
) -> Result<Generated> {
    let mut rng = Rng::new(o.seed);
    let t0 = Instant::now();
    let (mut cache, mut logits) = e.prefill(prompt_ids)?;
    // Room for every token the answer may have, within the model's context.
    let cfg = &e.model.weights.cfg;
    let room = o
        .max_new
        .min(cfg.max_position_embeddings.saturating_sub(cache.rows()));
    cache.reserve_rows(&e.be, room, cfg.kv_dim());
    let prefill_s = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let mut ids = Vec::new();
    let mut shown = String::new();
    // Greedy decoding takes the argmax where the logits are (one integer from a device).
    let greedy = o.temperature <= 0.0;
    let mut next = sample(&logits, o.temperature, o.top_p, &mut rng);
    while ids.len() < o.max_new {
        if e.model.is_eos(next) {
            break;
        }
        ids.push(next);
        let text = e.model.decode(&ids)?;
        // Hold back text that ends in an incomplete UTF-8 sequence (shown as U+FFFD).
        if !text.ends_with('\u{FFFD}') && text.len() > shown.len() && text.starts_with(&shown) {
            on_text(&text[shown.len()..]);
            shown = text.clone();
        }
        if let Some(cut) = o.stops.iter().filter_map(|s| text.find(s.as_str())).min() {
            shown = text[..cut].to_string();
            break;
        }
        if ids.len() == o.max_new {
            break;
        }
        next = if greedy {
            e.decode_greedy(&mut cache, next)?
        } else {
            logits = e.decode(&mut cache, next)?;
            sample(&logits, o.temperature, o.top_p, &mut rng)
        };
    }
    let full = e.model.decode(&ids)?;
    let text = match o.stops.iter().filter_map(|s| full.find(s.as_str())).min() {
        Some(cut) => full[..cut].to_string(),
        None => full,
    };
    if text.len() > shown.len() && text.starts_with(&shown) {
        on_text(&text[shown.len()..]);
    }
    let stats = GenStats {
        prompt_tokens: prompt_ids.len(),
        new_tokens: ids.len(),
        prefill_s,
        decode_s: t1.elapsed().as_secs_f64(),
    };
    Ok(Generated { ids, text, stats })
}
