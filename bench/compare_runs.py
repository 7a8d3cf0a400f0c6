#!/usr/bin/env python3
"""Ratios of several bench/run_cpu.sh results side by side, as a markdown table.

Every ratio is taken within one run (bitune-rt against the peer timed in the same run, or one
bitune-rt figure against another), since only ratios from one run mean anything on a shared
machine. > 1 means bitune-rt is faster, except the rows that name a cost ("/ base", "/ LoRA").

    python3 bench/compare_runs.py before=bench/results/A.json after=bench/results/B.json ...
"""
import json
import sys


def ratios(d):
    r = d["runs"]
    a, b = r["rs_50_200"]["results"], r["rs_200_50"]["results"]
    hf, hf2, ts = r["hf_50_200"], r["hf_200_50"], r["torch_step"]
    o = {
        "decode 50:200 vs transformers": hf["decode_ms_per_tok"] / a["base"]["decode_ms_per_tok"],
        "decode 200:50 vs transformers": hf2["decode_ms_per_tok"] / b["base"]["decode_ms_per_tok"],
        "prefill 50 vs transformers": hf["prefill_ms"] / a["base"]["prefill_ms"],
        "prefill 200 vs transformers": hf2["prefill_ms"] / b["base"]["prefill_ms"],
        "LoRA step vs PyTorch": ts["lora_step_s"] / a["train"]["lora_step_s"],
        "Bitune step vs PyTorch": ts["bitune_step_s"] / a["train"]["bitune_step_s"],
        "Bitune step / LoRA step (ideal 1.196)": a["train"]["bitune_step_s"] / a["train"]["lora_step_s"],
        "LoRA decode / base": a["lora"]["decode_ms_per_tok"] / a["base"]["decode_ms_per_tok"],
        "Bitune decode / base": a["bitune"]["decode_ms_per_tok"] / a["base"]["decode_ms_per_tok"],
        "dual prefill / causal prefill (50)": a["bitune"]["prefill_ms"] / a["base"]["prefill_ms"],
    }
    # bench's own adapter cost (median over rounds of the states decoding in turn), over every
    # quant and prompt:answer timed: the figure the 3% budget holds.
    over = [v["results"][s]["decode_over_base"] for k, v in r.items()
            if k.startswith("rs_") and "results" in v for s in ("lora", "bitune")
            if "decode_over_base" in v["results"].get(s, {})]
    if over:
        o[f"adapter decode_over_base, least of {len(over)}"] = min(over)
        o[f"adapter decode_over_base, most of {len(over)}"] = max(over)
    for kind in ["decode", "prefill"]:
        by_quant = d.get(f"{kind}_speedup_vs_llama_cpp") or {}
        for q, shapes in sorted(by_quant.items()):
            for s, v in shapes.items():
                if isinstance(v, (int, float)):
                    o[f"{kind} vs llama.cpp {q} {s}"] = v
    return o


def main():
    named = [a.split("=", 1) for a in sys.argv[1:]]
    if not named or any(len(n) != 2 for n in named):
        sys.exit(__doc__)
    cols = [(n, ratios(json.load(open(p)))) for n, p in named]
    print("| ratio | " + " | ".join(n for n, _ in cols) + " |")
    print("|---|" + "---|" * len(cols))
    for k in cols[0][1]:
        # The adapter's cost is held to 3%: a third decimal tells 1.029 from 1.034.
        f = ".3f" if "decode_over_base" in k else ".2f"
        print(f"| {k} | " + " | ".join(f"{c.get(k, float('nan')):{f}}" for _, c in cols) + " |")


if __name__ == "__main__":
    main()
