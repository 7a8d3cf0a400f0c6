#!/usr/bin/env python3
"""CPU inference benchmark of Hugging Face transformers, for comparison with `bitune-rt bench`.

Model: the default GGUF (SmolLM2-135M-Instruct Q4_1), dequantized to f32 by transformers.
Measures, like `bitune-rt bench` (base model):
  prefill  one forward over --prompt seeded random token ids (use_cache=True);
  decode   --answer greedy steps on the KV cache, each a manual
           model(input_ids=next, past_key_values=..., use_cache=True) call, starting from the
           prefill's last logits (EOS ignored); time per token = decode time / --answer;
  end_to_end_s = prefill + decode.
One warm-up run, then --repeat runs; each figure is the median over the runs.
Token ids are drawn uniformly from [100, vocab - 100) with a fixed seed (as the Rust bench does).

Prints one JSON object on stdout; progress goes to stderr.

    .pyref/bin/python bench/hf_cpu_bench.py --threads 2 --prompt 50 --answer 200 --repeat 3
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch

DEFAULT_GGUF = os.path.expanduser("~/.cache/bitune-rt/models/SmolLM2-135M-Instruct.Q4_1.gguf")


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown cpu"


def load(gguf_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        os.path.dirname(gguf_path) or ".",
        gguf_file=os.path.basename(gguf_path),
        torch_dtype=torch.float32,
    )
    model.eval()
    return model


@torch.inference_mode()
def run_once(model, ids, answer):
    """Returns (prefill_s, decode_s) for one prefill + `answer` greedy decode steps."""
    t0 = time.perf_counter()
    out = model(input_ids=ids, use_cache=True)
    t1 = time.perf_counter()
    past = out.past_key_values
    nxt = out.logits[:, -1, :].argmax(dim=-1, keepdim=True)
    t2 = time.perf_counter()
    for _ in range(answer):
        out = model(input_ids=nxt, past_key_values=past, use_cache=True)
        past = out.past_key_values
        nxt = out.logits[:, -1, :].argmax(dim=-1, keepdim=True)
    t3 = time.perf_counter()
    return t1 - t0, t3 - t2


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=DEFAULT_GGUF, help="GGUF file (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=50)
    ap.add_argument("--answer", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=7)
    a = ap.parse_args()
    if a.prompt < 1 or a.answer < 1 or a.repeat < 1 or a.threads < 1:
        ap.error("--prompt, --answer, --repeat and --threads must be >= 1")
    if not os.path.isfile(a.model):
        ap.error(f"model not found: {a.model} (run scripts/fetch-model.sh)")

    torch.set_num_threads(a.threads)
    import transformers

    t = time.perf_counter()
    model = load(a.model)
    load_s = time.perf_counter() - t
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(a.seed)
    ids = torch.randint(100, vocab - 100, (1, a.prompt), generator=g, dtype=torch.long)

    print(f"loaded {os.path.basename(a.model)} in {load_s:.1f}s; warm-up...", file=sys.stderr)
    run_once(model, ids, a.answer)
    prefill, decode, total = [], [], []
    for r in range(a.repeat):
        p, d = run_once(model, ids, a.answer)
        prefill.append(p)
        decode.append(d)
        total.append(p + d)
        print(f"run {r + 1}/{a.repeat}: prefill {p * 1e3:.1f} ms, decode {d * 1e3 / a.answer:.2f} ms/tok",
              file=sys.stderr)

    prefill_s = statistics.median(prefill)
    decode_s = statistics.median(decode)
    ms_tok = decode_s * 1e3 / a.answer
    print(json.dumps({
        "stack": "transformers",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": a.threads,
        "prompt": a.prompt,
        "answer": a.answer,
        "prefill_ms": round(prefill_s * 1e3, 3),
        "prefill_tok_s": round(a.prompt / prefill_s, 2),
        "decode_ms_per_tok": round(ms_tok, 3),
        "decode_tok_s": round(1e3 / ms_tok, 2),
        "end_to_end_s": round(statistics.median(total), 4),
        "repeat": a.repeat,
        "model": os.path.basename(a.model),
        "attn": getattr(model.config, "_attn_implementation", None),
        "load_s": round(load_s, 2),
        "cpu": cpu_name(),
    }))


if __name__ == "__main__":
    main()
