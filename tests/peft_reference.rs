//! DoRA and IA3 adapter sets against the independent PyTorch implementation
//! (`scripts/peft_reference.py`, itself checked against PEFT's own layers): batch loss, every
//! adapter and θ gradient, and three AdamW steps with clipping, on tiny fixture models; and the
//! adapter folders: PEFT's files load, and what we save reads back unchanged.

mod common;

use bitune_rt::backend::cpu::Cpu;
use bitune_rt::bitune::adapter_io::{read_meta, save};
use bitune_rt::bitune::engine::load_adapter;
use bitune_rt::bitune::params::{Entry, Kind, ParamTable, SET_B, SET_C};
use bitune_rt::bitune::peft::Peft;
use bitune_rt::bitune::plan::{Example, Method, METHODS};
use bitune_rt::bitune::step::{loss_and_grad, Trainable};
use bitune_rt::model::load::Model;
use bitune_rt::model::tensors::read_file_into;
use bitune_rt::model::tensors::TensorMap;
use bitune_rt::train::optim::{OptConfig, Optimizer};
use common::*;
use std::path::PathBuf;

const KINDS: [(&str, Peft); 2] = [("dora", Peft::Dora), ("ia3", Peft::Ia3)];
const MODELS: [&str; 3] = ["llama", "gemma", "phi"];

fn dir(kind: &str, model: &str) -> PathBuf {
    fixtures().join("peft").join(kind).join(model)
}

fn batch(kind: &str, model: &str) -> Vec<Example> {
    let v = read_json(&dir(kind, model).join("batch.json"));
    v["examples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| Example {
            ids: u32s(&e["ids"]),
            prompt_len: e["prompt_len"].as_u64().unwrap() as usize,
        })
        .collect()
}

/// The init adapter's values re-laid for `method`'s table (same names, same sets).
fn trainable_for(m: &Model<Cpu>, full: &Trainable<Cpu>, method: Method) -> Trainable<Cpu> {
    let table = ParamTable::with_peft(
        &m.weights.cfg,
        full.table.lora.clone(),
        full.table.peft,
        method.num_sets(),
        method.mixes(),
    );
    let mut params = vec![0f32; table.total];
    for e in &table.entries {
        let src = full
            .table
            .entries
            .iter()
            .find(|f| f.set == e.set && f.name == e.name)
            .unwrap();
        params[e.offset..e.offset + e.len()]
            .copy_from_slice(&full.params[src.offset..src.offset + src.len()]);
    }
    Trainable {
        method,
        table,
        params,
        theta_init: full.theta_init,
    }
}

fn key(prefix: &str, e: &Entry) -> String {
    match e.kind {
        Kind::ThetaK | Kind::ThetaV => format!("{prefix}.{}", e.name),
        _ => format!(
            "{prefix}.{}.{}",
            if e.set == SET_C { "C" } else { "B" },
            e.name
        ),
    }
}

