#!/usr/bin/env python3
"""Make the reference fixtures that the Rust tests compare against (run by hand, never by CI).

    .pyref/bin/python scripts/make_fixtures.py            # everything
    .pyref/bin/python scripts/make_fixtures.py --only tiny      # tests/fixtures/models/*
    .pyref/bin/python scripts/make_fixtures.py --only smollm2   # tests/fixtures/smollm2_*.json
    .pyref/bin/python scripts/make_fixtures.py --out /tmp/fx    # write elsewhere (determinism check)

Needs the .pyref venv (torch, transformers 4.57.1, tokenizers, safetensors, gguf) and, for the
smollm2 part, the GGUF fetched by scripts/fetch-model.sh.

Everything is seeded and runs on one CPU thread, so two runs write byte-identical files.
Time (2-core x86 box, torch on 1 thread, measured while a Rust build shared the CPUs):
tiny models ~12 s wall (~10 s CPU) in all; smollm2 ~90 s wall, of which ~50 s is transformers
loading the GGUF (tokenizer conversion + Q4_1/Q8_0 dequantization with the gguf package) and
most of the rest the no-cache greedy recomputation check; ~1 min 50 s end to end with imports
(~50 s CPU).

What is written
---------------
tests/fixtures/models/<name>/      name in llama, llama3, mistral, qwen2, gemma, phi, llama_bf16
    config.json                    saved by transformers (generation_config.json is removed)
    model.safetensors              f32 (llama_bf16: bf16 in two shards + model.safetensors.index.json)
    tokenizer.json                 the same tiny byte-level BPE in every folder (BOS "<s>" prepended)
    reference.json                 see REFERENCE SCHEMA below
tests/fixtures/smollm2_reference.json         SmolLM2-135M-Instruct Q4_1 GGUF, run by transformers
tests/fixtures/smollm2_tokenizer_cases.json   token ids of ~18 strings, add_special_tokens=False

REFERENCE SCHEMA (tiny models; floats rounded to 7 significant digits)
{ "model": name, "dtype": "float32",              # dtype of the computation (weights may be bf16)
  "weights_dtype": "float32" | "bfloat16",
  "vocab_size": model vocab (phi: 224 > tokenizer 200), "tokenizer_vocab_size": 200,
  "prompts": [ { "text", "ids" (BOS included),
                 "causal_logits": [n][vocab_size], "bidir_logits": [n][vocab_size],
                 "greedy": [16 ids], "greedy_min_margin": smallest top1-top2 logit gap over the 16 steps } ],
  "score": [ { "context", "continuation", "context_ids", "continuation_ids", "logprobs", "sum", "greedy" } ] }

Notes on transformers 4.57.1 behaviour that this script relies on (and asserts):
* A 4D attention_mask is passed through create_causal_mask untouched and, with eager attention, is
  ADDED to the scores. So the bidirectional mask must be a float additive mask (all zeros). A bool
  mask would be added as 0/1 (harmless when all-True, wrong otherwise). We check that an explicit
  additive causal 4D mask reproduces the default causal logits and that bidir != causal at every
  position but the last. (The last position differs too from layer 2 on, since the keys/values of
  earlier positions already differ, so equality there is not a check.)
* GemmaMLP uses config.hidden_act; hidden_activation is stored but not read by the model in 4.57.
  Both are set to gelu_pytorch_tanh so the fixture does not depend on which one a runtime reads.
* The GGUF tokenizer that transformers builds for SmolLM2 is a LlamaTokenizerFast whose default
  adds BOS = <|im_start|> (id 1), although the GGUF says tokenizer.ggml.add_bos_token = false
  (and the original HF SmolLM2 tokenizer adds nothing). We run the model WITHOUT BOS
  (add_special_tokens=False) and record the transformers-default ids separately.
"""
import argparse
import json
import math
import os
import random
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

ROOT = Path(__file__).resolve().parent.parent
TOK_VOCAB = 200
N_GREEDY = 16
GGUF_DIR = Path(os.environ.get("BITUNE_HOME", Path.home() / ".cache" / "bitune-rt")) / "models"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def r7(x):
    """Round to 7 significant digits (shortest repr afterwards)."""
    x = float(x)
    if not math.isfinite(x):
        raise ValueError(f"non-finite value {x}")
    return float(f"{x:.7g}")


def r7list(t):
    if t.dim() == 0:
        return r7(t)
    return [r7list(s) for s in t] if t.dim() > 1 else [r7(v) for v in t.tolist()]


def dump_json(obj, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, separators=(",", ":"), ensure_ascii=False)
        f.write("\n")


