#!/usr/bin/env python3
"""PyTorch reference for Bitune with DoRA or IA3 adapter sets (PEFT's DoRA and IA3 layers), and the
PEFT-loadability check of adapter folders written by bitune-rt.

Builds on scripts/bitune_reference.py (same functional transformer, segment passes, masks, mixing,
loss, HF AdamW, HF+PEFT orchestration), with the target linear replaced per adapter type:
  * DoRA (PEFT `use_dora`): y = W x + b + (m/n - 1)*(W x) + (m/n)*s*B(A x), n = ||W + s*B A|| per
    output row, detached (PEFT 0.21 `DoraLinearLayer.forward`: the bias is subtracted from the base
    result before the scaling, so it stays outside the scaled term). Each set has its own m.
  * IA3: y = W (l*x) + b for feed-forward modules (the MLP linears), y = l*(W x + b) otherwise
    (PEFT 0.21 `ia3.Linear.forward` scales the base layer's result, bias included).
Cross-checks, per model and method: float32 functional and HF + PEFT's own DoRA/IA3 layers (two
named adapters "default"/"prefill" loaded from the fixture folders) against the float64 functional
values; float64 finite differences (for DoRA with the norm held fixed, as the backward detaches
it); the identities and the dθ formula of bitune_reference.py.

Fixture layout (tests/fixtures/peft/<dora|ia3>/<model>/), same naming as tests/fixtures/bitune:
  init/  PEFT folders (set C; bidirectional/ = set B), bitune.safetensors, bitune_config.json
  batch.json, <method>.safetensors with loss, losses, grad.{C,B}.<peft name>, grad.theta_{k,v},
  step3.* ; <peft name> adds ...<module>.lora_magnitude_vector [out] (DoRA) or
  ...<module>.ia3_l ([out,1], or [1,in] for a feed-forward module) (IA3).

Usage: .pyref/bin/python scripts/peft_reference.py [--peft dora ia3] [--models llama gemma phi]
       .pyref/bin/python scripts/peft_reference.py --check-rust-adapter DIR --model llama
"""
import argparse
import json
import os
import sys

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bitune_reference as br  # noqa: E402

METHODS = ["bitune", "lora", "no-mixing", "shared-weights"]
FEEDFORWARD = {"gate_proj", "up_proj", "down_proj", "fc1", "fc2"}
PREFIX = "base_model.model."


def vec_name(layer, module, kind):
    leaf = "lora_magnitude_vector" if kind == "dora" else "ia3_l"
    return f"{PREFIX}model.layers.{layer}.{br.MODULE_PARENT[module]}.{module}.{leaf}"


def dora_norm(W, A, B, scale=br.SCALE):
    return torch.linalg.norm(W + scale * (B @ A), dim=1)


class PeftFunctional(br.Functional):
    """The functional transformer with DoRA / IA3 linears; adapters: {module path: (kind, ...)}."""

    scale = br.SCALE  # LoRA alpha / r of the DoRA sets

    def lin(self, path, x, ad):
        W, b = self.w[path + ".weight"], self.w.get(path + ".bias")
        a = None if ad is None else ad.get(path)
        if a is None:
            return br.Functional.lin(self, path, x, None)
        if a[0] == "dora":
            _, A, B, m = a
            base = x @ W.T
            g = m / dora_norm(W, A, B, self.scale).detach()
            y = base + (g - 1) * base + g * (self.scale * ((x @ A.T) @ B.T))
            return y if b is None else y + b
        l = a[1].flatten()
        if path.rsplit(".", 1)[1] in FEEDFORWARD:
            y = (x * l) @ W.T
            return y if b is None else y + b
        y = x @ W.T
        return (y if b is None else y + b) * l


def peft_view(params, s):
    """{peft name: tensor} of one set -> {module path: adapter} for PeftFunctional.lin."""
    out, d = {}, params[s]
    for name, t in d.items():
        if name.endswith(".lora_A.weight"):
            mod = name[:-len(".lora_A.weight")]
            out[mod[len(PREFIX):]] = ("dora", t, d[mod + ".lora_B.weight"], d[mod + ".lora_magnitude_vector"])
        elif name.endswith(".ia3_l"):
            out[name[len(PREFIX):-len(".ia3_l")]] = ("ia3", t)
    return out


# bitune_reference's passes look the adapter view up by this module-level name.
br.lora_view = peft_view


