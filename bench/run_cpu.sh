#!/usr/bin/env bash
# One CPU benchmark run, bitune-rt and the reference stacks side by side on the same machine and
# the same work: inference (prefill/decode, 50:200 and 200:50) and one train step (Bitune vs
# LoRA). Writes bench/results/<date>-cpu-<commit>.json. Needs scripts/setup-python.sh for the
# PyTorch side (skipped with a note when .pyref is absent).
# The llama.cpp peer (bench/llama_cpp_bench.py; install with bench/setup-llama-cpp.sh, skipped
# with a note when absent) runs on the same GGUF files and thread count as bitune-rt, for each of
# Q4_0, Q4_1 (the default model) and Q8_0 (made by bench/quant_variants.py next to the Q4_1 file);
# bitune-rt is timed on each of them too, and the summary gets decode/prefill speedups per quant
# and prompt:answer (llama.cpp's time ÷ bitune-rt's, > 1 when bitune-rt is faster).
# BITUNE_BIN=path times a binary built elsewhere (an older commit, for before/after comparisons on
# one machine and day). `bench` reports the commit of the checkout it runs in, so run this script
# from a worktree of the binary's commit (`git worktree add /tmp/old <commit>`) to name it right.
set -euo pipefail
cd "$(dirname "$0")/.."
threads="${THREADS:-2}"
stamp=$(date -u +%Y-%m-%d)
tmp=$(mktemp -d)
models="${BITUNE_HOME:-$HOME/.cache/bitune-rt}/models"
name=SmolLM2-135M-Instruct
if [ -n "${BITUNE_BIN:-}" ]; then
    bin="$BITUNE_BIN"
else
    cargo build --release --quiet
    bin=target/release/bitune-rt
fi
$bin bench --json --threads "$threads" --prompt 50 --answer 200 --train --repeat 3 > "$tmp/rs_50_200.json"
commit=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["commit"])' "$tmp/rs_50_200.json")
out="bench/results/${stamp}-cpu-${commit}.json"
$bin bench --json --threads "$threads" --prompt 200 --answer 50 --repeat 3 > "$tmp/rs_200_50.json"
py=.pyref/bin/python
if [ -x "$py" ]; then
    $py bench/hf_cpu_bench.py --threads "$threads" --prompt 50 --answer 200 --repeat 3 > "$tmp/hf_50_200.json"
    $py bench/hf_cpu_bench.py --threads "$threads" --prompt 200 --answer 50 --repeat 3 > "$tmp/hf_200_50.json"
    $py bench/torch_bitune_step.py --threads "$threads" --prompt 50 --answer 200 --repeat 3 > "$tmp/torch_step.json"
    $py bench/quant_variants.py --src "$models/$name.Q4_1.gguf" >&2
else
    echo "note: no .pyref (scripts/setup-python.sh): transformers, PyTorch and llama.cpp skipped" >&2
    for f in hf_50_200 hf_200_50 torch_step; do echo '{"skipped": "no .pyref"}' > "$tmp/$f.json"; done
fi
# Per quant: bitune-rt (the Q4_1 runs are the ones above: the default model is that file) and
# llama.cpp on the same file.
if [ -x "$py" ] && $py -c 'import llama_cpp' 2>/dev/null; then llama=1; else
    llama=0
    echo "note: llama-cpp-python not installed (bench/setup-llama-cpp.sh): llama.cpp skipped" >&2
fi
for q in Q4_0 Q4_1 Q8_0; do
    model="$models/$name.$q.gguf"
    for pa in 50:200 200:50; do
        p=${pa%:*} a=${pa#*:}
        if [ "$q" = Q4_1 ]; then
            cp "$tmp/rs_${p}_${a}.json" "$tmp/rs_${q}_${p}_${a}.json"
        elif [ -f "$model" ]; then
            $bin bench --json --threads "$threads" --model "$model" --prompt "$p" --answer "$a" --repeat 3 \
                > "$tmp/rs_${q}_${p}_${a}.json"
        else
            echo "{\"skipped\": \"no $model (bench/quant_variants.py)\"}" > "$tmp/rs_${q}_${p}_${a}.json"
        fi
        if [ "$llama" = 1 ] && [ -f "$model" ]; then
            $py bench/llama_cpp_bench.py --model "$model" --threads "$threads" --prompt "$p" --answer "$a" \
                --repeat 3 > "$tmp/llama_${q}_${p}_${a}.json" \
                || echo '{"failed": "bench/llama_cpp_bench.py: see stderr"}' > "$tmp/llama_${q}_${p}_${a}.json"
        else
            echo '{"skipped": "no llama-cpp-python (bench/setup-llama-cpp.sh) or no model file"}' \
                > "$tmp/llama_${q}_${p}_${a}.json"
        fi
    done
done
python3 - "$tmp" "$out" <<'PY'
import json, sys, os
tmp, out = sys.argv[1], sys.argv[2]
quants, shapes = ["Q4_0", "Q4_1", "Q8_0"], [(50, 200), (200, 50)]
keys = ["rs_50_200", "rs_200_50", "hf_50_200", "hf_200_50", "torch_step"]
keys += [f"{s}_{q}_{p}_{a}" for s in ["rs", "llama"] for q in quants for p, a in shapes
         if not (s == "rs" and q == "Q4_1")]  # rs_Q4_1_* are rs_50_200 and rs_200_50
r = {k: json.load(open(os.path.join(tmp, k + ".json"))) for k in keys}
rs = r["rs_50_200"]
summary = {"device": rs["device"], "commit": rs["commit"], "date": rs["date"], "runs": r}
try:
    hf, base = r["hf_50_200"], rs["results"]["base"]
    summary["decode_speedup_vs_transformers"] = hf["decode_ms_per_tok"] / base["decode_ms_per_tok"]
    summary["prefill_speedup_vs_transformers"] = hf["prefill_ms"] / base["prefill_ms"]
    train, torch = rs["results"]["train"], r["torch_step"]
    for m in ["bitune", "lora"]:
        summary[f"train_step_speedup_vs_pytorch_{m}"] = torch[f"{m}_step_s"] / train[f"{m}_step_s"]
except (KeyError, TypeError, ZeroDivisionError):
    pass
# llama.cpp's time ÷ bitune-rt's (base model), per quant and prompt:answer.
dec, pre = {}, {}
for q in quants:
    for p, a in shapes:
        b = r[f"rs_{p}_{a}"] if q == "Q4_1" else r[f"rs_{q}_{p}_{a}"]
        l = r[f"llama_{q}_{p}_{a}"]
        try:
            base = b["results"]["base"]
            dec.setdefault(q, {})[f"{p}:{a}"] = l["decode_ms_per_tok"] / base["decode_ms_per_tok"]
            pre.setdefault(q, {})[f"{p}:{a}"] = l["prefill_ms"] / base["prefill_ms"]
        except (KeyError, TypeError, ZeroDivisionError):
            pass
if dec:
    summary["decode_speedup_vs_llama_cpp"] = dec
    summary["prefill_speedup_vs_llama_cpp"] = pre
    summary["llama_cpp_python"] = next((v["llama_cpp_python"] for k, v in r.items()
                                        if k.startswith("llama_") and "llama_cpp_python" in v), None)
json.dump(summary, open(out, "w"), indent=2)
print(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=2))
PY
echo "wrote $out"
