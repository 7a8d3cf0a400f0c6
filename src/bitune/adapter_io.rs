//! Adapter folders in PEFT's layout: `adapter_config.json` + `adapter_model.safetensors` (set C),
//! `bidirectional/` (set B, same layout), `bitune.safetensors` (θ_K, θ_V) and
//! `bitune_config.json` (method, θ_init, base model). Each set's folder loads with PEFT's
//! `PeftModel.from_pretrained`: LoRA and DoRA (a LoRA config with `use_dora`, plus the
//! `lora_magnitude_vector` tensors) or IA3 (its own config, `ia3_l` tensors).

use super::params::{LoraSpec, ParamTable, SET_B, SET_C};
use super::peft::{is_feedforward, Peft};
use super::plan::Method;
use crate::io::atomic::write_atomic_str;
use crate::io::safetensors::write_f32;
use crate::model::config::ModelConfig;
use crate::model::tensors::{read_file_into, TensorMap};
use crate::model::weights::Target;
use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use std::path::Path;

pub const BIDIR_DIR: &str = "bidirectional";

/// What an adapter folder describes.
pub struct AdapterMeta {
    pub method: Method,
    /// Targets for every PEFT method; rank and alpha are LoRA's and DoRA's only.
    pub lora: LoraSpec,
    pub peft: Peft,
    pub theta_init: f32,
}

fn peft_config(cfg: &ModelConfig, lora: &LoraSpec, peft: Peft, base: &str) -> Value {
    let short = |ts: &mut dyn Iterator<Item = &Target>| -> Vec<&str> {
        ts.map(|t| t.short(cfg.arch)).collect()
    };
    let targets = short(&mut lora.targets.iter());
    if peft == Peft::Ia3 {
        let ff = short(&mut lora.targets.iter().filter(|t| is_feedforward(**t)));
        return json!({
            "peft_type": "IA3", "task_type": "CAUSAL_LM", "target_modules": targets,
            "feedforward_modules": ff, "fan_in_fan_out": false, "init_ia3_weights": true,
            "inference_mode": true, "modules_to_save": null, "base_model_name_or_path": base,
        });
    }
    json!({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": lora.rank, "lora_alpha": lora.alpha,
        "target_modules": targets, "lora_dropout": 0.0, "bias": "none",
        "use_dora": peft == Peft::Dora, "use_rslora": false, "fan_in_fan_out": false,
        "inference_mode": true, "init_lora_weights": true, "modules_to_save": null,
        "layers_to_transform": null, "base_model_name_or_path": base,
    })
}

fn set_tensors(
    table: &ParamTable,
    host: &[f32],
    set: usize,
) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    table
        .set_entries(set)
        .map(|e| {
            (
                e.name.clone(),
                e.shape.clone(),
                host[e.offset..e.offset + e.len()].to_vec(),
            )
        })
        .collect()
}

/// Writes the adapter folder (each file atomically).
pub fn save(
    dir: &Path,
    cfg: &ModelConfig,
    meta: &AdapterMeta,
    table: &ParamTable,
    host: &[f32],
    base: &str,
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let conf = serde_json::to_string_pretty(&peft_config(cfg, &meta.lora, table.peft, base))?;
    write_atomic_str(&dir.join("adapter_config.json"), &conf)?;
    write_f32(
        &dir.join("adapter_model.safetensors"),
        &set_tensors(table, host, SET_C),
    )?;
    if table.num_sets > 1 {
        let bd = dir.join(BIDIR_DIR);
        std::fs::create_dir_all(&bd)?;
        write_atomic_str(&bd.join("adapter_config.json"), &conf)?;
        write_f32(
            &bd.join("adapter_model.safetensors"),
            &set_tensors(table, host, SET_B),
        )?;
    }
    if meta.method != Method::Lora {
        if let Some((tk, tv)) = table.theta() {
            let n = table.num_layers;
            write_f32(
                &dir.join("bitune.safetensors"),
                &[
                    ("theta_k".into(), vec![n], host[tk..tk + n].to_vec()),
                    ("theta_v".into(), vec![n], host[tv..tv + n].to_vec()),
                ],
            )?;
        }
        let bc = json!({"method": meta.method.name(), "theta_init": meta.theta_init, "base_model": base});
        write_atomic_str(
            &dir.join("bitune_config.json"),
            &serde_json::to_string_pretty(&bc)?,
        )?;
    }
    Ok(())
}

fn read_json(path: &Path) -> Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", path.display()))
}

fn target_list(v: &Value, key: &str, cfg: &ModelConfig, path: &Path) -> Result<Vec<Target>> {
    let names: Vec<String> = match v.get(key) {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_str().map(String::from))
            .collect(),
        Some(Value::String(s)) => vec![s.clone()],
        None | Some(Value::Null) if key == "feedforward_modules" => vec![],
        _ => bail!("{}: no `{key}` list", path.display()),
    };
    let mut targets = Vec::new();
    for n in &names {
        targets.push(Target::from_short(n, cfg.arch).ok_or_else(|| {
            anyhow!(
                "{}: target module {n:?} does not exist in a {:?} model",
                path.display(),
                cfg.arch
            )
        })?);
    }
    targets.sort();
    targets.dedup();
    Ok(targets)
}