def make_params(M, seed, kind):
    """Off-init values, so every term has an effect: B != 0, m != n (m/n - 1 != 0), l != 1."""
    g = torch.Generator().manual_seed(seed)
    params = {}
    for s in ("C", "B"):
        d = {}
        for layer in range(M.n_layers):
            for mod in M.targets:
                W = M.w[f"model.layers.{layer}.{br.MODULE_PARENT[mod]}.{mod}.weight"].double()
                out_f, in_f = W.shape
                if kind == "dora":
                    A = torch.randn(br.RANK, in_f, generator=g, dtype=torch.float32) * 0.1
                    B = torch.randn(out_f, br.RANK, generator=g, dtype=torch.float32) * 0.05
                    n = dora_norm(W, A.double(), B.double())
                    m = n * (0.8 + 0.4 * torch.rand(out_f, generator=g, dtype=torch.float64))
                    d[br.peft_name(layer, mod, "A")], d[br.peft_name(layer, mod, "B")] = A, B
                    d[vec_name(layer, mod, kind)] = m.float()
                else:
                    shape = (1, in_f) if mod in FEEDFORWARD else (out_f, 1)
                    d[vec_name(layer, mod, kind)] = 0.7 + 0.6 * torch.rand(shape, generator=g, dtype=torch.float32)
        params[s] = d
    lora_like = br.make_params(M, seed)
    params["theta_k"], params["theta_v"] = lora_like["theta_k"], lora_like["theta_v"]
    return params


def peft_config(M, kind, model):
    base = f"tests/fixtures/models/{model}"
    if kind == "dora":
        return {"peft_type": "LORA", "r": br.RANK, "lora_alpha": br.LORA_ALPHA, "target_modules": M.targets,
                "lora_dropout": 0.0, "bias": "none", "use_dora": True, "task_type": "CAUSAL_LM",
                "base_model_name_or_path": base}
    return {"peft_type": "IA3", "target_modules": M.targets,
            "feedforward_modules": [t for t in M.targets if t in FEEDFORWARD], "task_type": "CAUSAL_LM",
            "base_model_name_or_path": base}


def write_init(out_dir, model, M, params, kind):
    init = os.path.join(out_dir, "init")
    os.makedirs(os.path.join(init, "bidirectional"), exist_ok=True)
    for sub, s in (("", "C"), ("bidirectional", "B")):
        d = os.path.join(init, sub)
        json.dump(peft_config(M, kind, model), open(os.path.join(d, "adapter_config.json"), "w"), indent=2)
        save_file({k: v.contiguous() for k, v in params[s].items()}, os.path.join(d, "adapter_model.safetensors"))
    save_file({"theta_k": params["theta_k"], "theta_v": params["theta_v"]}, os.path.join(init, "bitune.safetensors"))
    json.dump({"method": "bitune", "theta_init": br.THETA_INIT, "base_model": f"tests/fixtures/models/{model}"},
              open(os.path.join(init, "bitune_config.json"), "w"), indent=2)
    return init


def hf_name(n):
    """PEFT's parameter name -> its saved name (the fixture's), or None for non-adapter params."""
    if ".lora_" not in n and ".ia3_l." not in n:
        return None
    n = n.replace(".default", "").replace(".prefill", "")
    return n[:-len(".weight")] if n.endswith(".lora_magnitude_vector.weight") else n


class HfPeft(br.HfBitune):
    """bitune_reference's HF + PEFT orchestration, reading PEFT's DoRA magnitudes / IA3 vectors."""

    def lora_params(self):
        out = {}
        for n, p in self.model.named_parameters():
            name = hf_name(n)
            if name is not None:
                out[("C." if ".default" in n else "B.") + name] = p
        return out


