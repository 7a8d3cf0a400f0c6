#!/usr/bin/env python3
"""Independent reference numbers for the evaluation harness on a real (tiny) model.

For every hand-written item under tests/fixtures/eval/ (PIQA, ARC, CSQA, SIQA, MMLU in their
Hugging Face formats; GSM8K for generation) this computes, without any Rust code:

  * the lm-evaluation-harness context string, from the harness's task templates
    (written out again here, not read from the Rust sources);
  * each choice's continuation " " + choice, tokenized the lm-eval way (`_encode_pair`: trailing
    whitespace of the context moves to the continuation; whole = tok(context + cont),
    ctx = tok(context), cont = whole[len(ctx):], BOS added by the tokenizer);
  * the summed log-probability of the continuation, with the base model and with the Bitune
    adapter tests/fixtures/bitune/llama/init (both prompt passes over ctx[:P-1], set B
    fully visible and set C causal, per-layer mix of the post-RoPE K/V with
    α = |θ|/(|θ|+θ_init), then the sep token ctx[P-1] and the continuation causally with set C on
    the mixed cache);
  * acc and acc_norm (lm-eval: argmax of the sum; argmax of the sum over the choice's character
    count, first index on ties), MMLU aggregated by subject and size-weighted;
  * for GSM8K the greedy generation (at most MAX_NEW tokens, the stop strings of the harness's gsm8k.yaml plus EOS,
    text cut at the first stop), the two extraction filters and exact match.

The model is `Functional` of scripts/bitune_reference.py in float64 (itself checked there against
the Hugging Face classes). Every log-likelihood is cross-checked here against a second path in
float32: the stock Hugging Face model (base) and HF + PEFT with two named adapters orchestrated as
the authors' `_pass_fn` (Bitune); generations are cross-checked token for token, and the smallest
top-1/top-2 logit gap along each greedy path is recorded so a near tie would be visible.

Writes tests/fixtures/eval_model/<task>_{base,bitune}.json, which tests/eval_model.rs compares
against `run_eval` through the Rust engine.

Usage: .pyref/bin/python scripts/eval_reference.py
"""
import json
import math
import os
import re
import sys

import torch
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bitune_reference as R  # noqa: E402  (Functional, HfBitune, masks)

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
MODEL = "tests/fixtures/models/llama"
ADAPTER = "tests/fixtures/bitune/llama/init"
EVAL = "tests/fixtures/eval"
OUT = "tests/fixtures/eval_model"
# The harness's GSM8K budget (gsm8k.yaml: 256), so `run_eval` can be compared as is.
MAX_NEW = 256
STOPS = ["Question:", "</s>", "<|im_end|>", "<|end_of_text|>"]
TASKS = {  # name -> (data path, has acc_norm)
    "piqa": ("piqa.jsonl", True),
    "arc": ("arc.jsonl", True),
    "csqa": ("csqa.jsonl", True),
    "siqa": ("siqa.jsonl", False),
    "mmlu": ("mmlu", False),
}


# ----------------------------------------------------------------------------------------------
# Data and templates (the harness's task YAMLs)
# ----------------------------------------------------------------------------------------------

def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def read_mmlu(folder):
    """hails/mmlu_no_train layout: one folder per subject with its test split; `all/` repeats
    every subject and dev files are not the test split."""
    rows = []
    for subject in sorted(os.listdir(folder)):
        f = os.path.join(folder, subject, "test.jsonl")
        if subject != "all" and os.path.isfile(f):
            rows += read_jsonl(f)
    return rows