/// Reads the metadata of an adapter folder (PEFT configs carry many more keys: ignored).
pub fn read_meta(dir: &Path, cfg: &ModelConfig) -> Result<AdapterMeta> {
    let path = dir.join("adapter_config.json");
    let v = read_json(&path)?;
    let bad = |what: &str| anyhow!("{}: {what}", path.display());
    let peft = match v.get("peft_type").and_then(Value::as_str) {
        Some("LORA") | None if v.get("use_dora").and_then(Value::as_bool) == Some(true) => {
            Peft::Dora
        }
        Some("LORA") | None => Peft::Lora,
        Some("IA3") => Peft::Ia3,
        Some(other) => bail!(
            "{}: peft_type {other:?} is not supported (LORA, LORA with use_dora, IA3)",
            path.display()
        ),
    };
    let targets = target_list(&v, "target_modules", cfg, &path)?;
    if targets.is_empty() {
        return Err(bad("at least one target module must be given"));
    }
    let lora = if peft == Peft::Ia3 {
        // IA3 scales the input of exactly the MLP linears (the rule this crate implements).
        let ff = target_list(&v, "feedforward_modules", cfg, &path)?;
        let want: Vec<Target> = targets
            .iter()
            .copied()
            .filter(|t| is_feedforward(*t))
            .collect();
        if ff != want {
            return Err(bad(
                "IA3 feedforward_modules must be exactly the targeted MLP linears",
            ));
        }
        // Rank and alpha do not exist for IA3; nothing reads them.
        LoraSpec {
            rank: 0,
            alpha: 0.0,
            targets,
        }
    } else {
        let rank = v
            .get("r")
            .and_then(Value::as_u64)
            .ok_or_else(|| bad("no integer `r`"))? as usize;
        let alpha = v
            .get("lora_alpha")
            .and_then(Value::as_f64)
            .ok_or_else(|| bad("no `lora_alpha`"))? as f32;
        if rank == 0 {
            return Err(bad("rank must be positive"));
        }
        LoraSpec {
            rank,
            alpha,
            targets,
        }
    };
    let bc = dir.join("bitune_config.json");
    let (method, theta_init) = if bc.exists() {
        let b = read_json(&bc)?;
        let m = b.get("method").and_then(Value::as_str).unwrap_or("bitune");
        let m = Method::parse(m).with_context(|| format!("{}", bc.display()))?;
        (
            m,
            b.get("theta_init").and_then(Value::as_f64).unwrap_or(0.01) as f32,
        )
    } else {
        (Method::Lora, 0.01)
    };
    Ok(AdapterMeta {
        method,
        lora,
        peft,
        theta_init,
    })
}

fn fill_set(map: &mut TensorMap, table: &ParamTable, host: &mut [f32], set: usize) -> Result<()> {
    for e in table.set_entries(set) {
        let data = map
            .take(&e.name, &e.shape)
            .context("the adapter does not fit the model")?;
        host[e.offset..e.offset + e.len()].copy_from_slice(&data);
    }
    Ok(())
}

/// Loads the tensors of an adapter folder into a flat host buffer laid out by `table`.
pub fn load_params(dir: &Path, table: &ParamTable, meta: &AdapterMeta) -> Result<Vec<f32>> {
    let mut host = vec![0f32; table.total];
    let path = dir.join("adapter_model.safetensors");
    let mut m = TensorMap::new(path.display().to_string());
    read_file_into(&path, &mut m)?;
    fill_set(&mut m, table, &mut host, SET_C)?;
    if table.num_sets > 1 {
        let path = dir.join(BIDIR_DIR).join("adapter_model.safetensors");
        if path.exists() {
            let mut m = TensorMap::new(path.display().to_string());
            read_file_into(&path, &mut m)?;
            fill_set(&mut m, table, &mut host, SET_B)?;
        } else if meta.method != Method::NaiveBidir && meta.method != Method::SharedWeights {
            bail!(
                "{}: missing; method {} needs the bidirectional set",
                path.display(),
                meta.method.name()
            );
        }
    }
    if let Some((tk, tv)) = table.theta() {
        let path = dir.join("bitune.safetensors");
        let mut m = TensorMap::new(path.display().to_string());
        read_file_into(&path, &mut m)?;
        let n = table.num_layers;
        host[tk..tk + n].copy_from_slice(&m.take("theta_k", &[n])?);
        host[tv..tv + n].copy_from_slice(&m.take("theta_v", &[n])?);
    }
    if let Some(bad) = host.iter().position(|v| !v.is_finite()) {
        bail!(
            "{}: non-finite adapter value at flat index {bad}",
            dir.display()
        );
    }
    Ok(host)
}
