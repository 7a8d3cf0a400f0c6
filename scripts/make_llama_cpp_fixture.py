#!/usr/bin/env python3
"""Record how far llama.cpp's logits on the default model are from transformers' (run by hand,
never by CI): the yardstick of bitune-rt's decoding with 8-bit activations (tests/int8_decode.rs).

    .pyref/bin/python scripts/make_llama_cpp_fixture.py

Needs the .pyref venv (torch, transformers; scripts/setup-python.sh), llama-cpp-python
(bench/setup-llama-cpp.sh) and the GGUF (scripts/fetch-model.sh). Writes
tests/fixtures/smollm2_llama_cpp.json.

Both run the prompts of tests/fixtures/smollm2_reference.json and then, teacher-forced, the
greedy continuation transformers recorded there: one logit vector per position (the prompt's
last, then one per continuation token but the last). llama.cpp reads the Q4_1/Q8_0 weights
against activations quantised to 8 bits per block of 32 (its CPU dot products), transformers
against f32 activations (weights dequantized to f32). Recorded: the RMS and the largest absolute
difference of llama.cpp's logits from transformers', and how often their argmax agree.
"""
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
GGUF_DIR = Path(os.environ.get("BITUNE_HOME", Path.home() / ".cache" / "bitune-rt")) / "models"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def main():
    from llama_cpp import Llama, __version__ as llama_version
    from transformers import AutoModelForCausalLM
    import transformers

    torch.set_num_threads(1)
    path = GGUF_DIR / GGUF_NAME
    if not path.exists():
        sys.exit(f"{path} missing: run scripts/fetch-model.sh first")
    ref = json.load(open(ROOT / "tests/fixtures/smollm2_reference.json"))
    hf = AutoModelForCausalLM.from_pretrained(GGUF_DIR, gguf_file=GGUF_NAME, dtype=torch.float32,
                                              attn_implementation="eager").eval()
    llama = Llama(model_path=str(path), n_ctx=256, n_threads=1, logits_all=True, verbose=False)
    per_prompt, all_hf, all_ll = [], [], []
    for p in ref["prompts"]:
        ids, cont = p["ids"], p["greedy"]
        seq = ids + cont[:-1]
        with torch.no_grad():
            h = hf(torch.tensor([seq])).logits[0, len(ids) - 1:].numpy()
        llama.reset()
        llama.eval(seq)
        ll = np.array(llama.scores[len(ids) - 1:len(seq)], dtype=np.float32)
        assert h.shape == ll.shape, (h.shape, ll.shape)
        d = ll - h
        per_prompt.append({"text": p["text"], "positions": len(cont),
                           "rms": float(np.sqrt((d ** 2).mean())), "max_abs": float(np.abs(d).max()),
                           "argmax_agree": float((ll.argmax(1) == h.argmax(1)).mean())})
        all_hf.append(h)
        all_ll.append(ll)
    h, ll = np.concatenate(all_hf), np.concatenate(all_ll)
    d = ll - h
    out = {
        "model": GGUF_NAME,
        "what": "llama.cpp logits minus transformers logits, prompts of smollm2_reference.json then "
                "their greedy continuations teacher-forced, one vector per position",
        "llama_cpp_python": llama_version, "transformers": transformers.__version__,
        "threads": 1, "positions": int(d.shape[0]),
        "rms": float(np.sqrt((d ** 2).mean())), "max_abs": float(np.abs(d).max()),
        "argmax_agree": float((ll.argmax(1) == h.argmax(1)).mean()),
        "prompts": per_prompt,
    }
    dst = ROOT / "tests/fixtures/smollm2_llama_cpp.json"
    dst.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps({k: out[k] for k in ("positions", "rms", "max_abs", "argmax_agree")}))


if __name__ == "__main__":
    main()