# --------------------------------------------------------------------------------------------
# Tokenizer corpus: a small made-up English text, expanded to a few hundred lines by templates.
# --------------------------------------------------------------------------------------------
BASE_TEXT = """\
The cat sat on the mat and looked at the bird in the tree.
A small dog ran across the green field to find its ball.
Once upon a time there was a little house near a quiet river.
The children played in the garden until the sun went down.
She opened the window and the cold morning air came into the room.
He wrote a long letter to his friend who lived in the city.
The old man walked slowly along the road with his stick.
We went to the market to buy apples, bread, milk and cheese.
Question: What color is the sky on a clear day?
Answer: The sky is blue on a clear day.
Question: How many legs does a spider have?
Answer: A spider has eight legs.
Question: What is 2+3?
Answer: 5
Question: What is 10 minus 4?
Answer: 6
The train leaves the station at 9 o'clock every morning.
My favourite book is about a brave girl who sails across the sea.
It was raining, so they stayed inside and read stories.
The teacher asked the students to write their names on the paper.
Birds fly south in the winter because the weather is cold.
The moon is bright tonight, and the stars are shining.
Please close the door when you leave the room!
Why did the chicken cross the road? To get to the other side.
There are 7 days in a week and 12 months in a year.
The quick brown fox jumps over the lazy dog.
def add(a, b):
    return a + b
for i in range(10):
    print(i)
"The end," she said, "is only the beginning."
They laughed; then they went home (it was late).
"""

SUBJECTS = ["The cat", "A dog", "My friend", "The teacher", "Our neighbour", "The little girl",
            "The farmer", "A bird", "The king", "Her brother", "The student", "Everyone"]
VERBS = ["likes", "sees", "wants", "finds", "reads", "makes", "opens", "carries", "paints",
         "remembers", "sells", "brings"]
OBJECTS = ["a red ball", "the old book", "some fresh bread", "a blue box", "the small boat",
           "two green apples", "a warm coat", "the long letter", "three white stones",
           "a new house", "the morning paper", "a bowl of soup"]
PLACES = ["in the garden", "at the market", "by the river", "in the kitchen", "on the hill",
          "at school", "near the station", "in the forest", "on Monday", "after dinner"]


def corpus_lines():
    rng = random.Random(1234)
    lines = BASE_TEXT.splitlines()
    for _ in range(300):
        s = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(PLACES)}."
        if rng.random() < 0.2:
            s = f"Question: Who {rng.choice(VERBS)} {rng.choice(OBJECTS)}?\nAnswer: {s}"
        if rng.random() < 0.1:
            s += f" It costs {rng.randint(1, 99)} coins."
        lines.append(s)
    return lines


def make_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TOK_VOCAB, min_frequency=2, show_progress=False,
        special_tokens=["<unk>", "<s>", "</s>"],
    )
    tok.train_from_iterator(corpus_lines(), trainer=trainer)
    assert tok.token_to_id("<unk>") == 0 and tok.token_to_id("<s>") == 1 and tok.token_to_id("</s>") == 2
    assert tok.get_vocab_size() == TOK_VOCAB, tok.get_vocab_size()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    return tok


# --------------------------------------------------------------------------------------------
# Tiny random models
# --------------------------------------------------------------------------------------------
def tiny_configs():
    from transformers import (GemmaConfig, LlamaConfig, MistralConfig, PhiConfig, Qwen2Config)

    common = dict(bos_token_id=1, eos_token_id=2, pad_token_id=None, initializer_range=0.2,
                  max_position_embeddings=128, attn_implementation="eager")
    V = TOK_VOCAB
    return {
        "llama": LlamaConfig(vocab_size=V, hidden_size=48, num_attention_heads=3, num_key_value_heads=1,
                             head_dim=16, intermediate_size=72, num_hidden_layers=2,
                             tie_word_embeddings=True, rms_norm_eps=1e-5, rope_theta=10000.0, **common),
        "llama3": LlamaConfig(vocab_size=V, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                              head_dim=8, intermediate_size=64, num_hidden_layers=2,
                              tie_word_embeddings=False, rms_norm_eps=1e-5, rope_theta=500000.0,
                              rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                            "high_freq_factor": 4.0,
                                            "original_max_position_embeddings": 16},
                              **common),
        "mistral": MistralConfig(vocab_size=V, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                                 intermediate_size=96, num_hidden_layers=2, tie_word_embeddings=False,
                                 sliding_window=None, **common),
        "qwen2": Qwen2Config(vocab_size=V, hidden_size=48, num_attention_heads=6, num_key_value_heads=2,
                             intermediate_size=72, num_hidden_layers=2, tie_word_embeddings=True,
                             use_sliding_window=False, **common),
        "gemma": GemmaConfig(vocab_size=V, hidden_size=48, num_attention_heads=2, num_key_value_heads=1,
                             head_dim=32, intermediate_size=72, num_hidden_layers=2,
                             hidden_act="gelu_pytorch_tanh", hidden_activation="gelu_pytorch_tanh",
                             tie_word_embeddings=True, **common),
        "phi": PhiConfig(vocab_size=224, hidden_size=48, num_attention_heads=4, num_key_value_heads=4,
                         intermediate_size=192, num_hidden_layers=2, partial_rotary_factor=0.5,
                         hidden_act="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attention_dropout=0.0,
                         tie_word_embeddings=False, **common),
    }


