#!/usr/bin/env python3
"""Independent PyTorch reference for Bitune and its ablations, as the authors' reference code runs it.

Records, per tiny fixture model, the loss, the gradients and three optimizer steps of every method,
so the Rust implementation can be compared against them (tests/fixtures/bitune/<model>/).

Two implementations are cross-checked against each other:
  * `Functional`: a small pure-PyTorch transformer (Llama/Mistral/Qwen2, Gemma, Phi) with explicit
    segment passes, explicit masks and per-set LoRA. It runs in float64 to produce the fixtures.
  * `HfBitune`: the Hugging Face model classes (eager attention, float32) wrapped by PEFT with two
    named adapters ("default" = set C, "prefill" = set B) loaded from the fixture's own adapter
    folders, with the passes orchestrated as in the authors' `_pass_fn` (4D additive masks, a
    DynamicCache holding the mixed prompt K/V, explicit positions for the answer pass).
Losses and gradients of both must agree; the functional model is additionally checked against
torch.autograd finite differences (float64), the analytic dθ formula and the identities the Rust tests check (α=0 is a causal LM, …).

Fixture layout (tests/fixtures/bitune/<model>/), all tensors float32, computed in float64:
  init/adapter_config.json, init/adapter_model.safetensors            set C (PEFT "default")
  init/bidirectional/adapter_config.json, .../adapter_model.safetensors set B (PEFT "prefill")
  init/bitune.safetensors (theta_k, theta_v [N]), init/bitune_config.json
  batch.json                 {"examples": [{"ids": [...], "prompt_len": P}, ...]}
  <method>.safetensors       loss [1], losses [3], grad.C.<peft name>, grad.B.<peft name>, grad.theta_k,
                             grad.theta_v, step3.C.<peft name>, step3.B.<peft name>, step3.theta_k,
                             step3.theta_v  (lora: loss, losses, grad.C.*, step3.C.* only)
  with <peft name> = base_model.model.model.layers.{i}.{self_attn|mlp}.{module}.lora_{A|B}.weight.
See FIXTURE_TOL below for the comparison a float32 implementation is expected to pass.

Usage: .pyref/bin/python scripts/bitune_reference.py [--models llama gemma phi qwen2] [--no-fd]
"""
import argparse
import json
import math
import os
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
METHODS = ["bitune", "lora", "naive-bidir", "no-mixing", "only-causal", "shared-weights", "anti-causal"]
MIXING = {"bitune", "only-causal", "shared-weights", "anti-causal"}
RANK, LORA_ALPHA = 4, 2
SCALE = LORA_ALPHA / RANK
THETA_INIT = 0.01
LR, BETAS, ADAM_EPS, CLIP, STEPS = 1e-3, (0.9, 0.999), 1e-6, 1.0, 3

LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PHI_TARGETS = ["q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"]
MODULE_PARENT = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn",
                 "dense": "self_attn", "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp",
                 "fc1": "mlp", "fc2": "mlp"}


def peft_name(layer, module, ab):
    return f"base_model.model.model.layers.{layer}.{MODULE_PARENT[module]}.{module}.lora_{ab}.weight"


# ----------------------------------------------------------------------------------------------
# Functional transformer
# ----------------------------------------------------------------------------------------------

def act_fn(name):
    if name == "silu":
        return F.silu
    if name in ("gelu_pytorch_tanh", "gelu_new", "gelu_fast"):
        return lambda x: F.gelu(x, approximate="tanh")
    if name == "gelu":
        return F.gelu
    raise ValueError(f"unsupported activation {name}")


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


