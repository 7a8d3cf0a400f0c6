//! Bitune and every ablation against the independent PyTorch implementation
//! (`scripts/bitune_reference.py`): batch loss, every adapter and θ gradient, and three AdamW
//! steps with clipping, on tiny fixture models.

mod common;

use bitune_rt::backend::cpu::Cpu;
use bitune_rt::bitune::engine::load_adapter;
use bitune_rt::bitune::params::{Kind, ParamTable, SET_B, SET_C};
use bitune_rt::bitune::plan::{Example, Method, METHODS};
use bitune_rt::bitune::step::{loss_and_grad, Trainable};
use bitune_rt::model::load::Model;
use bitune_rt::model::tensors::read_file_into;
use bitune_rt::model::tensors::TensorMap;
use bitune_rt::train::optim::{OptConfig, Optimizer};
use common::*;
use std::path::PathBuf;

fn dir(model: &str) -> PathBuf {
    fixtures().join("bitune").join(model)
}

fn batch(model: &str) -> Vec<Example> {
    let v = read_json(&dir(model).join("batch.json"));
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
fn trainable_for(be: &Cpu, m: &Model<Cpu>, model: &str, method: Method) -> Trainable<Cpu> {
    let (full, _) = load_adapter(be, m, &dir(model).join("init")).unwrap();
    let table = ParamTable::new(
        &m.weights.cfg,
        full.table.lora.clone(),
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

fn key(prefix: &str, e: &bitune_rt::bitune::params::Entry) -> String {
    match e.kind {
        Kind::ThetaK | Kind::ThetaV => format!("{prefix}.{}", e.name),
        _ => format!(
            "{prefix}.{}.{}",
            if e.set == SET_C { "C" } else { "B" },
            e.name
        ),
    }
}

/// Gradients: max|Δ| ≤ 1e-4·max|reference tensor| + 1e-5·max|any gradient of the file| (the
/// floor covers f32 cancellation in small sums such as a dθ near zero; the reference is f64).
/// Parameters after 3 steps: max|Δ| ≤ 1e-5 absolute, 1% of the learning rate (Adam's update is
/// sensitive where a gradient passes near zero).
fn compare(what: &str, table: &ParamTable, got: &[f32], refm: &TensorMap, prefix: &str) {
    let global = refm
        .map
        .iter()
        .filter(|(k, _)| k.starts_with("grad."))
        .flat_map(|(_, t)| t.data.iter())
        .fold(0f32, |m, x| m.max(x.abs()));
    for e in &table.entries {
        let k = key(prefix, e);
        let want = match refm.map.get(&k) {
            Some(t) => t.data.clone(),
            None if e.set == SET_B => vec![0.0; e.len()],
            None => panic!("{what}: reference lacks {k}"),
        };
        let g = &got[e.offset..e.offset + e.len()];
        let diff = g
            .iter()
            .zip(&want)
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
fn losses_gradients_and_adamw_steps_match_pytorch_reference() {
    let be = Cpu;
    for model in ["llama", "gemma", "phi", "qwen2"] {
        let m = Model::load(&be, &model_dir(model)).unwrap();
        let exs = batch(model);
        for method in METHODS {
            let what = format!("{model}/{}", method.name());
            let path = dir(model).join(format!("{}.safetensors", method.name()));
            let mut refm = TensorMap::new(path.display().to_string());
            read_file_into(&path, &mut refm).unwrap();
            let mut tr = trainable_for(&be, &m, model, method);
            let mut g = vec![0f32; tr.table.total];
            let out = loss_and_grad(&be, &m.weights, &tr, &exs, exs.len(), Some(&mut g)).unwrap();
            let want_loss = refm.map["loss"].data[0] as f64;
            assert!(
                (out.loss - want_loss).abs() < 1e-5 * want_loss.abs(),
                "{what}: loss {} vs {want_loss}",
                out.loss
            );
            compare(&what, &tr.table, &g, &refm, "grad");
            if method == Method::NaiveBidir || method == Method::SharedWeights {
                assert!(tr
                    .table
                    .set_entries(SET_B)
                    .all(|e| g[e.offset..e.offset + e.len()].iter().all(|&x| x == 0.0)));
            }
            // Three AdamW steps, constant lr 1e-3, global clip 1.0, on the same batch.
            let cfg = OptConfig::reference_adamw(3);
            let mut opt = Optimizer::new(&be, cfg, tr.table.total);
            let want_losses = &refm.map["losses"].data;
            for (s, &wl) in want_losses.iter().enumerate() {
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
            compare(
                &format!("{what} after 3 steps"),
                &tr.table,
                &tr.params,
                &refm,
                "step3",
            );
        }
    }
}