def randomize(model, seed, gemma_norm):
    """Every parameter random: matrices/embeddings N(0, 0.2), biases N(0, 0.2), norm weights
    1 + N(0, 0.3) (Gemma: N(0, 0.3), since Gemma applies 1 + w), norm biases N(0, 0.2)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if "norm" in name and name.endswith("weight"):
                val = 0.3 * noise if gemma_norm else 1.0 + 0.3 * noise
            else:
                val = 0.2 * noise
            p.copy_(val)


TINY_PROMPTS = [
    "The cat sat on the mat",
    "Question: 2+3?\nAnswer:",
    "The king reads the old book",
]
TINY_SCORES = [
    ("The cat sat on the", " mat."),
    ("Question: 2+3?\nAnswer:", " 5"),
]  # a third, greedy-true request is built from the model's own greedy output


@torch.no_grad()
def logits_of(model, ids, mask=None):
    x = torch.tensor([ids], dtype=torch.long)
    return model(input_ids=x, attention_mask=mask, use_cache=False).logits[0].float()


@torch.no_grad()
def greedy_cached(model, ids, n):
    out = model(input_ids=torch.tensor([ids]), use_cache=True)
    past, toks, margins = out.past_key_values, [], []
    for i in range(n):
        last = out.logits[0, -1].float()
        top2 = torch.topk(last, 2).values
        margins.append(float(top2[0] - top2[1]))
        nxt = int(torch.argmax(last))
        toks.append(nxt)
        if i + 1 < n:
            out = model(input_ids=torch.tensor([[nxt]]), past_key_values=past, use_cache=True)
            past = out.past_key_values
    return toks, min(margins)


@torch.no_grad()
def greedy_nocache(model, ids, n):
    seq = list(ids)
    for _ in range(n):
        seq.append(int(torch.argmax(logits_of(model, seq)[-1])))
    return seq[len(ids):]


@torch.no_grad()
def score(model, encode, context, continuation):
    """lm-evaluation-harness loglikelihood: whole = enc(ctx+cont), cont = whole[len(enc(ctx)):]."""
    whole = encode(context + continuation)
    ctx = encode(context)
    cont = whole[len(ctx):]
    assert len(cont) > 0
    lp = torch.log_softmax(logits_of(model, whole), dim=-1)
    rows = lp[len(ctx) - 1: len(whole) - 1]
    tgt = torch.tensor(cont)
    picked = rows.gather(1, tgt[:, None])[:, 0]
    is_greedy = bool((rows.argmax(-1) == tgt).all())
    return {"context": context, "continuation": continuation, "context_ids": ctx,
            "continuation_ids": cont, "logprobs": [r7(v) for v in picked.tolist()],
            "sum": r7(picked.double().sum()), "greedy": is_greedy}


MIN_MARGIN = 2e-3


def min_margin(model, tok):
    return min(greedy_cached(model, tok.encode(t).ids, N_GREEDY)[1] for t in TINY_PROMPTS)


def check_masks(model, ids, causal, bidir, name):
    n = len(ids)
    add = torch.full((n, n), torch.finfo(torch.float32).min).triu(1)[None, None]
    explicit = logits_of(model, ids, add)
    assert torch.allclose(explicit, causal, atol=1e-5, rtol=0), f"{name}: explicit 4D causal != default"
    for p in range(n - 1):
        d = (bidir[p] - causal[p]).abs().max().item()
        assert d > 1e-3, f"{name}: bidir == causal at position {p} ({d}); 4D mask not honoured?"


def reference_for(model, name, tok, weights_dtype):
    encode = lambda s: tok.encode(s).ids  # noqa: E731  (BOS added by the post-processor)
    ref = {"model": name, "dtype": "float32", "weights_dtype": weights_dtype,
           "vocab_size": model.config.vocab_size, "tokenizer_vocab_size": tok.get_vocab_size(),
           "prompts": [], "score": []}
    for text in TINY_PROMPTS:
        ids = encode(text)
        assert ids[0] == 1 and 5 <= len(ids) <= 12, (text, ids)
        causal = logits_of(model, ids)
        bidir = logits_of(model, ids, torch.zeros(1, 1, len(ids), len(ids)))
        check_masks(model, ids, causal, bidir, name)
        g, margin = greedy_cached(model, ids, N_GREEDY)
        assert g == greedy_nocache(model, ids, N_GREEDY), f"{name}: cached greedy != recomputed"
        if margin < 1e-3:
            print(f"WARNING {name}: greedy margin {margin:.2e} for {text!r}", file=sys.stderr)
        ref["prompts"].append({"text": text, "ids": ids, "causal_logits": r7list(causal),
                               "bidir_logits": r7list(bidir), "greedy": g,
                               "greedy_min_margin": r7(margin)})
    for c, k in TINY_SCORES:
        ref["score"].append(score(model, encode, c, k))
    # A request whose continuation is the model's own greedy output -> "greedy": true.
    p0 = ref["prompts"][0]
    for k in (4, 3, 2, 1):
        cont = tok.decode(p0["greedy"][:k], skip_special_tokens=False)
        if cont and encode(p0["text"] + cont) == p0["ids"] + p0["greedy"][:k]:
            s = score(model, encode, p0["text"], cont)
            assert s["greedy"], f"{name}: expected greedy continuation"
            ref["score"].append(s)
            break
    else:
        print(f"WARNING {name}: no round-tripping greedy continuation", file=sys.stderr)
    return ref


def make_tiny(out_root):
    from transformers import AutoModelForCausalLM

    t0 = time.time()
    tok = make_tokenizer()
    models_dir = out_root / "models"
    for i, (name, cfg) in enumerate(tiny_configs().items()):
        torch.manual_seed(100 + i)
        model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager", dtype=torch.float32)
        model.eval()
        # Re-draw the weights until no greedy step is a near-tie (so a 1e-5 numerical difference
        # cannot flip a greedy token); for llama also check the bf16-rounded copy.
        for attempt in range(20):
            seed = 1000 + i + 100 * attempt
            randomize(model, seed=seed, gemma_norm=(name == "gemma"))
            m = min_margin(model, tok)
            if name == "llama":
                # Round the parameters only: module.to(bf16) would also round the rotary
                # inv_freq buffer, which is not in the state dict and would not be restored.
                params = list(model.parameters())
                saved = [q.detach().clone() for q in params]
                with torch.no_grad():
                    for q in params:
                        q.copy_(q.to(torch.bfloat16).to(torch.float32))
                m = min(m, min_margin(model, tok))
                with torch.no_grad():
                    for q, v in zip(params, saved):
                        q.copy_(v)
            if m >= MIN_MARGIN:
                break
        else:
            sys.exit(f"{name}: no seed with greedy margin >= {MIN_MARGIN}")
        d = models_dir / name
        if d.exists():
            shutil.rmtree(d)
        model.save_pretrained(d, safe_serialization=True)
        (d / "generation_config.json").unlink(missing_ok=True)
        tok.save(str(d / "tokenizer.json"))
        dump_json(reference_for(model, name, tok, "float32"), d / "reference.json")
        print(f"{name}: {sum(p.numel() for p in model.parameters())} params, seed {seed}, "
              f"min greedy margin {m:.2e}", file=sys.stderr)

        if name == "llama":
            # bf16, sharded into two files; reference = the bf16 values widened to f32.
            db = models_dir / "llama_bf16"
            if db.exists():
                shutil.rmtree(db)
            mb = model.to(torch.bfloat16)  # in place; `model` is not used after this
            total = sum(p.numel() * 2 for p in mb.parameters())
            mb.save_pretrained(db, safe_serialization=True, max_shard_size=total // 2 + 4096)
            (db / "generation_config.json").unlink(missing_ok=True)
            shards = sorted(p.name for p in db.glob("model-*.safetensors"))
            assert len(shards) == 2 and (db / "model.safetensors.index.json").exists(), shards
            tok.save(str(db / "tokenizer.json"))
            m32 = AutoModelForCausalLM.from_pretrained(db, dtype=torch.float32,
                                                       attn_implementation="eager").eval()
            assert all(p.dtype == torch.float32 for p in m32.parameters())
            dump_json(reference_for(m32, "llama_bf16", tok, "bfloat16"), db / "reference.json")
            print(f"llama_bf16: shards {shards}", file=sys.stderr)
    print(f"tiny models: {time.time() - t0:.1f}s", file=sys.stderr)


# --------------------------------------------------------------------------------------------
# SmolLM2-135M-Instruct (Q4_1 GGUF) through transformers
# --------------------------------------------------------------------------------------------
SMOL_PROMPTS = ["The capital of France is", "def fibonacci(n):", "Question: What is 2+3?\n\nAnswer:"]
SMOL_SCORES = [
    ("The capital of France is", " Paris"),
    ("Question: What is 2+3?\n\nAnswer:", " 5"),
    ("The quick brown fox jumps over the", " lazy dog"),
]
SMOL_TOKENIZER_CASES = [
    "Hello world", "hello", " hello", "  two leading spaces", "12345", "x = 3.14159",
    "The year 2024 had 366 days.", "héllo wörld 你好", "line one\nline two\n\nline four",
    "\ttabbed\tline", "<|im_start|>user\nHi!<|im_end|>", "<|im_start|>user",
    "def f(x):\n    return x ** 2", "emoji 🙂 ok", "don't can't I'm we'll", "", " ",
    "UPPER lower MiXeD",
]


def make_smollm2(out_root):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = GGUF_DIR / GGUF_NAME
    if not path.exists():
        sys.exit(f"{path} missing: run scripts/fetch-model.sh first")
    t0 = time.time()
    tok = AutoTokenizer.from_pretrained(GGUF_DIR, gguf_file=GGUF_NAME)
    model = AutoModelForCausalLM.from_pretrained(GGUF_DIR, gguf_file=GGUF_NAME, dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    t_load = time.time() - t0
    encode = lambda s: tok(s, add_special_tokens=False).input_ids  # noqa: E731
    cfg = model.config
    ref = {
        "model": "SmolLM2-135M-Instruct.Q4_1.gguf", "dtype": "float32",
        "loader": "transformers AutoModelForCausalLM.from_pretrained(gguf_file=...), dequantized by gguf",
        "config": {k: getattr(cfg, k, None) for k in (
            "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "rms_norm_eps", "rope_theta", "tie_word_embeddings",
            "bos_token_id", "eos_token_id")},
        "tokenizer": {
            "hf_class": type(tok).__name__,
            "bos_token": tok.bos_token, "bos_token_id": tok.bos_token_id,
            "eos_token": tok.eos_token, "eos_token_id": tok.eos_token_id,
            "hf_default_adds_bos": tok("a").input_ids[0] == tok.bos_token_id,
            "gguf_add_bos_token": False,
        },
        "add_special_tokens": False,
        "prompts": [], "score": [],
    }
    for text in SMOL_PROMPTS:
        ids = encode(text)
        last = logits_of(model, ids)[-1]
        top = torch.topk(last, 5)
        g, margin = greedy_cached(model, ids, 20)
        assert g == greedy_nocache(model, ids, 20), "smollm2: cached greedy != recomputed"
        ref["prompts"].append({
            "text": text, "ids": ids, "hf_default_ids": tok(text).input_ids,
            "top5_ids": top.indices.tolist(), "top5_logits": [r7(v) for v in top.values.tolist()],
            "greedy": g, "greedy_text": tok.decode(g), "greedy_min_margin": r7(margin)})
    for c, k in SMOL_SCORES:
        ref["score"].append(score(model, encode, c, k))
    dump_json(ref, out_root / "smollm2_reference.json")

    # Tokenizer cases. "ids": what the transformers GGUF tokenizer gives. "ids_digits_split": the
    # same vocab/merges with the SmolLM pre-tokenizer (Digits(individual) then ByteLevel), which is
    # what the original HF tokenizer.json and llama.cpp's "smollm" pre-type do.
    from tokenizers import Tokenizer, pre_tokenizers
    orig = Tokenizer.from_str(tok.backend_tokenizer.to_str())
    orig.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    cases = []
    for s in SMOL_TOKENIZER_CASES:
        ids = encode(s)
        alt = orig.encode(s, add_special_tokens=False).ids
        cases.append({"text": s, "ids": ids, "ids_digits_split": alt,
                      "decoded": tok.decode(ids)})
    dump_json({"tokenizer": "transformers GGUF tokenizer of " + GGUF_NAME, "add_special_tokens": False,
               "cases": cases}, out_root / "smollm2_tokenizer_cases.json")
    print(f"smollm2: load {t_load:.1f}s, total {time.time() - t0:.1f}s", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", choices=["tiny", "smollm2"])
    ap.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures")
    a = ap.parse_args()
    t0 = time.time()
    if a.only in (None, "tiny"):
        make_tiny(a.out)
    if a.only in (None, "smollm2"):
        make_smollm2(a.out)
    print(f"total {time.time() - t0:.1f}s", file=sys.stderr)


if __name__ == "__main__":
    main()