class Functional:
    """Frozen backbone; adapters are passed in per call as {module path: (A, B)}."""

    def __init__(self, model_dir, dtype):
        cfg = json.load(open(os.path.join(model_dir, "config.json")))
        self.cfg, self.dtype = cfg, dtype
        self.kind = {"llama": "llama", "mistral": "llama", "qwen2": "llama", "gemma": "gemma",
                     "phi": "phi"}[cfg["model_type"]]
        self.w = {k: v.to(dtype) for k, v in load_file(os.path.join(model_dir, "model.safetensors")).items()}
        self.n_layers = cfg["num_hidden_layers"]
        self.n_heads = cfg["num_attention_heads"]
        self.n_kv = cfg.get("num_key_value_heads") or self.n_heads
        self.hidden = cfg["hidden_size"]
        self.head_dim = cfg.get("head_dim") or self.hidden // self.n_heads
        self.act = act_fn(cfg.get("hidden_act", "silu"))
        if self.kind == "phi":
            assert not cfg.get("qk_layernorm", False)
            self.eps = cfg["layer_norm_eps"]
            self.rot_dim = int(self.head_dim * cfg.get("partial_rotary_factor", 1.0))
        else:
            self.eps = cfg["rms_norm_eps"]
            self.rot_dim = self.head_dim
        assert cfg.get("rope_scaling") in (None, {}), "only default RoPE is implemented"
        base = float(cfg.get("rope_theta", 10000.0))
        self.inv_freq = 1.0 / (base ** (torch.arange(0, self.rot_dim, 2, dtype=torch.float64) / self.rot_dim))
        tie = cfg.get("tie_word_embeddings", self.kind == "gemma")
        self.lm_head = self.w["model.embed_tokens.weight"] if tie or "lm_head.weight" not in self.w \
            else self.w["lm_head.weight"]
        self.targets = PHI_TARGETS if self.kind == "phi" else LLAMA_TARGETS

    # -- pieces --
    def lin(self, path, x, lora):
        y = x @ self.w[path + ".weight"].T
        b = self.w.get(path + ".bias")
        if b is not None:
            y = y + b
        if lora is not None and path in lora:
            A, B = lora[path]
            y = y + SCALE * ((x @ A.T) @ B.T)
        return y

    def norm(self, prefix, x):
        w = self.w[prefix + ".weight"]
        if self.kind == "phi":
            return F.layer_norm(x, (x.shape[-1],), w, self.w[prefix + ".bias"], self.eps)
        xn = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return xn * (1.0 + w) if self.kind == "gemma" else xn * w

    def rope(self, x, pos):
        # x: [heads, T, head_dim]; rotate the first rot_dim channels (rotate_half convention)
        freqs = pos.to(torch.float64)[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
        xr, xp = x[..., :self.rot_dim], x[..., self.rot_dim:]
        xr = xr * cos + rotate_half(xr) * sin
        return torch.cat((xr, xp), dim=-1)

    def forward(self, ids, pos, allowed, lora, prefix=None, logits=True):
        """ids, pos: [T]; allowed: bool [T, n_prefix + T] (True = may attend);
        prefix: per-layer (K, V) [n_kv, n_prefix, head_dim] placed before this segment's keys.
        Returns (logits [T, vocab] or None, per-layer (K, V) of this segment, post-RoPE)."""
        T = ids.shape[0]
        x = self.w["model.embed_tokens.weight"][ids]
        if self.kind == "gemma":
            x = x * math.sqrt(self.hidden)
        bias = torch.zeros(allowed.shape, dtype=self.dtype).masked_fill(~allowed, torch.finfo(self.dtype).min)
        kvs = []
        for l in range(self.n_layers):
            p = f"model.layers.{l}"
            h = self.norm(p + ".input_layernorm", x)
            q = self.lin(p + ".self_attn.q_proj", h, lora).view(T, self.n_heads, self.head_dim).transpose(0, 1)
            k = self.lin(p + ".self_attn.k_proj", h, lora).view(T, self.n_kv, self.head_dim).transpose(0, 1)
            v = self.lin(p + ".self_attn.v_proj", h, lora).view(T, self.n_kv, self.head_dim).transpose(0, 1)
            q, k = self.rope(q, pos), self.rope(k, pos)
            kvs.append((k, v))
            if prefix is not None:
                k = torch.cat((prefix[l][0], k), dim=1)
                v = torch.cat((prefix[l][1], v), dim=1)
            rep = self.n_heads // self.n_kv
            k, v = k.repeat_interleave(rep, dim=0), v.repeat_interleave(rep, dim=0)
            s = (q @ k.transpose(1, 2)) * self.head_dim ** -0.5 + bias
            o = (torch.softmax(s, dim=-1) @ v).transpose(0, 1).reshape(T, self.n_heads * self.head_dim)
            if self.kind == "phi":
                attn = self.lin(p + ".self_attn.dense", o, lora)
                mlp = self.lin(p + ".mlp.fc2", self.act(self.lin(p + ".mlp.fc1", h, lora)), lora)
                x = x + attn + mlp
            else:
                x = x + self.lin(p + ".self_attn.o_proj", o, lora)
                h = self.norm(p + ".post_attention_layernorm", x)
                g = self.act(self.lin(p + ".mlp.gate_proj", h, lora)) * self.lin(p + ".mlp.up_proj", h, lora)
                x = x + self.lin(p + ".mlp.down_proj", g, lora)
        if not logits:
            return None, kvs
        x = self.norm("model.final_layernorm" if self.kind == "phi" else "model.norm", x)
        out = x @ self.lm_head.T
        if self.kind == "phi" and "lm_head.bias" in self.w:
            out = out + self.w["lm_head.bias"]
        return out, kvs


def lora_view(params, s):
    """{peft name: tensor} of one set -> {module path: (A, B)} for Functional.lin."""
    out = {}
    for name, A in params[s].items():
        if ".lora_A." in name:
            path = name[len("base_model.model."):-len(".lora_A.weight")]
            out[path] = (A, params[s][name.replace(".lora_A.", ".lora_B.")])
    return out


# masks: bool [q, kv], True = visible
def causal(n):
    return torch.ones(n, n, dtype=torch.bool).tril()


def full(n):
    return torch.ones(n, n, dtype=torch.bool)


def anti_causal(n):
    return torch.ones(n, n, dtype=torch.bool).triu()


def answer_mask(n_prefix, a):
    return torch.cat((torch.ones(a, n_prefix, dtype=torch.bool), causal(a)), dim=1)


def prefix_lm(L, n):
    m = causal(L)
    m[:n, :n] = True
    return m


def alpha(theta):
    return theta.abs() / (theta.abs() + THETA_INIT)


def answer_logprobs(logits, targets):
    return torch.log_softmax(logits, dim=-1).gather(-1, targets[:, None])[:, 0]


def example_logits(M, method, ids, P, params, stash=None):
    """Logits at positions P-1..L-2 (each predicts the next token) for one example."""
    L, n = ids.shape[0], P - 1
    C = lora_view(params, "C")
    if method == "lora":
        logits, _ = M.forward(ids, torch.arange(L), causal(L), C)
        return logits[n:L - 1]
    prompt, pos = ids[:n], torch.arange(n)
    if method in MIXING:
        setB = C if method == "shared-weights" else lora_view(params, "B")
        maskB = {"bitune": full, "shared-weights": full, "only-causal": causal, "anti-causal": anti_causal}[method]
        _, kvB = M.forward(prompt, pos, maskB(n), setB, logits=False)
        _, kvC = M.forward(prompt, pos, causal(n), C, logits=False)
        aK, aV = alpha(params["theta_k"]), alpha(params["theta_v"])
        cache = [((1 - aK[l]) * kc + aK[l] * kb, (1 - aV[l]) * vc + aV[l] * vb)
                 for l, ((kb, vb), (kc, vc)) in enumerate(zip(kvB, kvC))]
        if stash is not None:
            for k, v in cache:
                k.retain_grad(), v.retain_grad()
            stash.update(kvB=kvB, kvC=kvC, cache=cache)
    elif method == "naive-bidir":
        _, cache = M.forward(prompt, pos, full(n), C, logits=False)
    elif method == "no-mixing":
        _, cache = M.forward(prompt, pos, full(n), lora_view(params, "B"), logits=False)
    else:
        raise ValueError(method)
    a = L - n
    logits, _ = M.forward(ids[n:], torch.arange(n, L), answer_mask(n, a), C, prefix=cache)
    return logits[:-1]


def batch_loss(M, method, batch, params, stash=None):
    losses = []
    for ids, P in batch:
        lg = example_logits(M, method, ids, P, params, stash if len(losses) == 0 else None)
        losses.append(-answer_logprobs(lg, ids[P:]).mean())
    return torch.stack(losses).mean()


# ----------------------------------------------------------------------------------------------
# Parameters, optimizer
# ----------------------------------------------------------------------------------------------

def trainable(method, params):
    """Ordered list of (fixture name, tensor) trained by a method."""
    out = [("C." + k, v) for k, v in params["C"].items()]
    if method != "lora":
        out += [("B." + k, v) for k, v in params["B"].items()]
        out += [("theta_k", params["theta_k"]), ("theta_v", params["theta_v"])]
    return out


def clone_params(params, dtype, requires_grad=True):
    out = {}
    for s in ("C", "B"):
        out[s] = {k: v.detach().to(dtype).clone().requires_grad_(requires_grad) for k, v in params[s].items()}
    for t in ("theta_k", "theta_v"):
        out[t] = params[t].detach().to(dtype).clone().requires_grad_(requires_grad)
    return out


def grads(M, method, batch, params):
    for _, p in trainable(method, params):
        p.grad = None
    loss = batch_loss(M, method, batch, params)
    loss.backward()
    g = {name: (p.grad if p.grad is not None else torch.zeros_like(p)).detach().clone()
         for name, p in trainable(method, params)}
    return loss.detach(), g


def train(M, method, batch, params):
    """3 steps of HF AdamW (transformers' AdamW) with global-norm clipping 1.0 (clip_grad_norm_ semantics)."""
    named = trainable(method, params)
    m = {k: torch.zeros_like(p) for k, p in named}
    v = {k: torch.zeros_like(p) for k, p in named}
    losses, norms = [], []
    for t in range(1, STEPS + 1):
        loss, g = grads(M, method, batch, params)
        losses.append(loss.item())
        norm = torch.sqrt(sum((gi.double() ** 2).sum() for gi in g.values()))
        norms.append(norm.item())
        coef = CLIP / (norm + 1e-6)
        if coef < 1:
            g = {k: gi * coef.to(gi.dtype) for k, gi in g.items()}
        step = LR * math.sqrt(1 - BETAS[1] ** t) / (1 - BETAS[0] ** t)
        with torch.no_grad():
            for k, p in named:
                m[k].mul_(BETAS[0]).add_(g[k], alpha=1 - BETAS[0])
                v[k].mul_(BETAS[1]).addcmul_(g[k], g[k], value=1 - BETAS[1])
                p.addcdiv_(m[k], v[k].sqrt().add_(ADAM_EPS), value=-step)
    return losses, norms


def make_params(M, seed):
    g = torch.Generator().manual_seed(seed)
    params = {}
    for s in ("C", "B"):
        d = {}
        for l in range(M.n_layers):
            for mod in M.targets:
                W = M.w[f"model.layers.{l}.{MODULE_PARENT[mod]}.{mod}.weight"]
                out_f, in_f = W.shape
                d[peft_name(l, mod, "A")] = torch.randn(RANK, in_f, generator=g, dtype=torch.float32) * 0.1
                d[peft_name(l, mod, "B")] = torch.randn(out_f, RANK, generator=g, dtype=torch.float32) * 0.05
        params[s] = d
    base_k = [0.013, -0.007, 0.02, -0.015, 0.009, 0.03]
    base_v = [0.004, 0.021, -0.011, 0.017, -0.006, 0.012]
    N = M.n_layers
    params["theta_k"] = torch.tensor([base_k[i % 6] for i in range(N)], dtype=torch.float32)
    params["theta_v"] = torch.tensor([base_v[i % 6] for i in range(N)], dtype=torch.float32)
    return params


def make_batch(vocab, seed):
    g = torch.Generator().manual_seed(seed)
    lo = min(4, vocab // 2)
    spec = [(7, 5), (10, 3)]
    ex = []
    for P, A in spec:
        ids = torch.randint(lo, vocab, (P + A,), generator=g)
        ex.append((ids, P))
    return ex


# ----------------------------------------------------------------------------------------------
# Hugging Face + PEFT orchestration (float32), the independent cross-check
# ----------------------------------------------------------------------------------------------

class HfBitune:
    def __init__(self, model_dir, init_dir):
        from transformers import AutoModelForCausalLM
        from peft import PeftModel
        base = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="eager",
                                                    torch_dtype=torch.float32)
        base.eval()
        self.model = PeftModel.from_pretrained(base, init_dir, adapter_name="default", is_trainable=True)
        self.model.load_adapter(os.path.join(init_dir, "bidirectional"), adapter_name="prefill", is_trainable=True)
        self.model.eval()
        th = load_file(os.path.join(init_dir, "bitune.safetensors"))
        self.theta_k = th["theta_k"].clone().requires_grad_(True)
        self.theta_v = th["theta_v"].clone().requires_grad_(True)

    def lora_params(self):
        out = {}
        for n, p in self.model.named_parameters():
            if ".lora_" in n:
                s = "C" if ".default." in n else "B"
                out[s + "." + n.replace(".default.", ".").replace(".prefill.", ".")] = p
        return out

    @staticmethod
    def additive(allowed):
        return torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)[None, None]

    def run(self, adapter, ids, pos, allowed, cache):
        from transformers import DynamicCache
        self.model.set_adapter(adapter)
        out = self.model(input_ids=ids[None], position_ids=pos[None], cache_position=pos,
                         attention_mask=self.additive(allowed),
                         past_key_values=cache if cache is not None else DynamicCache(), use_cache=True)
        return out.logits[0], out.past_key_values

    def example_logits(self, method, ids, P):
        from transformers import DynamicCache
        L, n = ids.shape[0], P - 1
        if method == "lora":
            # stock HF causal mask (no custom mask): an independent path for the baseline
            self.model.set_adapter("default")
            return self.model(input_ids=ids[None]).logits[0, n:L - 1]
        prompt, pos = ids[:n], torch.arange(n)
        if method in MIXING:
            adB = "default" if method == "shared-weights" else "prefill"
            maskB = {"bitune": full, "shared-weights": full, "only-causal": causal, "anti-causal": anti_causal}[method]
            _, cb = self.run(adB, prompt, pos, maskB(n), None)
            _, cc = self.run("default", prompt, pos, causal(n), None)
            aK, aV = alpha(self.theta_k), alpha(self.theta_v)
            mixed = []
            for l in range(len(cc.layers)):
                kb, vb = cb.layers[l].keys, cb.layers[l].values
                kc, vc = cc.layers[l].keys, cc.layers[l].values
                mixed.append(((1 - aK[l]) * kc.float() + aK[l] * kb.float(),
                              (1 - aV[l]) * vc.float() + aV[l] * vb.float()))
            cache = DynamicCache(ddp_cache_data=mixed)
        else:
            ad = "default" if method == "naive-bidir" else "prefill"
            _, cache = self.run(ad, prompt, pos, full(n), None)
        logits, _ = self.run("default", ids[n:], torch.arange(n, L), answer_mask(n, L - n), cache)
        return logits[:-1]

    def loss_and_grads(self, method, batch):
        lp = self.lora_params()
        for p in list(lp.values()) + [self.theta_k, self.theta_v]:
            p.grad = None
        losses = [-answer_logprobs(self.example_logits(method, ids, P), ids[P:]).mean() for ids, P in batch]
        loss = torch.stack(losses).mean()
        # like the reference's enable_loras before backward: every adapter parameter trainable
        for p in lp.values():
            p.requires_grad_(True)
        loss.backward()
        g = {k: (p.grad if p.grad is not None else torch.zeros_like(p)).detach().clone() for k, p in lp.items()}
        if method != "lora":
            for t in ("theta_k", "theta_v"):
                p = getattr(self, t)
                g[t] = p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
        else:
            g = {k: x for k, x in g.items() if k.startswith("C.")}
        return loss.detach(), g