def mc_doc(task, d):
    """(context, choices, gold, group) of one row."""
    if task == "piqa":
        choices = [d["sol1"], d["sol2"]]
        ctx = f"Question: {d['goal']}\n\nChoices:\n{d['sol1']}\n{d['sol2']}\n\nAnswer:"
        return ctx, choices, int(d["label"]), None
    if task in ("arc", "csqa"):
        texts, labels = d["choices"]["text"], d["choices"]["label"]
        ctx = f"Question: {d['question']}\n\nChoices:\n" + "\n".join(texts) + "\n\nAnswer:"
        return ctx, list(texts), labels.index(d["answerKey"]), None
    if task == "siqa":
        ctx = ("Question: Given the context, answer correctly the question.\n"
               f"Context: {d['context']}\nQuestion: {d['question']}\n\nChoices:\n"
               f"(0) {d['answerA']}\n(1) {d['answerB']}\n(2) {d['answerC']}\n\nAnswer:")
        return ctx, ["(0)", "(1)", "(2)"], int(d["label"]) - 1, None
    if task == "mmlu":
        c = d["choices"]
        ctx = (f"Question: {d['question'].strip()}\n(0). {c[0]}\n(1). {c[1]}\n(2). {c[2]}\n(3). {c[3]}"
               "\n\nAnswer:")
        return ctx, ["(0)", "(1)", "(2)", "(3)"], int(d["answer"]), d["subject"]
    raise ValueError(task)


# ----------------------------------------------------------------------------------------------
# Tokenization (lm-eval `_encode_pair`, HFLM with add_bos_token=True)
# ----------------------------------------------------------------------------------------------

class Tok:
    def __init__(self, model_dir):
        from transformers import PreTrainedTokenizerFast
        self.t = PreTrainedTokenizerFast(tokenizer_file=os.path.join(model_dir, "tokenizer.json"))

    def enc(self, s):
        return self.t(s, add_special_tokens=True)["input_ids"]

    def dec(self, ids):
        return self.t.decode(ids, skip_special_tokens=True)

    def encode_pair(self, context, continuation):
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces > 0:
            continuation = context[-n_spaces:] + continuation
            context = context[:-n_spaces]
        whole = self.enc(context + continuation)
        ctx = self.enc(context)
        return ctx, whole[len(ctx):], whole[:len(ctx)] == ctx


# ----------------------------------------------------------------------------------------------
# Two independent models: Functional float64 (recorded) and HF(+PEFT) float32 (cross-check)
# ----------------------------------------------------------------------------------------------

