//! Bad input gets a clear error naming the file/tensor/line, never a panic: corrupt or truncated
//! checkpoints, missing tensors, wrong shapes, unknown architectures, tokenizers that do not fit,
//! empty prompts, malformed data lines, adapters that do not fit.

mod common;

use bitune_rt::backend::cpu::Cpu;
use bitune_rt::bitune::engine::{load_adapter, Engine, PromptMask};
use bitune_rt::data::examples::read_jsonl;
use bitune_rt::model::load::Model;
use common::*;
use std::path::{Path, PathBuf};

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("bitune-bad-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A copy of a fixture model folder that a test may damage.
fn copy_model(name: &str, tag: &str) -> PathBuf {
    let d = scratch(tag);
    for e in std::fs::read_dir(model_dir(name)).unwrap().flatten() {
        std::fs::copy(e.path(), d.join(e.file_name())).unwrap();
    }
    d
}

fn load_err(dir: &Path) -> String {
    match Model::load(&Cpu, dir) {
        Ok(_) => panic!("{} loaded although it is broken", dir.display()),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn truncated_safetensors_names_the_file() {
    let d = copy_model("llama", "trunc");
    let f = d.join("model.safetensors");
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() / 2]).unwrap();
    let e = load_err(&d);
    assert!(e.contains("model.safetensors"), "{e}");
}

#[test]
fn unknown_architecture_and_wrong_shape_are_named() {
    let d = copy_model("llama", "arch");
    let cfg = std::fs::read_to_string(d.join("config.json")).unwrap();
    std::fs::write(
        d.join("config.json"),
        cfg.replace("LlamaForCausalLM", "FalconForCausalLM"),
    )
    .unwrap();
    let e = load_err(&d);
    assert!(
        e.contains("FalconForCausalLM") && e.contains("config.json"),
        "{e}"
    );
    // A config whose intermediate size disagrees with the tensors: the tensor is named.
    std::fs::write(
        d.join("config.json"),
        cfg.replace("\"intermediate_size\": 72", "\"intermediate_size\": 80"),
    )
    .unwrap();
    let e = load_err(&d);
    assert!(e.contains("mlp.") && e.contains("shape"), "{e}");
}

#[test]
fn missing_tensor_and_tokenizer_mismatch_are_named() {
    let d = copy_model("phi", "missing");
    // phi has an untied head: claiming tied drops lm_head, a missing bias is reported too.
    let cfg = std::fs::read_to_string(d.join("config.json")).unwrap();
    std::fs::write(
        d.join("config.json"),
        cfg.replace("\"vocab_size\": 224", "\"vocab_size\": 100"),
    )
    .unwrap();
    let e = load_err(&d);
    assert!(e.contains("tokenizer") || e.contains("shape"), "{e}");
}

#[test]
fn empty_prompt_and_out_of_range_ids_are_errors() {
    let e = Engine::load(Cpu, &model_dir("llama"), None, PromptMask::Causal).unwrap();
    let err = |ids: &[u32]| format!("{:#}", e.prefill(ids).err().expect("an error"));
    assert!(err(&[]).contains("empty prompt"));
    assert!(err(&[1, 5000]).contains("5000"));
    assert!(e.score(&[1, 2], &[vec![]]).is_err());
}

#[test]
fn malformed_jsonl_reports_the_line() {
    let d = scratch("jsonl");
    let f = d.join("data.jsonl");
    std::fs::write(
        &f,
        "{\"instruction\":\"a\",\"response\":\"b\"}\n{not json}\n",
    )
    .unwrap();
    let e = format!(
        "{:#}",
        read_jsonl(&f, "instruction", "response").unwrap_err()
    );
    assert!(e.contains("data.jsonl:2"), "{e}");
    std::fs::write(&f, "{\"instruction\":\"a\"}\n").unwrap();
    let e = format!(
        "{:#}",
        read_jsonl(&f, "instruction", "response").unwrap_err()
    );
    assert!(e.contains("data.jsonl:1") && e.contains("response"), "{e}");
    std::fs::write(&f, "{\"instruction\":\"a\",\"response\":\"  \"}\n").unwrap();
    assert!(format!(
        "{:#}",
        read_jsonl(&f, "instruction", "response").unwrap_err()
    )
    .contains("empty"));
}

#[test]
fn an_adapter_for_another_model_does_not_load() {
    let m = Model::load(&Cpu, &model_dir("gemma")).unwrap();
    let e = match load_adapter(&Cpu, &m, &fixtures().join("bitune/llama/init")) {
        Ok(_) => panic!("a llama adapter loaded onto gemma"),
        Err(e) => format!("{e:#}"),
    };
    assert!(e.contains("does not fit") && e.contains("shape"), "{e}");
}