def check_finite_differences(M, method, batch, params, g, ck, kind, h=1e-4):
    """4th-order central differences (float64) at the largest-|grad| entry of a few tensors. For DoRA
    the norm n is held at its unperturbed value (scaling m by n'/n), as the backward detaches it."""
    p = br.clone_params(params, M.dtype, False)
    N, T = M.n_layers, M.targets
    if kind == "dora":
        picks = ["C." + br.peft_name(0, T[0], "A"), "C." + br.peft_name(N - 1, T[-1], "B"),
                 "C." + vec_name(0, T[2], kind), "B." + br.peft_name(0, T[-1], "A"), "B." + vec_name(N - 1, T[1], kind)]
    else:
        picks = ["C." + vec_name(0, T[0], kind), "C." + vec_name(N - 1, T[-1], kind), "C." + vec_name(0, T[3], kind),
                 "B." + vec_name(0, T[-2], kind), "B." + vec_name(N - 1, T[1], kind)]
    if method == "lora":
        picks = [x for x in picks if x.startswith("C.")]
    else:
        picks += ["theta_k", "theta_v"]
    flat = dict(br.trainable(method, p))
    gmax = max(x.abs().max().item() for x in g.values())
    worst = 0.0
    for name in picks:
        gi = g[name].reshape(-1)
        idx = int(gi.abs().argmax())
        t = flat[name].view(-1)
        old = t[idx].item()
        mname = None
        if kind == "dora" and (".lora_A." in name or ".lora_B." in name):
            mod = name.split(".lora_")[0]
            mname = mod + ".lora_magnitude_vector"
            W = M.w[mod[2 + len(PREFIX):] + ".weight"]
            ab = lambda: (flat[mod + ".lora_A.weight"], flat[mod + ".lora_B.weight"])  # noqa: E731
            n0, m0 = dora_norm(W, *ab()).clone(), flat[mname].clone()
        f = {}
        with torch.no_grad():
            for k in (-2, -1, 1, 2):
                t[idx] = old + k * h
                if mname:
                    flat[mname].copy_(m0 * dora_norm(W, *ab()) / n0)
                f[k] = br.batch_loss(M, method, batch, p).item()
            t[idx] = old
            if mname:
                flat[mname].copy_(m0)
        fd = (f[-2] - 8 * f[-1] + 8 * f[1] - f[2]) / (12 * h)
        an = gi[idx].item()
        worst = max(worst, abs(fd - an) / max(abs(an), 1e-4 * gmax))
    ck.check(f"{method}: autograd vs central finite differences ({len(picks)} entries, worst rel)", worst, 1e-6)


def run_model(kind, model, args, ck, summary):
    model_dir = os.path.join(args.models_root, model)
    out_dir = os.path.join(args.out_root, kind, model)
    os.makedirs(out_dir, exist_ok=True)
    print(f"== {kind} {model}", flush=True)
    M64, M32 = PeftFunctional(model_dir, torch.float64), PeftFunctional(model_dir, torch.float32)
    seed = 4321 + sum(map(ord, model + kind))
    params = make_params(M64, seed, kind)
    batch = br.make_batch(M64.cfg["vocab_size"], seed + 1)
    json.dump({"examples": [{"ids": ids.tolist(), "prompt_len": P} for ids, P in batch]},
              open(os.path.join(out_dir, "batch.json"), "w"))
    init = write_init(out_dir, model, M64, params, kind)
    br.check_hf_base(M32, model_dir, batch, ck)
    hf = HfPeft(model_dir, init)
    br.check_identities(M64, batch, params, ck)
    br.check_theta_formula(M64, batch, params, ck)
    for method in METHODS:
        p64 = br.clone_params(params, torch.float64)
        loss, g = br.grads(M64, method, batch, p64)
        loss32, g32 = br.grads(M32, method, batch, br.clone_params(params, torch.float32))
        hl, hg = hf.loss_and_grads(method, batch)
        assert set(hg) == set(g), sorted(set(hg) ^ set(g))[:5]
        ck.check(f"{method}: f32 functional loss vs f64 (rel)", br.rel_err(loss32, loss), 1e-5)
        ck.check(f"{method}: HF+PEFT {kind} f32 loss vs f64 (rel)", br.rel_err(hl, loss), 1e-5)
        ck.check(f"{method}: f32 functional grads vs f64 (FIXTURE_TOL ratio)", br.grad_tol_ratio(g32, g), 1.0)
        ck.check(f"{method}: HF+PEFT {kind} f32 grads vs f64 (FIXTURE_TOL ratio)", br.grad_tol_ratio(hg, g), 1.0)
        if args.fd:
            check_finite_differences(M64, method, batch, params, g, ck, kind)
        losses, norms = br.train(M64, method, batch, p64)
        p32t = br.clone_params(params, torch.float32)
        losses32, _ = br.train(M32, method, batch, p32t)
        ck.check(f"{method}: f32 3-step losses vs f64 (rel)", br.rel_err(torch.tensor(losses32), torch.tensor(losses)), 1e-5)
        step_err = max((a.detach().double() - b.detach()).abs().max().item()
                       for (_, a), (_, b) in zip(br.trainable(method, p32t), br.trainable(method, p64)))
        ck.check(f"{method}: f32 step-3 params vs f64 (max abs)", step_err, br.STEP3_ATOL)
        out = {"loss": loss.reshape(1).float(), "losses": torch.tensor(losses, dtype=torch.float32)}
        out.update({"grad." + k: v.float() for k, v in g.items()})
        out.update({"step3." + k: p.detach().float() for k, p in br.trainable(method, p64)})
        save_file({k: v.contiguous() for k, v in out.items()}, os.path.join(out_dir, f"{method}.safetensors"))
        summary.append((kind, model, method, loss.item(), norms[0], losses))


