"""Train the small demo BitNet b1.58 model shipped in ``bitnet_actor/demo_model/``.

A newcomer's first ``bitnet-actor serve`` without ``--model`` serves this model, so it must answer with text,
not noise, while staying a few MB in the repository.  This script builds it from scratch on a CPU in about ten
minutes:

1. **Corpus.**  Docstrings and comments of the running interpreter's standard library
   (``sysconfig.get_paths()["stdlib"]``), collected with :mod:`ast` and :mod:`tokenize`, cleaned (dedented,
   paragraphs reflowed, doctests, code-like comments and licence blocks dropped), plus short chat exchanges
   made from them ("What does the os module do?" -> the module docstring's first paragraph) so that the chat
   template's turns and the ``<|eot_id|>`` stop token are learnt.  A few source files are held out as the
   validation split.
2. **Tokenizer.**  A byte-level BPE (``tokenizers``) with ``<|begin_of_text|>``, ``<|end_of_text|>`` and
   ``<|eot_id|>``, a post-processor adding BOS, and the BitNet-b1.58-2B-4T style chat template.
3. **Model.**  The architecture of transformers' ``BitNetForCausalLM`` (ReLU² gated MLP, sub-norms before
   ``o_proj`` and ``down_proj``, RoPE, GQA, tied embeddings), written here as a plain torch module and trained
   with BitNet b1.58 quantization-aware training: absmean ternary weights and per-token absmax int8
   activations, both with straight-through estimators -- the same arithmetic as transformers' online
   ``AutoBitLinear``.
4. **Export.**  transformers' offline packed format: ternary codes as uint8 ``(ceil(out/4), in)`` (row ``p``
   holds output rows ``p + i*out/4`` in bit pairs ``2i``, codes 0/1/2 for -1/0/+1) with a ``weight_scale``
   (``linear_class: bitlinear``: the reciprocal of the absmean scale, which transformers divides by); embeddings
   and norms in bfloat16.  The packing is the project's own (:func:`kernels_cython.reference.to_hf_packed`).
5. **Checks.**  The exported directory is loaded with ``AutoModelForCausalLM.from_pretrained`` and its logits
   are compared with this script's quantized forward; greedy and sampled continuations are printed; the
   project's own engine (:func:`bitnet_actor.engine.load_model`) is tried on it when importable.

Everything is deterministic for a given ``--seed``, ``--steps``, thread count and Python version (the corpus is
that interpreter's standard library).  Without ``--steps`` the step count is derived from ``--minutes`` after
timing the first ``--hold`` steps (whose learning rates do not depend on it), and printed; pass it back as
``--steps`` to repeat a run exactly.

The stages live in ``ops/demo_model/``, one module each (corpus, tokenizer, network, training, export, checks);
this script holds the options, the model card and :func:`main`.

Usage::

    TORCHDYNAMO_DISABLE=1 .venv/bin/python ops/train_demo_model.py --minutes 9.5 --threads 2
    TORCHDYNAMO_DISABLE=1 .venv/bin/python ops/train_demo_model.py --steps 1800 --threads 2 --out /tmp/demo

Needs torch (CPU is fine), tokenizers, safetensors, numpy (for the project's packer) and, for the checks, transformers
and accelerate.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import sysconfig
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")  # transformers' BitNet helpers are @torch.compile'd

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the project's packages, when not installed

from demo_model import log
from demo_model.checks import check_engine, check_transformers
from demo_model.corpus import collect_corpus
from demo_model.export import OUTPUT_FILES, QUANTIZATION_CONFIG, export, load_exported
from demo_model.network import DemoBitNet, ModelArgs, count_parameters
from demo_model.tokenizer import BOS, encode_corpus, render_chat, train_tokenizer
from demo_model.training import evaluate, train

if TYPE_CHECKING:
    from collections.abc import Sequence

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "bitnet_actor" / "demo_model"


README_TEMPLATE = """\
# Demo model: a {size_mb:.1f} MB BitNet b1.58 trained on Python's docstrings

The model that `bitnet-actor serve` registers when no `--model` is given: small enough to ship in the
repository, trained enough to answer with English-like text about Python rather than noise.  It is **not** a
useful assistant: it parrots the style of the standard library's documentation, invents APIs, and repeats
itself under greedy decoding.  Use it to try the service, not to judge BitNet.

## How it was made

`ops/train_demo_model.py`; reproduce with

    {command}