class Ref:
    def __init__(self, adapter):
        model_dir = os.path.join(ROOT, MODEL)
        self.M = R.Functional(model_dir, torch.float64)
        self.adapter = adapter
        from transformers import AutoModelForCausalLM
        if adapter is None:
            self.hf = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="eager",
                                                           torch_dtype=torch.float32).eval()
            return
        init = os.path.join(ROOT, adapter)
        cfg = json.load(open(os.path.join(init, "adapter_config.json")))
        bcfg = json.load(open(os.path.join(init, "bitune_config.json")))
        # Functional and HfBitune use bitune_reference's module constants for the scale and θ_init.
        assert cfg["lora_alpha"] / cfg["r"] == R.SCALE, cfg
        assert bcfg["theta_init"] == R.THETA_INIT and bcfg["method"] == "bitune", bcfg
        th = load_file(os.path.join(init, "bitune.safetensors"))
        self.params = {
            "C": {k: v.to(torch.float64) for k, v in load_file(os.path.join(init, "adapter_model.safetensors")).items()},
            "B": {k: v.to(torch.float64) for k, v in
                  load_file(os.path.join(init, "bidirectional", "adapter_model.safetensors")).items()},
            "theta_k": th["theta_k"].to(torch.float64),
            "theta_v": th["theta_v"].to(torch.float64),
        }
        self.hf = R.HfBitune(model_dir, init)

    def next_logits(self, ids, P):
        """Logits at positions P-1..len-1 (float64 functional): row i predicts ids[P+i]."""
        ids = torch.tensor(ids)
        L = ids.shape[0]
        with torch.no_grad():
            if self.adapter is None:
                logits, _ = self.M.forward(ids, torch.arange(L), R.causal(L), None)
                return logits[P - 1:]
            # bitune_reference's example_logits drops the last row (training has no target for
            # it); append a dummy token so every real position keeps its row.
            ext = torch.cat((ids, ids[-1:]))
            return R.example_logits(self.M, "bitune", ext, P, self.params)

    def next_logits_hf(self, ids, P):
        ids_t = torch.tensor(ids)
        with torch.no_grad():
            if self.adapter is None:
                return self.hf(input_ids=ids_t[None]).logits[0, P - 1:]
            ext = torch.cat((ids_t, ids_t[-1:]))
            return self.hf.example_logits("bitune", ext, P)

    def score(self, ctx, cont):
        """Per-token log-probs of `cont` after `ctx` (P = len(ctx)); the input is ctx + cont
        without its last token, as lm-eval feeds it, so the logits at P-1.. score cont."""
        ids, P = ctx + cont, len(ctx)
        lp = torch.log_softmax(self.next_logits(ids, P)[:len(cont)], -1)
        got = lp.gather(-1, torch.tensor(cont)[:, None])[:, 0]
        greedy = bool((lp.argmax(-1) == torch.tensor(cont)).all())
        lp32 = torch.log_softmax(self.next_logits_hf(ids, P)[:len(cont)].double(), -1)
        got32 = lp32.gather(-1, torch.tensor(cont)[:, None])[:, 0]
        err = abs(got32.sum().item() - got.sum().item()) / max(abs(got.sum().item()), 1e-9)
        assert err < 1e-5, f"HF float32 path disagrees: {got32.sum().item()} vs {got.sum().item()}"
        return got.tolist(), greedy

    def generate(self, prompt_ids, tok, max_new):
        """Greedy decoding with the stop rules of gsm8k.yaml (no cache: every step re-runs the
        prefill and the answer pass over everything generated so far, which is what the cached
        loop computes)."""
        P, out, min_gap = len(prompt_ids), [], math.inf
        eos = self.M.cfg["eos_token_id"]
        while len(out) < max_new:
            ids = prompt_ids + out
            row = self.next_logits(ids, P)[-1]
            top2 = torch.topk(row, 2).values
            min_gap = min(min_gap, (top2[0] - top2[1]).item())
            nxt = int(row.argmax())
            hf_nxt = int(self.next_logits_hf(ids, P)[-1].argmax())
            assert hf_nxt == nxt, f"HF float32 greedy token differs at step {len(out)}"
            if nxt == eos:
                break
            out.append(nxt)
            if any(s in tok.dec(out) for s in STOPS):
                break
        text = tok.dec(out)
        cut = min([text.find(s) for s in STOPS if s in text], default=len(text))
        return out, text[:cut], min_gap


# ----------------------------------------------------------------------------------------------
# GSM8K extraction and exact match (gsm8k.yaml)
# ----------------------------------------------------------------------------------------------

def strict_match(text):
    m = re.search(r"#### (-?[0-9.,]+)", text)
    return m.group(1).strip() if m else "[invalid]"


def flexible_extract(text):
    ms = re.findall(r"(-?[$0-9.,]{2,})|(-?[0-9]+)", text)
    if not ms:
        return "[invalid]"
    m = ms[-1]
    return (m[0] or m[1]).strip()


def normalize(s):
    for pat in [",", r"\$", r"(?s).*#### "]:
        s = re.sub(pat, "", s)
    s = re.sub(r"\.$", "", s)
    return s.lower()


def exact_match(pred, ref):
    return float(normalize(pred) == normalize(ref))


# ----------------------------------------------------------------------------------------------
# Tasks
# ----------------------------------------------------------------------------------------------

def argmax(xs):
    best = 0
    for i, x in enumerate(xs):
        if x > xs[best]:
            best = i
    return best


def mean(xs):
    return sum(xs) / len(xs)