# ----------------------------------------------------------------------------------------------
# Checks
# ----------------------------------------------------------------------------------------------

# The comparison a float32 implementation is expected to pass against these float64 fixtures
# (FIXTURE_TOL, asserted below for the float32 runs of both implementations):
#   loss, losses: relative 1e-5;
#   grad.<t>:     max|Δ| <= 1e-4·max|ref_t| + 1e-5·max|ref over all grad.* of the file|
#                 (a pure per-tensor 1e-4 fails where a gradient is a small sum with cancellation,
#                 e.g. dθ_V of only-causal, whose two K/V sets differ only by the adapters);
#   step3.<t>:    max|Δ| <= 1e-5 absolute (1% of the learning rate: Adam's update is
#                 ill-conditioned where a gradient passes near zero, θ in particular).
GRAD_RTOL, GRAD_GTOL, STEP3_ATOL = 1e-4, 1e-5, 1e-5


def grad_tol_ratio(got, ref):
    """Worst ratio of the error to the FIXTURE_TOL allowance over all gradient tensors (<= 1 passes)."""
    assert set(got) == set(ref), sorted(set(got) ^ set(ref))[:5]
    gmax = max(x.abs().max().item() for x in ref.values())
    return max((got[k].double() - ref[k].double()).abs().max().item()
               / (GRAD_RTOL * ref[k].abs().max().item() + GRAD_GTOL * gmax) for k in ref)