* **Corpus**: docstrings and comments of the Python {py} standard library
  (`sysconfig.get_paths()["stdlib"]`, tests excluded), collected with `ast` and `tokenize`, cleaned (dedented,
  paragraphs reflowed, doctests / code-like comments / licence blocks dropped); plus {n_chat:,} chat exchanges
  made from them, e.g. *"What does the os module do?"* -> the module docstring's first paragraph.
  {n_train_files} source files for training ({train_tokens:,} tokens), {n_val_files} held out for validation
  ({val_tokens:,} tokens).
* **Tokenizer**: byte-level BPE, {vocab} tokens, trained on the same text; `<|begin_of_text|>` (BOS, added
  by the post-processor), `<|end_of_text|>` (end of a document) and `<|eot_id|>` (end of a chat turn; both
  stop generation).  Chat template in the BitNet-b1.58-2B-4T style: `User: ...<|eot_id|>Assistant: `.
* **Architecture**: transformers' `BitNetForCausalLM`: {layers} layers, hidden {hidden}, {heads} heads
  ({kv} key/value heads, head dim {head_dim}), ReLU² MLP of {inter}, sub-norms, RoPE (theta {theta:g}),
  tied embeddings, context {ctx}; {params:,} parameters of which {ternary:,} ternary.
* **Training**: BitNet b1.58 quantization-aware training from scratch (absmean ternary weights, per-token
  absmax int8 activations, straight-through estimators), AdamW (peak lr {lr:g}, weight decay {wd:g},
  cosine decay), {steps} steps of {batch} x {seq_len} tokens ({tokens_seen:,} tokens, {epochs:.1f} epochs) in
  {minutes:.1f} minutes on {threads} CPU thread(s), seed {seed}.
* **Result**: loss {train_loss:.3f} on training text, {val_loss:.3f} (perplexity {val_ppl:.1f}) on the held-out
  files (exported weights).
* **Format**: transformers' offline packed BitNet checkpoint: each linear layer's ternary weights as uint8
  `(out/4, in)` plus a float32 `weight_scale` (the reciprocal of the scale), `quantization_config`
  `{qc}`; embeddings and norms in bfloat16.
  Loads with `AutoModelForCausalLM.from_pretrained` (needs `accelerate`) and with the project's engine.
* **Checked at export**: {checks}

## What to expect

Continuations by transformers at export time, greedy and sampled with `generation_config.json`'s defaults
(temperature 0.7, top-p 0.9, top-k 40; seed {seed}), at most 40 tokens, stopping at `<|eot_id|>` /
`<|end_of_text|>`:

{samples}
"""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output model directory")
    p.add_argument("--minutes", type=float, default=10.0, help="training time budget when --steps is 0")
    p.add_argument("--steps", type=int, default=0, help="training steps (0: as many as fit --minutes)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--hidden-size", type=int, default=256)
    p.add_argument("--intermediate-size", type=int, default=640)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--context", type=int, default=512, help="max_position_embeddings")
    p.add_argument("--seq-len", type=int, default=512, help="training window")
    p.add_argument("--batch-size", type=int, default=2, help="windows per step (small: steps matter most here)")
    p.add_argument("--lr", type=float, default=4e-3, help="peak learning rate")
    p.add_argument("--final-lr-frac", type=float, default=0.05)
    p.add_argument("--warmup", type=int, default=100, help="linear warm-up steps")
    p.add_argument("--hold", type=int, default=300, help="steps at the peak learning rate before the decay")
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--val-fraction", type=float, default=0.05, help="share of stdlib files held out")
    p.add_argument("--val-tokens", type=int, default=65536, help="validation tokens evaluated")
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--no-checks", action="store_true", help="skip the transformers and engine checks")
    return p.parse_args(argv)


def reproduce_command(args: argparse.Namespace, steps: int) -> str:
    """The command line that repeats this run exactly: the step count, seed and threads, plus changed options."""
    defaults = vars(parse_args([]))
    skip = {"steps", "seed", "threads", "minutes", "out", "no_checks"}
    parts = [f"--steps {steps}", f"--seed {args.seed}", f"--threads {torch.get_num_threads()}"]
    parts += [f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k not in skip and v != defaults[k]]
    return "TORCHDYNAMO_DISABLE=1 .venv/bin/python ops/train_demo_model.py " + " ".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    """Collect the corpus, train the tokenizer and the model, export and check it."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    t0 = time.perf_counter()

    def elapsed() -> str:
        return f"{time.perf_counter() - t0:.0f}s"

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    corpus = collect_corpus(stdlib, args.val_fraction, args.seed)
    n_chars = sum(map(len, corpus.train_text)) + sum(len(q) + len(a) for q, a in corpus.train_chat)
    log(
        f"corpus: {stdlib} ({sys.version.split()[0]}): {corpus.files[0]} training files, {len(corpus.train_text)} "
        f"documents + {len(corpus.train_chat)} chat pairs, {n_chars / 1e6:.2f} MB; {corpus.files[1]} validation "
        f"files ({len(corpus.val_text)} documents + {len(corpus.val_chat)} chat pairs)  [{elapsed()}]"
    )
    tok = train_tokenizer(corpus.train_text + [render_chat(q) + a for q, a in corpus.train_chat], args.vocab_size)
    train_ids = encode_corpus(tok, corpus.train_text, corpus.train_chat, args.seed)
    val_ids = encode_corpus(tok, corpus.val_text, corpus.val_chat, args.seed)
    log(
        f"tokenizer: {tok.get_vocab_size()} tokens; {len(train_ids):,} training tokens "
        f"({n_chars / len(train_ids):.2f} chars/token), {len(val_ids):,} validation tokens  [{elapsed()}]"
    )

    a = ModelArgs(
        vocab_size=tok.get_vocab_size(),
        hidden_size=args.hidden_size,
        intermediate_size=args.intermediate_size,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        max_position_embeddings=args.context,
    )
    model = DemoBitNet(a)
    model.init_weights(torch.Generator().manual_seed(args.seed))
    total, ternary = count_parameters(model)
    log(f"model: {asdict(a)}; {total:,} parameters ({ternary:,} ternary); threads {torch.get_num_threads()}")

    bos_id = tok.token_to_id(BOS)
    stats = train(model, train_ids, bos_id, args)
    train_loss = evaluate(model, train_ids, args.seq_len, args.val_tokens, bos_id)
    val_loss = evaluate(model, val_ids, args.seq_len, args.val_tokens, bos_id)
    log(
        f"done: {stats['steps']} steps in {stats['seconds']:.0f}s; train loss {train_loss:.4f}, validation loss "
        f"{val_loss:.4f} (perplexity {math.exp(val_loss):.1f})"
    )

    out: Path = args.out
    sd = export(model, tok, out, "")
    exported = load_exported(model, sd)
    exported_val = evaluate(exported, val_ids, args.seq_len, args.val_tokens, bos_id)
    log(f"exported weights: validation loss {exported_val:.4f} (bf16 embeddings/norms)")

    samples_md, checks_md = "(checks skipped)", "(checks skipped)"
    if not args.no_checks:
        samples, rel = check_transformers(out, exported, model, val_ids, args.seed)
        report, summary = check_engine(out, samples)
        log("engine check:\n" + report)
        checks_md = (
            f"transformers reproduces the exported weights' quantized forward (relative logit error {rel:.1e}) "
            f"and its greedy tokens; {summary}."
        )
        samples_md = "\n".join(
            f"* `{s.label}`\n  * greedy: {json.dumps(s.greedy)}\n  * sampled: {json.dumps(s.sampled)}" for s in samples
        )

    size = sum((out / name).stat().st_size for name in OUTPUT_FILES if (out / name).is_file())
    readme = README_TEMPLATE.format(
        size_mb=size / 1e6,
        command=reproduce_command(args, int(stats["steps"])),
        py=sys.version.split()[0],
        n_chat=len(corpus.train_chat),
        n_train_files=corpus.files[0],
        n_val_files=corpus.files[1],
        train_tokens=len(train_ids),
        val_tokens=len(val_ids),
        vocab=a.vocab_size,
        layers=a.num_hidden_layers,
        hidden=a.hidden_size,
        heads=a.num_attention_heads,
        kv=a.num_key_value_heads,
        head_dim=a.head_dim,
        inter=a.intermediate_size,
        theta=a.rope_theta,
        ctx=a.max_position_embeddings,
        params=total,
        ternary=ternary,
        lr=args.lr,
        wd=args.weight_decay,
        steps=stats["steps"],
        batch=args.batch_size,
        seq_len=args.seq_len,
        tokens_seen=int(stats["steps"] * args.batch_size * args.seq_len),
        epochs=stats["steps"] * args.batch_size * args.seq_len / len(train_ids),
        minutes=stats["seconds"] / 60,
        threads=torch.get_num_threads(),
        seed=args.seed,
        train_loss=train_loss,
        val_loss=exported_val,
        val_ppl=math.exp(exported_val),
        qc=json.dumps(QUANTIZATION_CONFIG),
        samples=samples_md,
        checks=checks_md,
    )
    (out / "README.md").write_text(readme)
    for name in OUTPUT_FILES:
        log(f"  {name:24s} {(out / name).stat().st_size:>10,d} bytes")
    size = sum((out / name).stat().st_size for name in OUTPUT_FILES)
    log(f"total {size / 1e6:.2f} MB in {out}  [{elapsed()}]")
    log(f"reproduce: {reproduce_command(args, int(stats['steps']))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
