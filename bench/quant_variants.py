#!/usr/bin/env python3
"""Makes Q4_0 and Q8_0 GGUFs of the default model next to its Q4_1 file, for the per-quant
benchmarks of bench/run_cpu.sh (bitune-rt and llama.cpp on the same files).

Each Q4_1 tensor is dequantised and re-quantised to the target type with the `gguf` package's
numpy quantisers (the reference round-to-nearest of ggml's quantize_row_*_ref); every other tensor
(F32 norms, the Q8_0 token embedding) is copied byte for byte, and every metadata key, the
tokenizer and the chat template included, is kept; only general.file_type is set to the new type.
The output is a function of the input alone (no randomness, no timestamps), so a rerun writes the
same bytes; a file that already exists is left alone (--force rewrites it).

Note: the weights are a re-quantisation of Q4_1 values, not a quantisation of the original
bf16 checkpoint: the Q8_0 file has Q4_1's accuracy at Q8_0's size and speed, which is what a
speed benchmark needs.

    .pyref/bin/python bench/quant_variants.py            # -> ...Q4_0.gguf, ...Q8_0.gguf
    .pyref/bin/python bench/quant_variants.py --types Q8_0 --src FILE.Q4_1.gguf
    .pyref/bin/python bench/quant_variants.py --check target/release/bitune-rt
--check BIN loads every file (Q4_1 and the variants) in llama-cpp-python (when installed) and in
the bitune-rt binary BIN, and prints each one's greedy answer to a chat question, to eyeball.
"""
import argparse
import os
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T

DEFAULT_SRC = os.path.join(os.environ.get("BITUNE_HOME") or os.path.expanduser("~/.cache/bitune-rt"),
                           "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
# llama_ftype values (llama.h): what general.file_type says about the file's main weights.
FTYPE = {"Q4_0": 2, "Q4_1": 3, "Q8_0": 7}


def variant(src, qname, out):
    qtype = T[qname]
    r = gguf.GGUFReader(src)
    arch = r.fields[gguf.Keys.General.ARCHITECTURE].contents()
    w = gguf.GGUFWriter(out + ".tmp", arch=arch, endianess=r.endianess)
    for f in r.fields.values():
        if f.name == gguf.Keys.General.ARCHITECTURE or f.name.startswith("GGUF."):
            continue  # written by GGUFWriter itself
        vtype = f.types[0]
        sub = f.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        val = FTYPE[qname] if f.name == gguf.Keys.General.FILE_TYPE else f.contents()
        w.add_key_value(f.name, val, vtype, sub_type=sub)
    changed = 0
    for t in r.tensors:
        data = np.asarray(t.data)
        if t.tensor_type == T.Q4_1 and t.tensor_type != qtype:
            f32 = gguf.quants.dequantize(data, t.tensor_type)
            data = gguf.quants.quantize(f32, qtype)
            changed += 1
            w.add_tensor(t.name, data, raw_shape=data.shape, raw_dtype=qtype)
        else:
            w.add_tensor(t.name, data, raw_shape=data.shape, raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(out + ".tmp", out)
    return changed


def check(files, binary):
    import subprocess
    question = "What is the capital of France?"
    for f in files:
        print(f"== {os.path.basename(f)}")
        out = subprocess.run([binary, "generate", "--model", f, "--prompt", question, "--chat",
                              "--max-new", "24", "--temperature", "0"], capture_output=True, text=True)
        print("bitune-rt:", out.stdout.strip() if out.returncode == 0 else "FAILED " + out.stderr[-400:])
        try:
            import llama_cpp
        except ImportError:
            print("llama.cpp: not installed (bench/setup-llama-cpp.sh)")
            continue
        llm = llama_cpp.Llama(model_path=f, n_ctx=256, verbose=False)
        r = llm.create_chat_completion([{"role": "user", "content": question}], max_tokens=24,
                                       temperature=0.0, top_k=1)
        print("llama.cpp:", r["choices"][0]["message"]["content"].strip())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", default=DEFAULT_SRC, help="the Q4_1 GGUF (default: %(default)s)")
    ap.add_argument("--types", nargs="+", default=["Q4_0", "Q8_0"], choices=["Q4_0", "Q8_0"])
    ap.add_argument("--force", action="store_true", help="rewrite files that already exist")
    ap.add_argument("--check", metavar="BIN", help="then load every file in llama.cpp and in this bitune-rt binary")
    a = ap.parse_args()
    if not os.path.isfile(a.src):
        ap.error(f"model not found: {a.src} (run scripts/fetch-model.sh)")
    if ".Q4_1." not in os.path.basename(a.src):
        ap.error("--src must be a Q4_1 file named *.Q4_1.gguf")
    files = [a.src]
    for q in a.types:
        out = os.path.join(os.path.dirname(a.src), os.path.basename(a.src).replace(".Q4_1.", f".{q}."))
        files.append(out)
        if os.path.isfile(out) and not a.force:
            print(f"{out}: exists", file=sys.stderr)
            continue
        n = variant(a.src, q, out)
        print(f"{out}: {n} tensors re-quantised Q4_1 -> {q}", file=sys.stderr)
        print(out)
    if a.check:
        check(files, a.check)


if __name__ == "__main__":
    main()