def rel_err(a, b):
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


class Checker:
    def __init__(self):
        self.lines = []

    def check(self, what, err, tol):
        ok = err <= tol
        self.lines.append(f"  [{'ok' if ok else 'FAIL'}] {what}: {err:.3e} (tol {tol:.0e})")
        print(self.lines[-1], flush=True)
        assert ok, what


def check_hf_base(M32, model_dir, batch, ck):
    """The functional backbone (no adapters) against the HF model's logits."""
    from transformers import AutoModelForCausalLM
    hf = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="eager", torch_dtype=torch.float32)
    hf.eval()
    with torch.no_grad():
        for ids, P in batch:
            ref = hf(input_ids=ids[None]).logits[0]
            mine, _ = M32.forward(ids, torch.arange(len(ids)), causal(len(ids)), None)
            ck.check("functional f32 base logits vs HF", rel_err(mine, ref), 1e-5)


def check_identities(M, batch, params, ck):
    """The identity checks' reductions, float64, no gradients."""
    huge = 1e12
    with torch.no_grad():
        p0 = clone_params(params, M.dtype, False)
        p0["theta_k"].zero_(), p0["theta_v"].zero_()
        pinf = clone_params(params, M.dtype, False)
        pinf["theta_k"].fill_(huge), pinf["theta_v"].fill_(-huge)
        psame = clone_params(pinf, M.dtype, False)
        psame["B"] = {k: v.clone() for k, v in psame["C"].items()}
        pany = clone_params(params, M.dtype, False)
        pany_same = clone_params(pany, M.dtype, False)
        pany_same["B"] = {k: v.clone() for k, v in pany_same["C"].items()}
        for ids, P in batch:
            L, n, tgt = len(ids), P - 1, ids[P:]
            lora_lp = answer_logprobs(example_logits(M, "lora", ids, P, p0), tgt)
            for meth in sorted(MIXING):
                lp = answer_logprobs(example_logits(M, meth, ids, P, p0), tgt)
                ck.check(f"theta=0: {meth} answer log-lik == lora (P={P})", rel_err(lp, lora_lp), 1e-12)
            C = lora_view(p0, "C")
            prefix_lp = answer_logprobs(M.forward(ids, torch.arange(L), prefix_lm(L, n), C)[0][n:L - 1], tgt)
            lp = answer_logprobs(example_logits(M, "bitune", ids, P, psame), tgt)
            ck.check(f"alpha->1, B=C: bitune == prefix-LM forward (P={P})", rel_err(lp, prefix_lp), 1e-10)
            lp = answer_logprobs(example_logits(M, "naive-bidir", ids, P, pany), tgt)
            ck.check(f"naive-bidir == prefix-LM forward (P={P})", rel_err(lp, prefix_lp), 1e-12)
            lp = answer_logprobs(example_logits(M, "shared-weights", ids, P, pinf), tgt)
            ck.check(f"alpha->1: shared-weights == prefix-LM forward (P={P})", rel_err(lp, prefix_lp), 1e-10)
            a = answer_logprobs(example_logits(M, "bitune", ids, P, pinf), tgt)
            b = answer_logprobs(example_logits(M, "no-mixing", ids, P, pinf), tgt)
            ck.check(f"alpha->1: bitune == no-mixing (P={P})", rel_err(a, b), 1e-10)
            lp = answer_logprobs(example_logits(M, "only-causal", ids, P, pany_same), tgt)
            lora_any = answer_logprobs(example_logits(M, "lora", ids, P, pany), tgt)
            ck.check(f"B=C: only-causal == lora at any theta (P={P})", rel_err(lp, lora_any), 1e-12)
            anti = causal(L)
            anti[:n, :n] = anti_causal(n)
            anti_lp = answer_logprobs(M.forward(ids, torch.arange(L), anti, C)[0][n:L - 1], tgt)
            lp = answer_logprobs(example_logits(M, "anti-causal", ids, P, psame), tgt)
            ck.check(f"alpha->1, B=C: anti-causal == single forward, transposed prefix (P={P})",
                     rel_err(lp, anti_lp), 1e-10)