/// The tolerances of tests/bitune_reference.rs: gradients max|Δ| ≤ 1e-4·max|reference tensor| +
/// 1e-5·max|any gradient of the file|; parameters after 3 steps max|Δ| ≤ 1e-5 absolute.
fn compare(what: &str, table: &ParamTable, got: &[f32], refm: &TensorMap, prefix: &str) {
    let global = refm
        .map
        .iter()
        .filter(|(k, _)| k.starts_with("grad."))
        .flat_map(|(_, t)| t.data.iter())
        .fold(0f32, |m, x| m.max(x.abs()));
    for e in &table.entries {
        let k = key(prefix, e);
        let want = &refm
            .map
            .get(&k)
            .unwrap_or_else(|| panic!("{what}: reference lacks {k}"))
            .data;
        let g = &got[e.offset..e.offset + e.len()];
        let diff = g
            .iter()
            .zip(want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        let tmax = want.iter().fold(0f32, |m, x| m.max(x.abs()));
        let allowed = if prefix == "grad" {
            1e-4 * tmax + 1e-5 * global
        } else {
            1e-5
        };
        assert!(
            diff <= allowed,
            "{what} {k}: max difference {diff:.2e} > {allowed:.2e}"
        );
    }
}

#[test]
fn dora_and_ia3_losses_gradients_and_adamw_steps_match_pytorch_reference() {
    let be = Cpu;
    let mut checked = 0;
    for (kind, peft) in KINDS {
        for model in MODELS {
            let m = Model::load(&be, &model_dir(model)).unwrap();
            let exs = batch(kind, model);
            let (full, meta) = load_adapter(&be, &m, &dir(kind, model).join("init")).unwrap();
            assert_eq!(
                meta.peft, peft,
                "{kind}/{model}: adapter type read from the folder"
            );
            for method in METHODS {
                let path = dir(kind, model).join(format!("{}.safetensors", method.name()));
                if !path.exists() {
                    continue;
                }
                checked += 1;
                let what = format!("{kind}/{model}/{}", method.name());
                let mut refm = TensorMap::new(path.display().to_string());
                read_file_into(&path, &mut refm).unwrap();
                let mut tr = trainable_for(&m, &full, method);
                let mut g = vec![0f32; tr.table.total];
                let out =
                    loss_and_grad(&be, &m.weights, &tr, &exs, exs.len(), Some(&mut g)).unwrap();
                let want_loss = refm.map["loss"].data[0] as f64;
                assert!(
                    (out.loss - want_loss).abs() < 1e-5 * want_loss.abs(),
                    "{what}: loss {} vs {want_loss}",
                    out.loss
                );
                compare(&what, &tr.table, &g, &refm, "grad");
                // Three AdamW steps, constant lr 1e-3, global clip 1.0, on the same batch.
                let cfg = OptConfig::reference_adamw(3);
                let mut opt = Optimizer::new(&be, cfg, tr.table.total);
                for (s, &wl) in refm.map["losses"].data.iter().enumerate() {
                    let mut g = vec![0f32; tr.table.total];
                    let out =
                        loss_and_grad(&be, &m.weights, &tr, &exs, exs.len(), Some(&mut g)).unwrap();
                    assert!(
                        (out.loss - wl as f64).abs() < 1e-5 * (wl as f64).abs(),
                        "{what}: step {s} loss {} vs {wl}",
                        out.loss
                    );
                    opt.update(&be, &mut tr.params, &mut g);
                }
                let what = format!("{what} after 3 steps");
                compare(&what, &tr.table, &tr.params, &refm, "step3");
            }
        }
    }
    assert!(checked >= 12, "only {checked} fixtures found");
}

/// A folder we write reads back with the same adapter type, targets and values, in PEFT's
/// format: LoRA config with `use_dora` (DoRA), IA3 config with the MLP linears as
/// feed-forward modules (IA3). (scripts/peft_reference.py --check-rust-adapter loads such a
/// folder with PEFT itself.)
#[test]
fn dora_and_ia3_adapter_folders_round_trip() {
    let be = Cpu;
    let tmp = std::env::temp_dir().join(format!("bitune-peft-io-{}", std::process::id()));
    for (kind, peft) in KINDS {
        for model in ["llama", "phi"] {
            let m = Model::load(&be, &model_dir(model)).unwrap();
            let cfg = &m.weights.cfg;
            let (tr, meta) = load_adapter(&be, &m, &dir(kind, model).join("init")).unwrap();
            let out = tmp.join(format!("{kind}-{model}"));
            save(&out, cfg, &meta, &tr.table, &tr.params, "fixture").unwrap();
            let conf = read_json(&out.join("adapter_config.json"));
            let b_conf = read_json(&out.join("bidirectional/adapter_config.json"));
            assert_eq!(conf, b_conf);
            if peft == Peft::Dora {
                assert_eq!(conf["peft_type"], "LORA");
                assert_eq!(conf["use_dora"], true);
            } else {
                assert_eq!(conf["peft_type"], "IA3");
                let ff: Vec<_> = conf["feedforward_modules"].as_array().unwrap().clone();
                let want: Vec<&str> = if model == "phi" {
                    vec!["fc1", "fc2"]
                } else {
                    vec!["gate_proj", "up_proj", "down_proj"]
                };
                assert_eq!(ff, want);
            }
            let back = read_meta(&out, cfg).unwrap();
            assert_eq!((back.peft, back.method), (peft, meta.method));
            assert_eq!(back.lora.targets, meta.lora.targets);
            let (tr2, _) = load_adapter(&be, &m, &out).unwrap();
            assert_eq!(
                tr2.params, tr.params,
                "{kind}/{model}: values after a round trip"
            );
            // Entry shapes are PEFT's: m [out]; l [out, 1], or [1, in] for a feed-forward module.
            for e in tr.table.entries.iter().filter(|e| e.set == SET_B) {
                match e.kind {
                    Kind::Magnitude => assert_eq!(e.shape.len(), 1),
                    Kind::Ia3 => assert!(e.shape.len() == 2 && e.shape.contains(&1)),
                    _ => {}
                }
            }
        }
    }
    std::fs::remove_dir_all(&tmp).unwrap();
}