def check_rust_adapter(adapter_dir, model, models_root, ck):
    """A folder written by bitune-rt loads with PeftModel.from_pretrained (each set's folder): every
    saved tensor lands in the model, no adapter parameter is left unset, and PEFT's layers give the
    functional model's logits with that set."""
    from transformers import AutoModelForCausalLM
    from peft import PeftModel
    model_dir = os.path.join(models_root, model)
    M = PeftFunctional(model_dir, torch.float32)
    ids = torch.arange(3, 3 + 9) % M.cfg["vocab_size"]
    for sub in ("", "bidirectional"):
        d = os.path.join(adapter_dir, sub)
        if not os.path.exists(os.path.join(d, "adapter_config.json")):
            continue
        base = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="eager", dtype=torch.float32)
        peft_model = PeftModel.from_pretrained(base, d).eval()
        saved = load_file(os.path.join(d, "adapter_model.safetensors"))
        got = {hf_name(n): p for n, p in peft_model.named_parameters() if hf_name(n) is not None}
        assert set(got) == set(saved), sorted(set(got) ^ set(saved))[:5]
        err = max((got[k].detach() - saved[k]).abs().max().item() for k in saved)
        cfg = json.load(open(os.path.join(d, "adapter_config.json")))
        if cfg["peft_type"] == "LORA":
            M.scale = cfg["lora_alpha"] / cfg["r"]
        what = f"{os.path.basename(adapter_dir.rstrip('/'))}/{sub or 'C'} ({cfg['peft_type']}, use_dora={cfg.get('use_dora')})"
        ck.check(f"{what}: {len(saved)} tensors loaded by PEFT (max |diff|)", err, 0.0)
        with torch.no_grad():
            ref = peft_model(input_ids=ids[None]).logits[0]
            mine, _ = M.forward(ids, torch.arange(len(ids)), br.causal(len(ids)), peft_view({"C": saved}, "C"))
        ck.check(f"{what}: PEFT logits vs functional (rel)", br.rel_err(mine, ref), 1e-5)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--peft", nargs="*", default=["dora", "ia3"], choices=["dora", "ia3"])
    ap.add_argument("--models", nargs="*", default=["llama", "gemma", "phi"])
    ap.add_argument("--models-root", default=os.path.join(br.ROOT, "tests/fixtures/models"))
    ap.add_argument("--out-root", default=os.path.join(br.ROOT, "tests/fixtures/peft"))
    ap.add_argument("--no-fd", dest="fd", action="store_false")
    ap.add_argument("--check-rust-adapter", metavar="DIR", help="only check that DIR loads with PEFT")
    ap.add_argument("--model", default="llama", help="base model of --check-rust-adapter")
    args = ap.parse_args()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    torch.manual_seed(0)
    ck, summary = br.Checker(), []
    if args.check_rust_adapter:
        check_rust_adapter(args.check_rust_adapter, args.model, args.models_root, ck)
        print(f"\n{len(ck.lines)} checks passed")
        return
    for kind in args.peft:
        for model in args.models:
            run_model(kind, model, args, ck, summary)
    print("\npeft  model   method           loss        |grad| at init  losses (3 steps)")
    for kind, model, method, loss, norm, losses in summary:
        print(f"{kind:5s} {model:7s} {method:16s} {loss:.8f}  {norm:12.6f}    " + " ".join(f"{x:.8f}" for x in losses))
    print(f"\n{len(ck.lines)} checks passed")


if __name__ == "__main__":
    sys.exit(main())
