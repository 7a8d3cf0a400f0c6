#!/usr/bin/env python3
"""CPU inference benchmark of llama.cpp (through llama-cpp-python, installed by
bench/setup-llama-cpp.sh), for comparison with `bitune-rt bench` on the same GGUF file.

Measures, like `bitune-rt bench` (base model) and bench/hf_cpu_bench.py:
  prefill  one llama_decode of the --prompt seeded random token ids as a single batch
           (n_batch = n_ubatch >= --prompt), logits of the last position only;
  decode   --answer greedy steps on the KV cache, each one llama_decode of one token, starting
           from the argmax of the prefill's last logits (EOS ignored); the next token is the argmax
           of the logits (no sampler chain); time per token = decode time / --answer;
  end_to_end_s = prefill + decode.
Each run starts from an empty KV cache. One warm-up run, then --repeat runs; each figure is the
median over the runs. n_threads = n_threads_batch = --threads. Token ids are drawn uniformly from
[100, vocab - 100) with a fixed seed (as the Rust and transformers benches do).

Built with OpenMP (bench/setup-llama-cpp.sh), llama.cpp meets its threads at a barrier after every
graph op: on a machine whose cores are busy with other work, a descheduled thread stalls the rest,
and its multi-thread figures swing far more than bitune-rt's (a 2-thread smoke run on a loaded
2-core box measured 30 to 230 ms/token where 1 thread gave a steady 9). Compare on a quiet machine.

Prints one JSON object on stdout; progress goes to stderr.

    .pyref/bin/python bench/llama_cpp_bench.py --threads 2 --prompt 50 --answer 200 --repeat 3
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

DEFAULT_GGUF = os.path.expanduser("~/.cache/bitune-rt/models/SmolLM2-135M-Instruct.Q4_1.gguf")
# llama_ftype (llama.h) -> name, for the quant type the file declares.
FTYPES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 32: "BF16"}


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown cpu"


def argmax_last(llama_cpp, llm, vocab):
    """Greedy next token: argmax of the last evaluated position's logits, read in place (with
    logits_all off, Llama.eval does not copy them into Llama.scores)."""
    return int(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(vocab,)).argmax())


def run_once(llama_cpp, llm, ids, answer, vocab):
    """Returns (prefill_s, decode_s, tokens) for one prefill + `answer` greedy decode steps."""
    llm.reset()  # n_past = 0: eval() drops the KV cache from there on
    t0 = time.perf_counter()
    llm.eval(ids)  # one batch: len(ids) <= n_batch
    t1 = time.perf_counter()
    nxt = argmax_last(llama_cpp, llm, vocab)
    out = [nxt]
    t2 = time.perf_counter()
    for _ in range(answer):
        llm.eval([nxt])
        nxt = argmax_last(llama_cpp, llm, vocab)
        out.append(nxt)
    t3 = time.perf_counter()
    return t1 - t0, t3 - t2, out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=DEFAULT_GGUF, help="GGUF file (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=50)
    ap.add_argument("--answer", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--flash-attn", action="store_true", help="llama.cpp's flash attention (off by default in llama-cpp-python)")
    a = ap.parse_args()
    if a.prompt < 1 or a.answer < 1 or a.repeat < 1 or a.threads < 1:
        ap.error("--prompt, --answer, --repeat and --threads must be >= 1")
    if not os.path.isfile(a.model):
        ap.error(f"model not found: {a.model} (run scripts/fetch-model.sh, bench/quant_variants.py)")

    import llama_cpp

    n_batch = max(512, a.prompt)
    t = time.perf_counter()
    llm = llama_cpp.Llama(
        model_path=a.model,
        n_ctx=a.prompt + a.answer + 8,
        n_batch=n_batch,
        n_ubatch=n_batch,
        n_threads=a.threads,
        n_threads_batch=a.threads,
        logits_all=False,
        flash_attn=a.flash_attn,
        verbose=False,
    )
    load_s = time.perf_counter() - t
    vocab = llm.n_vocab()
    ids = np.random.default_rng(a.seed).integers(100, vocab - 100, size=a.prompt).tolist()
    ftype = llm.metadata.get("general.file_type")
    quant = FTYPES.get(int(ftype), ftype) if ftype is not None else None

    print(f"loaded {os.path.basename(a.model)} ({quant}) in {load_s:.1f}s; warm-up...", file=sys.stderr)
    _, _, first = run_once(llama_cpp, llm, ids, a.answer, vocab)
    print(f"greedy tokens: {first[:12]}...; text: {llm.detokenize(first[:24]).decode(errors='replace')!r}",
          file=sys.stderr)
    prefill, decode, total = [], [], []
    for r in range(a.repeat):
        p, d, toks = run_once(llama_cpp, llm, ids, a.answer, vocab)
        if toks != first:
            print("warning: greedy tokens differ between runs", file=sys.stderr)
        prefill.append(p)
        decode.append(d)
        total.append(p + d)
        print(f"run {r + 1}/{a.repeat}: prefill {p * 1e3:.1f} ms, decode {d * 1e3 / a.answer:.2f} ms/tok",
              file=sys.stderr)

    prefill_s = statistics.median(prefill)
    decode_s = statistics.median(decode)
    ms_tok = decode_s * 1e3 / a.answer
    print(json.dumps({
        "stack": "llama.cpp",
        "llama_cpp_python": llama_cpp.__version__,
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
        "quant": quant,
        "n_batch": n_batch,
        "flash_attn": a.flash_attn,
        "system_info": llama_cpp.llama_print_system_info().decode(errors="replace").strip(),
        "load_s": round(load_s, 2),
        "cpu": cpu_name(),
    }))


if __name__ == "__main__":
    main()
