#!/usr/bin/env bash
# One CPU benchmark run, bitune-rt and the reference stack side by side on the same machine and
# the same work: inference (prefill/decode, 50:200 and 200:50) and one train step (Bitune vs
# LoRA). Writes bench/results/<date>-cpu-<commit>.json. Needs scripts/setup-python.sh for the
# PyTorch side (skipped with a note when .pyref is absent).
# BITUNE_BIN=path times a binary built elsewhere (an older commit, for before/after comparisons on
# one machine and day); the file is then named after the commit that binary reports.
set -euo pipefail
cd "$(dirname "$0")/.."
threads="${THREADS:-2}"
stamp=$(date -u +%Y-%m-%d)
tmp=$(mktemp -d)
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
else
    for f in hf_50_200 hf_200_50 torch_step; do echo '{"skipped": "no .pyref"}' > "$tmp/$f.json"; done
fi
python3 - "$tmp" "$out" <<'PY'
import json, sys, os
tmp, out = sys.argv[1], sys.argv[2]
r = {k: json.load(open(os.path.join(tmp, k + ".json"))) for k in
     ["rs_50_200", "rs_200_50", "hf_50_200", "hf_200_50", "torch_step"]}
rs = r["rs_50_200"]
summary = {"device": rs["device"], "commit": rs["commit"], "date": rs["date"], "runs": r}
try:
    hf, base = r["hf_50_200"], rs["results"]["base"]
    summary["decode_speedup_vs_transformers"] = hf["decode_ms_per_tok"] / base["decode_ms_per_tok"]
    summary["prefill_speedup_vs_transformers"] = hf["prefill_ms"] / base["prefill_ms"]
    summary["train_step_speedup_vs_pytorch_bitune"] = r["torch_step"]["bitune_step_s"] / rs["results"]["train"]["bitune_step_s"]
except (KeyError, TypeError, ZeroDivisionError):
    pass
json.dump(summary, open(out, "w"), indent=2)
print(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=2))
PY
echo "wrote $out"