def check_theta_formula(M, batch, params, ck):
    """dL/dθ_ℓ = sign(θ)·θ_init/(θ_init+|θ|)² · Σ (K_b − K_c) ⊙ dL/dK_mix, one example."""
    p = clone_params(params, M.dtype)
    stash = {}
    loss = batch_loss(M, "bitune", batch[:1], p, stash)
    loss.backward()
    d = torch.sign(p["theta_k"]) * THETA_INIT / (THETA_INIT + p["theta_k"].abs()) ** 2
    dv = torch.sign(p["theta_v"]) * THETA_INIT / (THETA_INIT + p["theta_v"].abs()) ** 2
    gk = torch.stack([((kb - kc) * k.grad).sum() for (kb, _), (kc, _), (k, _) in
                      zip(stash["kvB"], stash["kvC"], stash["cache"])]) * d
    gv = torch.stack([((vb - vc) * v.grad).sum() for (_, vb), (_, vc), (_, v) in
                      zip(stash["kvB"], stash["kvC"], stash["cache"])]) * dv
    ck.check("analytic dθ_K formula vs autograd", rel_err(gk.detach(), p["theta_k"].grad), 1e-12)
    ck.check("analytic dθ_V formula vs autograd", rel_err(gv.detach(), p["theta_v"].grad), 1e-12)


