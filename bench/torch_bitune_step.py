#!/usr/bin/env python3
"""CPU benchmark of the PyTorch reference stack: one Bitune train step vs one plain LoRA step.

Model: SmolLM2-135M-Instruct from GGUF (dequantized to f32 by transformers), eager attention.
Adapters: PEFT, two named LoRA sets like the authors' code ("default" = causal set C, "prefill" =
bidirectional set B), r 8, alpha 1, targets q/k/v/o/gate/up/down; θ_K, θ_V per layer (θ_init 0.01).

Bitune step: pass B (prefill, no mask) and pass C (default, causal) over x[0..P-2] through the
decoder stack (no LM head: only their K/V are used), fp32 mix of K and V per layer, answer pass over
x[P-1..L-1] at positions P-1..L-1 on the mixed cache, mean CE over the answer tokens, backward into both
sets and θ, global-norm clip 1.0, AdamW (eps 1e-6, wd 0).
LoRA step: one causal forward over x with set C, same loss, backward, clip, AdamW.

Prints one JSON line: {"bitune_step_s", "lora_step_s", "ratio", "torch", "threads", ...}; the step
times are medians over --repeat interleaved runs after one warm-up each (the minima are given too,
a steadier figure on a loaded machine).
"""
import argparse
import json
import os
import statistics
import time

import torch
import torch.nn.functional as F

DEFAULT_GGUF = os.path.expanduser("~/.cache/bitune-rt/models/SmolLM2-135M-Instruct.Q4_1.gguf")
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def load(gguf_path):
    from transformers import AutoModelForCausalLM
    from peft import LoraConfig, get_peft_model
    base = AutoModelForCausalLM.from_pretrained(os.path.dirname(gguf_path), gguf_file=os.path.basename(gguf_path),
                                                torch_dtype=torch.float32, attn_implementation="eager")
    base.eval()  # no dropout; gradients still flow
    cfg = LoraConfig(r=8, lora_alpha=1, lora_dropout=0.0, target_modules=TARGETS, bias="none",
                     task_type="CAUSAL_LM")
    model = get_peft_model(base, cfg)  # adapter "default" (set C)
    model.add_adapter("prefill", cfg)  # set B
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # nonzero B matrices (PEFT starts them at 0); does not change the cost
        for n, p in model.named_parameters():
            if ".lora_B." in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.01)
    return model


def lora_params(model, adapter=None):
    return [p for n, p in model.named_parameters()
            if ".lora_" in n and (adapter is None or f".{adapter}." in n)]


def additive(allowed):
    return torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)[None, None]


def answer_loss(logits, targets):
    return F.cross_entropy(logits.float(), targets)


def bitune_step(model, theta_k, theta_v, opt, ids, P, theta_init=0.01):
    from transformers import DynamicCache
    L, n = ids.shape[0], P - 1
    decoder = model.base_model.model.model  # LlamaModel with LoRA layers injected (no LM head)
    prompt, pos = ids[None, :n], torch.arange(n)
    model.set_adapter("prefill")
    cb = decoder(input_ids=prompt, position_ids=pos[None], cache_position=pos,
                 attention_mask=additive(torch.ones(n, n, dtype=torch.bool)),
                 past_key_values=DynamicCache(), use_cache=True).past_key_values
    model.set_adapter("default")
    cc = decoder(input_ids=prompt, position_ids=pos[None], cache_position=pos,
                 attention_mask=additive(torch.ones(n, n, dtype=torch.bool).tril()),
                 past_key_values=DynamicCache(), use_cache=True).past_key_values
    aK = theta_k.abs() / (theta_k.abs() + theta_init)
    aV = theta_v.abs() / (theta_v.abs() + theta_init)
    mixed = [((1 - aK[l]) * cc.layers[l].keys + aK[l] * cb.layers[l].keys,
              (1 - aV[l]) * cc.layers[l].values + aV[l] * cb.layers[l].values) for l in range(len(cc.layers))]
    a = L - n
    mask = torch.cat((torch.ones(a, n, dtype=torch.bool), torch.ones(a, a, dtype=torch.bool).tril()), dim=1)
    apos = torch.arange(n, L)
    logits = model(input_ids=ids[None, n:], position_ids=apos[None], cache_position=apos,
                   attention_mask=additive(mask), past_key_values=DynamicCache(ddp_cache_data=mixed),
                   use_cache=False).logits[0]
    loss = answer_loss(logits[:-1], ids[P:])
    params = lora_params(model) + [theta_k, theta_v]
    for p in params:  # like the reference's enable_loras: both sets trainable before backward
        p.requires_grad_(True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.item()


def lora_step(model, opt, ids, P):
    model.set_adapter("default")
    logits = model(input_ids=ids[None], use_cache=False).logits[0]
    loss = answer_loss(logits[P - 1:-1], ids[P:])
    loss.backward()
    torch.nn.utils.clip_grad_norm_(lora_params(model, "default"), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.item()


def timed(fns, repeat):
    """Times each function `repeat` times after one warm-up call, interleaving them so that a
    change of machine load affects both alike."""
    for fn in fns:
        fn()  # warm-up
    ts = [[] for _ in fns]
    for _ in range(repeat):
        for fn, t in zip(fns, ts):
            t0 = time.perf_counter()
            fn()
            t.append(time.perf_counter() - t0)
    return ts


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", default=DEFAULT_GGUF)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--answer", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    t0 = time.perf_counter()
    model = load(args.gguf)
    load_s = time.perf_counter() - t0
    n_layers = model.base_model.model.config.num_hidden_layers
    vocab = model.base_model.model.config.vocab_size
    P, A = args.prompt, args.answer
    ids = torch.randint(0, vocab, (P + A,), generator=torch.Generator().manual_seed(1))

    theta_k = torch.full((n_layers,), 0.01, requires_grad=True)
    theta_v = torch.full((n_layers,), 0.01, requires_grad=True)
    adam = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0)
    opt_bitune = torch.optim.AdamW(lora_params(model) + [theta_k, theta_v], **adam)
    opt_lora = torch.optim.AdamW(lora_params(model, "default"), **adam)

    prefill0 = [p.detach().clone() for p in lora_params(model, "prefill")]
    tb, tl = timed([lambda: bitune_step(model, theta_k, theta_v, opt_bitune, ids, P),
                    lambda: lora_step(model, opt_lora, ids, P)], args.repeat)
    # the Bitune steps trained both sets and θ (sanity check, not timed)
    assert (theta_k.detach() != 0.01).all() and (theta_v.detach() != 0.01).all()
    assert any((p.detach() != q).any() for p, q in zip(lora_params(model, "prefill"), prefill0))
    b, l = statistics.median(tb), statistics.median(tl)
    print(json.dumps({"bitune_step_s": round(b, 4), "lora_step_s": round(l, 4), "ratio": round(b / l, 3),
                      "bitune_min_s": round(min(tb), 4), "lora_min_s": round(min(tl), 4),
                      "ratio_min": round(min(tb) / min(tl), 3),
                      "torch": torch.__version__, "threads": args.threads, "prompt": P, "answer": A,
                      "repeat": args.repeat, "bitune_all_s": [round(x, 4) for x in tb],
                      "lora_all_s": [round(x, 4) for x in tl], "load_s": round(load_s, 1),
                      "model": os.path.basename(args.gguf)}))


if __name__ == "__main__":
    main()