def run_mc(task, ref, tok):
    path, norm = TASKS[task]
    full = os.path.join(ROOT, EVAL, path)
    rows = read_mmlu(full) if task == "mmlu" else read_jsonl(full)
    items, per_group = [], {}
    for doc_id, d in enumerate(rows):
        ctx_s, choices, gold, group = mc_doc(task, d)
        conts, lps = [], []
        for c in choices:
            ctx, cont, boundary_ok = tok.encode_pair(ctx_s, " " + c)
            lp, greedy = ref.score(ctx, cont)
            conts.append({"continuation": " " + c, "tokens": cont, "boundary_ok": boundary_ok,
                          "token_logprobs": lp, "logprob": sum(lp), "greedy": greedy, "n_tokens": len(cont)})
            lps.append(sum(lp))
        pred = argmax(lps)
        pred_norm = argmax([lp / len(c) for lp, c in zip(lps, choices)])
        it = {"doc_id": doc_id, "context": ctx_s, "context_tokens": tok.enc(ctx_s), "choices": choices,
              "gold": gold, "group": group, "scores": conts, "prediction": pred,
              "acc": float(pred == gold)}
        if norm:
            it["prediction_norm"] = pred_norm
            it["acc_norm"] = float(pred_norm == gold)
        items.append(it)
        g = per_group.setdefault(group, {"acc,none": []} | ({"acc_norm,none": []} if norm else {}))
        for k in g:
            g[k].append(it[k.split(",")[0]])
    metrics = {}
    if list(per_group) == [None]:
        metrics[task] = {k: mean(v) for k, v in per_group[None].items()}
    else:
        # MMLU: size-weighted mean of the subject means (= the mean over all items) and each subject
        n = sum(len(g["acc,none"]) for g in per_group.values())
        metrics[task] = {"acc,none": sum(mean(g["acc,none"]) * len(g["acc,none"]) for g in per_group.values()) / n}
        for s, g in sorted(per_group.items()):
            metrics[f"{task}_{s}"] = {k: mean(v) for k, v in g.items()}
    return items, metrics


def run_gsm8k(ref, tok):
    rows = read_jsonl(os.path.join(ROOT, EVAL, "gsm8k.jsonl"))
    items, ems, emf = [], [], []
    for doc_id, d in enumerate(rows):
        prompt = f"Question: {d['question']}\n\nAnswer:"
        ids = tok.enc(prompt)
        gen_ids, text, gap = ref.generate(ids, tok, MAX_NEW)
        s, f = strict_match(text), flexible_extract(text)
        es, ef = exact_match(s, d["answer"]), exact_match(f, d["answer"])
        ems.append(es), emf.append(ef)
        items.append({"doc_id": doc_id, "prompt": prompt, "prompt_tokens": ids, "generated_tokens": gen_ids,
                      "generation": text, "min_top2_gap": gap, "gold": d["answer"],
                      "prediction": {"strict-match": s, "flexible-extract": f},
                      "exact_match": {"strict-match": es, "flexible-extract": ef}})
    return items, {"gsm8k": {"exact_match,strict-match": mean(ems), "exact_match,flexible-extract": mean(emf)}}


def main():
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    tok = Tok(os.path.join(ROOT, MODEL))
    os.makedirs(os.path.join(ROOT, OUT), exist_ok=True)
    for name, adapter in (("base", None), ("bitune", ADAPTER)):
        ref = Ref(adapter)
        for task in list(TASKS) + ["gsm8k"]:
            items, metrics = run_gsm8k(ref, tok) if task == "gsm8k" else run_mc(task, ref, tok)
            data = os.path.join(EVAL, TASKS[task][0] if task in TASKS else "gsm8k.jsonl")
            rec = {"generated_by": "scripts/eval_reference.py", "task": task, "model": MODEL,
                   "adapter": adapter, "data": data, "max_new": MAX_NEW if task == "gsm8k" else None,
                   "metrics": metrics, "items": items}
            path = os.path.join(ROOT, OUT, f"{task}_{name}.json")
            with open(path, "w", encoding="utf-8") as f:
                json.dump(rec, f, indent=1, ensure_ascii=False)
                f.write("\n")
            gaps = [it["min_top2_gap"] for it in items if "min_top2_gap" in it]
            extra = f" min top-2 gap {min(gaps):.2e}" if gaps else ""
            print(f"{name:6s} {task:5s} {json.dumps(metrics[task])}{extra}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