def check_finite_differences(M, method, batch, params, g, ck, h=1e-4):
    """4th-order central differences (float64, h=1e-4) at the largest-|grad| entry of a few tensors: C and B, A and B
    matrices, attention and MLP, first and last layer, and both θ vectors."""
    p = clone_params(params, M.dtype, False)
    N, T = M.n_layers, M.targets
    picks = ["C." + peft_name(0, T[0], "A"), "C." + peft_name(N - 1, T[-1], "B"), "C." + peft_name(0, T[2], "B")]
    if method != "lora":
        picks += ["B." + peft_name(0, T[0], "B"), "B." + peft_name(0, T[-1], "A"),
                  "B." + peft_name(N - 1, T[1], "A"), "theta_k", "theta_v"]
    flat = dict(trainable(method, p))
    gmax = max(x.abs().max().item() for x in g.values())
    worst = 0.0
    for name in picks:
        gi = g[name].reshape(-1)
        idx = int(gi.abs().argmax())
        t = flat[name].view(-1)
        old = t[idx].item()
        f = {}
        with torch.no_grad():
            for k in (-2, -1, 1, 2):
                t[idx] = old + k * h
                f[k] = batch_loss(M, method, batch, p).item()
            t[idx] = old
        fd = (f[-2] - 8 * f[-1] + 8 * f[1] - f[2]) / (12 * h)  # 4th-order central difference
        an = gi[idx].item()
        err = abs(fd - an) / max(abs(an), 1e-4 * gmax)
        if os.environ.get("BITUNE_FD_VERBOSE"):
            print(f"    fd {name}[{idx}] autograd {an:.10e} fd {fd:.10e} rel {err:.2e}")
        worst = max(worst, err)
    ck.check(f"{method}: autograd vs central finite differences ({len(picks)} entries, worst rel)", worst, 1e-6)


# ----------------------------------------------------------------------------------------------
# Fixture writing
# ----------------------------------------------------------------------------------------------

def write_init(out_dir, model, M, params):
    init = os.path.join(out_dir, "init")
    os.makedirs(os.path.join(init, "bidirectional"), exist_ok=True)
    cfg = {"peft_type": "LORA", "r": RANK, "lora_alpha": LORA_ALPHA, "target_modules": M.targets,
           "lora_dropout": 0.0, "bias": "none", "task_type": "CAUSAL_LM",
           "base_model_name_or_path": f"tests/fixtures/models/{model}"}
    for sub, s in (("", "C"), ("bidirectional", "B")):
        d = os.path.join(init, sub)
        json.dump(cfg, open(os.path.join(d, "adapter_config.json"), "w"), indent=2)
        save_file({k: v.contiguous() for k, v in params[s].items()}, os.path.join(d, "adapter_model.safetensors"))
    save_file({"theta_k": params["theta_k"], "theta_v": params["theta_v"]},
              os.path.join(init, "bitune.safetensors"))
    json.dump({"method": "bitune", "theta_init": THETA_INIT, "base_model": f"tests/fixtures/models/{model}"},
              open(os.path.join(init, "bitune_config.json"), "w"), indent=2)
    return init


def run_model(model, args, ck, summary):
    model_dir = os.path.join(args.models_root, model)
    out_dir = os.path.join(args.out_root, model)
    os.makedirs(out_dir, exist_ok=True)
    print(f"== {model}", flush=True)
    M64 = Functional(model_dir, torch.float64)
    M32 = Functional(model_dir, torch.float32)
    vocab = M64.cfg["vocab_size"]
    seed = 1234 + sum(map(ord, model))
    params = make_params(M64, seed)
    batch = make_batch(vocab, seed + 1)
    json.dump({"examples": [{"ids": ids.tolist(), "prompt_len": P} for ids, P in batch]},
              open(os.path.join(out_dir, "batch.json"), "w"))
    init = write_init(out_dir, model, M64, params)

    check_hf_base(M32, model_dir, batch, ck)
    hf = HfBitune(model_dir, init)
    check_identities(M64, batch, params, ck)
    check_theta_formula(M64, batch, params, ck)

    for method in METHODS:
        p64 = clone_params(params, torch.float64)
        loss, g = grads(M64, method, batch, p64)
        # float32 functional and HF+PEFT float32 against the float64 values
        p32 = clone_params(params, torch.float32)
        loss32, g32 = grads(M32, method, batch, p32)
        hl, hg = hf.loss_and_grads(method, batch)
        assert set(hg) == set(g), (sorted(set(hg) ^ set(g)))[:5]
        ck.check(f"{method}: f32 functional loss vs f64 (rel)", rel_err(loss32, loss), 1e-5)
        ck.check(f"{method}: HF+PEFT f32 loss vs f64 (rel)", rel_err(hl, loss), 1e-5)
        ck.check(f"{method}: f32 functional grads vs f64 (FIXTURE_TOL ratio)", grad_tol_ratio(g32, g), 1.0)
        ck.check(f"{method}: HF+PEFT f32 grads vs f64 (FIXTURE_TOL ratio)", grad_tol_ratio(hg, g), 1.0)
        if args.fd:
            check_finite_differences(M64, method, batch, params, g, ck)

        losses, norms = train(M64, method, batch, p64)
        assert abs(losses[0] - loss.item()) < 1e-12
        p32t = clone_params(params, torch.float32)
        losses32, _ = train(M32, method, batch, p32t)
        ck.check(f"{method}: f32 functional 3-step losses vs f64 (rel)",
                 rel_err(torch.tensor(losses32), torch.tensor(losses)), 1e-5)
        step_err = max((a.detach().double() - b.detach()).abs().max().item()
                       for (_, a), (_, b) in zip(trainable(method, p32t), trainable(method, p64)))
        ck.check(f"{method}: f32 functional step-3 params vs f64 (max abs)", step_err, STEP3_ATOL)

        out = {"loss": loss.reshape(1).float(), "losses": torch.tensor(losses, dtype=torch.float32)}
        for k, v in g.items():
            out["grad." + k] = v.float()
        for k, p in trainable(method, p64):
            out["step3." + k] = p.detach().float()
        save_file({k: v.contiguous() for k, v in out.items()}, os.path.join(out_dir, f"{method}.safetensors"))
        summary.append((model, method, loss.item(), norms[0], losses))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="*", default=["llama", "gemma", "phi", "qwen2"])
    ap.add_argument("--models-root", default=os.path.join(ROOT, "tests/fixtures/models"))
    ap.add_argument("--out-root", default=os.path.join(ROOT, "tests/fixtures/bitune"))
    ap.add_argument("--no-fd", dest="fd", action="store_false")
    args = ap.parse_args()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    torch.manual_seed(0)
    ck, summary = Checker(), []
    for model in args.models:
        run_model(model, args, ck, summary)
    print("\nmodel   method           loss        |grad| at init  losses (3 steps)")
    for model, method, loss, norm, losses in summary:
        print(f"{model:7s} {method:16s} {loss:.8f}  {norm:12.6f}    " + " ".join(f"{x:.8f}" for x in losses))
    print(f"\n{len(ck.lines)} checks passed")


if __name__ == "__main__":
    sys.exit(main())
