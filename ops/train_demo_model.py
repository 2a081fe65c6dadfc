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

Usage::

    TORCHDYNAMO_DISABLE=1 .venv/bin/python ops/train_demo_model.py --minutes 9.5 --threads 2
    TORCHDYNAMO_DISABLE=1 .venv/bin/python ops/train_demo_model.py --steps 1800 --threads 2 --out /tmp/demo

Needs torch (CPU is fine), tokenizers, safetensors, numpy (for the project's packer) and, for the checks, transformers
and accelerate.
"""

from __future__ import annotations

import argparse
import ast
import copy
import io
import json
import math
import os
import random
import re
import sys
import sysconfig
import time
import tokenize
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")  # transformers' BitNet helpers are @torch.compile'd

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the project's packages, when not installed

from kernels_cython.reference import TernaryMatrix, from_hf_packed, to_hf_packed

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from tokenizers import Tokenizer

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "bitnet_actor" / "demo_model"

BOS, EOS, EOT = "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"
SPECIAL_TOKENS = [BOS, EOS, EOT]
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first %}{{ bos_token }}{% endif %}"
    "{{ message['role'] | capitalize }}: {{ message['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}Assistant: {% endif %}"
)
QUANTIZATION_CONFIG = {"quant_method": "bitnet", "linear_class": "bitlinear", "quantization_mode": "offline"}

# Source files always kept in the training split: the demo prompts ask about them.
ALWAYS_TRAIN = {"os.py"}
SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__", "lib2to3"}

OUTPUT_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "README.md",
)
DEMO_PROMPTS = ["The function returns", "Return a list of"]
DEMO_CHAT = "What does the os module do?"


def log(msg: str) -> None:
    """Print a progress message at once."""
    print(msg, flush=True)


# ----------------------------------------------------------------------------------------------------------
# corpus


@dataclass
class Corpus:
    """Training and validation documents.

    Attributes:
        train_text: plain-text documents (docstrings, comment blocks) for training.
        train_chat: (question, answer) pairs for training.
        val_text: held-out plain-text documents.
        val_chat: held-out (question, answer) pairs.
        files: source files read (training, validation).
    """

    train_text: list[str]
    train_chat: list[tuple[str, str]]
    val_text: list[str]
    val_chat: list[tuple[str, str]]
    files: tuple[int, int]


_RST_ROLE = re.compile(r":[a-zA-Z:]+:`~?!?([^`<]+?)(?:\s*<[^`]*>)?`")
_DOUBLE_BACKTICK = re.compile(r"``([^`]+)``")
_BULLET = re.compile(r"^\s*(?:[-*+\u2022]|\d+[.)]|\(\w\))\s")
_CODEISH = re.compile(r"==|!=|[=\[\]{}<>]|\w\(|\bself\.|\breturn\b\s+\w+\(|^\s*(?:def|class|import|from)\s")
_WORD = re.compile(r"[A-Za-z][a-z]+")


def _prose_ratio(text: str) -> float:
    """Fraction of characters that are letters, spaces or ordinary punctuation."""
    if not text:
        return 0.0
    ok = sum(1 for c in text if c.isalpha() or c in " .,;:'\"!?()-/\n")
    return ok / len(text)


def _simplify_markup(text: str) -> str:
    """Replace reStructuredText roles and literals by their text."""
    text = _RST_ROLE.sub(r"\1", text)
    return _DOUBLE_BACKTICK.sub(r"\1", text)


def clean_docstring(doc: str) -> str:
    """Clean a docstring (already dedented by :func:`ast.get_docstring`).

    Paragraphs whose lines share one indentation and are not list items are reflowed into one line; others keep
    their line breaks.  Doctest paragraphs and paragraphs that are mostly code or symbols are dropped; runs of
    spaces collapse to one.

    Args:
        doc: the docstring.

    Returns:
        The cleaned text ('' when nothing is left).
    """
    out: list[str] = []
    for para in re.split(r"\n[ \t]*\n", _simplify_markup(doc.strip())):
        lines = [ln.rstrip() for ln in para.splitlines() if ln.strip()]
        if not lines or any(ln.lstrip().startswith((">>>", "...", "$ ", "%")) for ln in lines):
            continue
        joined = " ".join(ln.strip() for ln in lines)
        if _prose_ratio(joined) < 0.85 or len(_WORD.findall(joined)) < 2:
            continue
        indents = {len(ln) - len(ln.lstrip()) for ln in lines}
        if len(indents) == 1 and not any(_BULLET.match(ln) for ln in lines[1:]):
            out.append(re.sub(r"\s+", " ", joined))
        else:
            base = min(indents)
            kept = []
            for ln in lines:
                indent = min(len(ln) - len(ln.lstrip()) - base, 8)
                kept.append(" " * indent + re.sub(r"\s+", " ", ln.strip()))
            out.append("\n".join(kept))
    return "\n\n".join(out)


def first_paragraph(text: str, limit: int = 320) -> str:
    """The first paragraph of cleaned text as one line, cut at a sentence end near ``limit`` characters."""
    para = re.sub(r"\s+", " ", text.split("\n\n", 1)[0]).strip()
    if len(para) <= limit:
        return para
    cut = para.rfind(". ", 0, limit)
    return para[: cut + 1] if cut > limit // 3 else ""


def _comment_blocks(source: str) -> Iterator[str]:
    """Blocks of consecutive full-line comments of a source file, as prose."""
    block: list[str] = []
    last_row = -2
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, SyntaxError, IndentationError):
        return
    line_starts: dict[int, int] = {}
    for tok in tokens:
        if tok.type not in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT):
            line_starts.setdefault(tok.start[0], tok.start[1])
    for tok in tokens:
        if tok.type != tokenize.COMMENT:
            continue
        row = tok.start[0]
        full_line = row not in line_starts or line_starts[row] > tok.start[1]
        text = tok.string.lstrip("#").strip()
        if not full_line or row != last_row + 1:
            if block:
                yield " ".join(block)
            block = []
        if full_line and text and not set(text) <= set("-=*#~_+ "):
            block.append(text)
        last_row = row if full_line else -2
    if block:
        yield " ".join(block)


def clean_comment(block: str) -> str:
    """Keep a comment block that reads as English prose ('' otherwise)."""
    text = re.sub(r"\s+", " ", _simplify_markup(block)).strip()
    lowered = text.lower()
    if len(text) < 30 or len(_WORD.findall(text)) < 5:
        return ""
    if any(w in lowered for w in ("copyright", "license", "all rights reserved", "-*-", "noqa", "type: ignore")):
        return ""
    if _CODEISH.search(text) or _prose_ratio(text) < 0.9:
        return ""
    return text


_MODULE_QUESTIONS = (
    "What does the {m} module do?",
    "What is the {m} module for?",
    "Tell me about the {m} module.",
    "What is {m}?",
)
_FUNCTION_QUESTIONS = ("What does {m}.{f}() do?", "What does {f} do in {m}?", "Explain {m}.{f}.")
_CLASS_QUESTIONS = ("What is {m}.{f}?", "What does the {f} class in {m} do?", "Describe {m}.{f}.")


def _module_name(rel: Path) -> str:
    parts = list(rel.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _file_documents(path: Path, rel: Path, rng: random.Random) -> tuple[list[str], list[tuple[str, str]]]:
    """Plain-text documents and chat pairs of one source file."""
    try:
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source)
    except (OSError, UnicodeDecodeError, SyntaxError, ValueError):
        return [], []
    module = _module_name(rel)
    public_module = not any(p.startswith("_") for p in module.split("."))
    docs: list[str] = []
    chats: list[tuple[str, str]] = []

    def visit(node: ast.AST, qual: str) -> None:
        doc = None
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=True)
        if doc:
            text = clean_docstring(doc)
            if len(text) >= 20:
                docs.append(text)
                answer = first_paragraph(text)
                if public_module and len(answer) >= 25 and answer[0].isupper():
                    if isinstance(node, ast.Module):
                        chats.append((rng.choice(_MODULE_QUESTIONS).format(m=module), answer))
                    elif not any(part.startswith("_") for part in qual.split(".")):
                        templates = _CLASS_QUESTIONS if isinstance(node, ast.ClassDef) else _FUNCTION_QUESTIONS
                        chats.append((rng.choice(templates).format(m=module, f=qual), answer))
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                visit(child, f"{qual}.{child.name}" if qual else child.name)

    visit(tree, "")
    comments = [c for c in (clean_comment(b) for b in _comment_blocks(source)) if c]
    if comments:
        docs.append("\n".join(comments))
    return docs, chats


def collect_corpus(stdlib: Path, val_fraction: float, seed: int) -> Corpus:
    """Collect the standard library's docstrings and comments, split by source file.

    Args:
        stdlib: the standard library directory.
        val_fraction: the share of source files held out for validation.
        seed: seeds the split and the choice of question wordings.

    Returns:
        The corpus.
    """
    files: list[Path] = []
    for d, dirs, names in os.walk(stdlib):
        dirs[:] = sorted(x for x in dirs if x not in SKIP_DIRS and not x.startswith("."))
        files.extend(Path(d) / n for n in sorted(names) if n.endswith(".py") and not n.startswith("test_"))
    rng = random.Random(seed)
    corpus = Corpus([], [], [], [], (0, 0))
    n_train = n_val = 0
    for path in files:
        rel = path.relative_to(stdlib)
        is_val = rng.random() < val_fraction and str(rel) not in ALWAYS_TRAIN
        docs, chats = _file_documents(path, rel, rng)
        if is_val:
            corpus.val_text.extend(docs)
            corpus.val_chat.extend(chats)
            n_val += 1
        else:
            corpus.train_text.extend(docs)
            corpus.train_chat.extend(chats)
            n_train += 1
    corpus.files = (n_train, n_val)
    return corpus


# ----------------------------------------------------------------------------------------------------------
# tokenizer


def train_tokenizer(texts: Sequence[str], vocab_size: int) -> Tokenizer:
    """Train a byte-level BPE with the special tokens, a BOS-adding post-processor and a byte-level decoder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS}:0 $A:0", pair=f"{BOS}:0 $A:0 {BOS}:1 $B:1", special_tokens=[(BOS, bos_id)]
    )
    return tok


def tokenizer_config(tok: Tokenizer, context: int) -> dict[str, object]:
    """transformers' ``tokenizer_config.json`` for the trained tokenizer."""
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": EOS,
        "add_bos_token": True,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": context,
        "model_input_names": ["input_ids", "attention_mask"],
        "chat_template": CHAT_TEMPLATE,
        "added_tokens_decoder": {
            str(tok.token_to_id(t)): {
                "content": t,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": True,
            }
            for t in SPECIAL_TOKENS
        },
    }


def render_chat(question: str) -> str:
    """The chat template rendered for one user turn with the generation prompt (what a server sends)."""
    return f"{BOS}User: {question}{EOT}Assistant: "


def encode_corpus(tok: Tokenizer, texts: Sequence[str], chats: Sequence[tuple[str, str]], seed: int) -> torch.Tensor:
    """Tokenize documents into one stream: ``BOS text EOS`` and ``BOS User: q EOT Assistant: a EOT EOS``.

    A chat answer is encoded apart from its prompt, as at inference: the prompt ends with the template's
    "Assistant: " (its trailing space one token) and the answer starts without a leading space.

    Args:
        tok: the tokenizer.
        texts: plain-text documents.
        chats: (question, answer) pairs.
        seed: seeds the interleaving order.

    Returns:
        int64 token ids.
    """
    eos, eot = tok.token_to_id(EOS), tok.token_to_id(EOT)
    seqs: list[list[int]] = [[*e.ids, eos] for e in tok.encode_batch(list(texts))]
    prompts = tok.encode_batch([render_chat(q) for q, _ in chats], add_special_tokens=False)
    answers = tok.encode_batch([a for _, a in chats], add_special_tokens=False)
    seqs.extend(p.ids + a.ids + [eot, eos] for p, a in zip(prompts, answers, strict=True))
    random.Random(seed).shuffle(seqs)
    return torch.tensor([t for s in seqs for t in s], dtype=torch.long)


# ----------------------------------------------------------------------------------------------------------
# model (transformers' BitNetForCausalLM, with BitNet b1.58 quantization-aware training)


@dataclass
class ModelArgs:
    """Hyper-parameters (the names of transformers' ``BitNetConfig``)."""

    vocab_size: int = 4096
    hidden_size: int = 256
    intermediate_size: int = 640
    num_hidden_layers: int = 3
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 512
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.hidden_size // self.num_attention_heads


class _WeightQuant(torch.autograd.Function):
    """Absmean ternary weights, as transformers' ``WeightQuant``; the gradient passes straight through."""

    @staticmethod
    def forward(ctx: object, weight: torch.Tensor) -> torch.Tensor:
        scale = 1.0 / weight.abs().mean().clamp(min=1e-5)
        return (weight * scale).round().clamp(-1, 1) / scale

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:
        return grad


class _ActQuant(torch.autograd.Function):
    """Per-token absmax int8 activations, as transformers' ``ActQuant``; straight-through gradient."""

    @staticmethod
    def forward(ctx: object, x: torch.Tensor) -> torch.Tensor:
        scale = 127 / x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-5)
        return (x * scale).round().clamp(-128, 127) / scale

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:
        return grad


class FusedBitLinear(nn.Module):
    """Several BitNet linear layers reading the same input (q/k/v, gate/up), computed as one matmul.

    Each part keeps its own absmean weight scale, exactly as separate ``AutoBitLinear`` layers; the input's
    int8 quantization is per token and so shared.
    """

    def __init__(self, in_features: int, out_features: Sequence[int]) -> None:
        super().__init__()
        self.parts = nn.ParameterList(nn.Parameter(torch.empty(n, in_features)) for n in out_features)
        self.fixed: torch.Tensor | None = None

    def quantized_weight(self) -> torch.Tensor:
        """The concatenated ternary-times-scale weights (straight-through to the latent ones), or the fixed
        weights set by :func:`load_exported`."""
        if self.fixed is not None:
            return self.fixed
        return torch.cat([_WeightQuant.apply(w) for w in self.parts], dim=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(_ActQuant.apply(x), self.quantized_weight())


class RMSNorm(nn.Module):
    """transformers' ``BitNetRMSNorm``."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class Block(nn.Module):
    """One ``BitNetDecoderLayer``."""

    def __init__(self, a: ModelArgs) -> None:
        super().__init__()
        self.a = a
        hd, nh, nkv = a.head_dim, a.num_attention_heads, a.num_key_value_heads
        self.input_layernorm = RMSNorm(a.hidden_size, a.rms_norm_eps)
        self.qkv = FusedBitLinear(a.hidden_size, (nh * hd, nkv * hd, nkv * hd))
        self.attn_sub_norm = RMSNorm(nh * hd, a.rms_norm_eps)
        self.o_proj = FusedBitLinear(nh * hd, (a.hidden_size,))
        self.post_attention_layernorm = RMSNorm(a.hidden_size, a.rms_norm_eps)
        self.gate_up = FusedBitLinear(a.hidden_size, (a.intermediate_size, a.intermediate_size))
        self.ffn_sub_norm = RMSNorm(a.intermediate_size, a.rms_norm_eps)
        self.down_proj = FusedBitLinear(a.intermediate_size, (a.hidden_size,))

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        a = self.a
        b, t, _ = x.shape
        hd, nh, nkv = a.head_dim, a.num_attention_heads, a.num_key_value_heads
        q, k, v = self.qkv(self.input_layernorm(x)).split((nh * hd, nkv * hd, nkv * hd), dim=-1)
        q = q.view(b, t, nh, hd).transpose(1, 2)
        k = k.view(b, t, nkv, hd).transpose(1, 2)
        v = v.view(b, t, nkv, hd).transpose(1, 2)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        if nkv != nh:
            k = k.repeat_interleave(nh // nkv, dim=1)
            v = v.repeat_interleave(nh // nkv, dim=1)
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        att = att.transpose(1, 2).reshape(b, t, nh * hd)
        x = x + self.o_proj(self.attn_sub_norm(att))
        gate, up = self.gate_up(self.post_attention_layernorm(x)).chunk(2, dim=-1)
        return x + self.down_proj(self.ffn_sub_norm(F.relu(gate).square() * up))


class DemoBitNet(nn.Module):
    """``BitNetForCausalLM`` with tied embeddings, trained with quantization-aware linear layers."""

    def __init__(self, a: ModelArgs) -> None:
        super().__init__()
        self.a = a
        self.embed_tokens = nn.Embedding(a.vocab_size, a.hidden_size)
        self.layers = nn.ModuleList(Block(a) for _ in range(a.num_hidden_layers))
        self.norm = RMSNorm(a.hidden_size, a.rms_norm_eps)
        inv_freq = 1.0 / (a.rope_theta ** (torch.arange(0, a.head_dim, 2, dtype=torch.float) / a.head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def init_weights(self, generator: torch.Generator) -> None:
        """Normal(0, 0.02) embeddings and linear weights, unit norms."""
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                nn.init.ones_(p)
            else:
                nn.init.normal_(p, 0.0, 0.02, generator=generator)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, V) of token ids (B, T)."""
        t = ids.shape[1]
        freqs = torch.arange(t, dtype=torch.float)[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos(), emb.sin()
        x = self.embed_tokens(ids)
        for layer in self.layers:
            x = layer(x, cos, sin)
        return F.linear(self.norm(x), self.embed_tokens.weight)


def count_parameters(model: DemoBitNet) -> tuple[int, int]:
    """(all parameters, ternary parameters)."""
    total = sum(p.numel() for p in model.parameters())
    ternary = sum(p.numel() for m in model.modules() if isinstance(m, FusedBitLinear) for p in m.parts)
    return total, ternary


# ----------------------------------------------------------------------------------------------------------
# training


def lr_at(step: int, total: int, peak: float, warmup: int, hold: int, final_frac: float) -> float:
    """Linear warm-up to ``peak`` over ``warmup`` steps, ``peak`` until step ``hold``, then cosine decay to
    ``final_frac * peak`` at ``total``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    if step < hold:
        return peak
    progress = min(1.0, (step - hold) / max(1, total - hold))
    return peak * (final_frac + (1 - final_frac) * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def evaluate(model: DemoBitNet, ids: torch.Tensor, seq_len: int, max_tokens: int, bos_id: int, batch: int = 8) -> float:
    """Mean next-token cross-entropy over consecutive windows of ``ids`` (at most ``max_tokens`` predictions;
    BOS targets are not counted, see :func:`train`)."""
    model.eval()
    n = min(len(ids) - 1, max_tokens) // seq_len
    windows = ids[: n * seq_len + 1]
    total, count = 0.0, 0
    for i in range(0, n, batch):
        rows = range(i, min(n, i + batch))
        x = torch.stack([windows[r * seq_len : (r + 1) * seq_len] for r in rows])
        y = torch.stack([windows[r * seq_len + 1 : (r + 1) * seq_len + 1] for r in rows])
        logits = model(x)
        y = y.masked_fill(y == bos_id, -100)
        total += F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum", ignore_index=-100).item()
        count += int((y != -100).sum())
    model.train()
    return total / max(1, count)


def train(model: DemoBitNet, data: torch.Tensor, bos_id: int, args: argparse.Namespace) -> dict[str, float]:
    """Train with AdamW on random windows of ``data``; returns summary numbers.

    BOS is never a target: it only follows EOS, where generation has stopped, and a model that learnt to emit it
    would run on past the end of a document.

    The step count is ``args.steps`` or, when 0, what fits ``args.minutes``: at step ``args.hold`` the speed of
    the previous ``args.hold / 2`` steps sets it.  The learning rate does not depend on the step count before
    ``hold`` (warm-up, then the peak), so a run repeated with ``--steps`` set to the count found is identical.
    """
    gen = torch.Generator().manual_seed(args.seed + 1)
    decay = [p for n, p in model.named_parameters() if p.ndim == 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim == 2 and "embed" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.95),
        eps=1e-8,
    )
    total = args.steps
    warmup, hold = args.warmup, args.hold
    if total:
        hold = min(hold, total // 2)  # as found by --minutes, which makes total >= 2 * hold, or shorter
        warmup = max(1, min(warmup, hold // 2))
    elif not 0 < warmup <= hold // 2:
        raise SystemExit("--warmup must be positive and at most half of --hold")
    t_len, b = args.seq_len, args.batch_size
    start = t_mid = time.perf_counter()
    running, seen = 0.0, 0
    step, lr = 0, 0.0
    while True:
        if not args.steps and step == hold // 2:
            t_mid = time.perf_counter()
        if not args.steps and step == hold:
            now = time.perf_counter()
            per_step = (now - t_mid) / (hold - hold // 2)
            total = max(2 * hold, hold + int((args.minutes * 60 - (now - start)) / per_step))
            log(
                f"timing: {per_step:.3f} s/step -> {total} steps in {args.minutes:g} min (--steps {total} repeats this)"
            )
        if total and step >= total:
            break
        lr = lr_at(step, total or 2 * hold, args.lr, warmup, hold, args.final_lr_frac)
        for group in opt.param_groups:
            group["lr"] = lr
        starts = torch.randint(0, len(data) - t_len - 1, (b,), generator=gen).tolist()
        x = torch.stack([data[s : s + t_len] for s in starts])
        y = torch.stack([data[s + 1 : s + t_len + 1] for s in starts])
        y = y.masked_fill(y == bos_id, -100)
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten(), ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        running += loss.item()
        seen += 1
        step += 1
        if step % args.log_every == 0 or step == total:
            elapsed = time.perf_counter() - start
            eta = f"{elapsed / step * (total - step):6.1f}s" if total else "?"
            log(
                f"step {step:5d}/{total or '?'}  loss {running / seen:.4f}  lr {lr:.2e}  "
                f"{step * b * t_len / elapsed:,.0f} tok/s  elapsed {elapsed:6.1f}s  eta {eta}"
            )
            running, seen = 0.0, 0
        if not args.steps and time.perf_counter() - start > args.minutes * 60 * 1.25 + 30:
            log(f"WARNING: stopping at step {step} of {total}: far over the --minutes budget")
            break
    return {"steps": step, "seconds": time.perf_counter() - start, "last_lr": lr}


# ----------------------------------------------------------------------------------------------------------
# export


def pack_ternary(codes: torch.Tensor) -> torch.Tensor:
    """Pack ternary codes (N, K) in {-1, 0, 1} into uint8 (ceil(N/4), K), transformers' ``pack_weights`` layout.

    The project's packer (:func:`kernels_cython.reference.to_hf_packed`) does the work; padding rows get zero bits.
    """
    packed, _ = to_hf_packed(TernaryMatrix.from_codes(codes.numpy().astype(np.int8)))
    return torch.from_numpy(packed)


def unpack_ternary(packed: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of :func:`pack_ternary` (float32 codes (n, K)), by :func:`kernels_cython.reference.from_hf_packed`."""
    return torch.from_numpy(from_hf_packed(packed.numpy(), 1.0, n).to_codes()).float()


def ternarize(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes, inv) of latent weights with the arithmetic of :class:`_WeightQuant`: ``W ~ codes / inv``."""
    inv = 1.0 / w.abs().mean().clamp(min=1e-5)
    return (w * inv).round().clamp(-1, 1), inv


# fused module attribute -> the transformers modules it holds, in order
_LINEARS = {
    "qkv": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "o_proj": ("self_attn.o_proj",),
    "gate_up": ("mlp.gate_proj", "mlp.up_proj"),
    "down_proj": ("mlp.down_proj",),
}
_NORMS = {
    "input_layernorm": "input_layernorm",
    "attn_sub_norm": "self_attn.attn_sub_norm",
    "post_attention_layernorm": "post_attention_layernorm",
    "ffn_sub_norm": "mlp.ffn_sub_norm",
}


def hf_state_dict(model: DemoBitNet) -> dict[str, torch.Tensor]:
    """The checkpoint in transformers' offline packed BitNet layout.

    ``linear_class: bitlinear``: ``weight`` holds the packed codes and ``weight_scale`` the reciprocal of the
    absmean scale (transformers divides by it), float32.  Embeddings and norms are bfloat16.
    """
    bf16 = torch.bfloat16
    sd: dict[str, torch.Tensor] = {"model.embed_tokens.weight": model.embed_tokens.weight.detach().to(bf16)}
    for i, layer in enumerate(model.layers):
        p = f"model.layers.{i}."
        for attr, names in _LINEARS.items():
            for name, w in zip(names, getattr(layer, attr).parts, strict=True):
                codes, inv = ternarize(w.detach().float())
                sd[p + name + ".weight"] = pack_ternary(codes)
                sd[p + name + ".weight_scale"] = inv.reshape(1).float()
        for attr, name in _NORMS.items():
            sd[p + name + ".weight"] = getattr(layer, attr).weight.detach().to(bf16)
    sd["model.norm.weight"] = model.norm.weight.detach().to(bf16)
    return {k: v.contiguous() for k, v in sd.items()}


def load_exported(model: DemoBitNet, sd: dict[str, torch.Tensor]) -> DemoBitNet:
    """A copy of ``model`` computing with exactly the exported values: bf16-rounded embeddings and norms, and
    fixed ``codes / weight_scale`` linear weights unpacked from the checkpoint."""
    m = copy.deepcopy(model)
    with torch.no_grad():
        m.embed_tokens.weight.copy_(sd["model.embed_tokens.weight"].float())
        m.norm.weight.copy_(sd["model.norm.weight"].float())
        for i, layer in enumerate(m.layers):
            p = f"model.layers.{i}."
            for attr, name in _NORMS.items():
                getattr(layer, attr).weight.copy_(sd[p + name + ".weight"].float())
            for attr, names in _LINEARS.items():
                fused: FusedBitLinear = getattr(layer, attr)
                weights = [
                    unpack_ternary(sd[p + name + ".weight"], w.shape[0]) / sd[p + name + ".weight_scale"].float()
                    for name, w in zip(names, fused.parts, strict=True)
                ]
                fused.fixed = torch.cat(weights, dim=0)
    return m


# PreTrainedConfig's generic fields, meaningless for this model: left out of config.json.
_GENERIC_CONFIG_KEYS = {
    "_name_or_path",
    "chunk_size_feed_forward",
    "id2label",
    "label2id",
    "is_encoder_decoder",
    "output_attentions",
    "output_hidden_states",
    "problem_type",
    "return_dict",
}


def hf_config(a: ModelArgs, tok: Tokenizer) -> dict[str, object]:
    """``config.json`` for transformers' ``BitNetForCausalLM`` with the offline packed quantization config."""
    from transformers import BitNetConfig

    cfg = BitNetConfig(
        vocab_size=a.vocab_size,
        hidden_size=a.hidden_size,
        intermediate_size=a.intermediate_size,
        num_hidden_layers=a.num_hidden_layers,
        num_attention_heads=a.num_attention_heads,
        num_key_value_heads=a.num_key_value_heads,
        hidden_act="relu2",
        max_position_embeddings=a.max_position_embeddings,
        rms_norm_eps=a.rms_norm_eps,
        tie_word_embeddings=True,
        attention_bias=False,
        bos_token_id=tok.token_to_id(BOS),
        eos_token_id=[tok.token_to_id(EOS), tok.token_to_id(EOT)],
        pad_token_id=tok.token_to_id(EOS),
        rope_parameters={"rope_type": "default", "rope_theta": a.rope_theta},
    )
    d = cfg.to_dict()
    d["architectures"] = ["BitNetForCausalLM"]
    d["head_dim"] = a.head_dim
    d["dtype"] = "float32"  # compute dtype for transformers; the tensors themselves are stored smaller
    d["quantization_config"] = dict(QUANTIZATION_CONFIG)
    return {k: d[k] for k in sorted(d) if k not in _GENERIC_CONFIG_KEYS}


def export(model: DemoBitNet, tok: Tokenizer, out: Path, readme: str) -> dict[str, torch.Tensor]:
    """Write the model directory; returns the saved tensors."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    for name in OUTPUT_FILES:  # only what this script writes: --out may be a directory with other files
        (out / name).unlink(missing_ok=True)
    a = model.a
    sd = hf_state_dict(model)
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(hf_config(a, tok), indent=2) + "\n")
    gen = {
        "bos_token_id": tok.token_to_id(BOS),
        "eos_token_id": [tok.token_to_id(EOS), tok.token_to_id(EOT)],
        "pad_token_id": tok.token_to_id(EOS),
        "do_sample": True,
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": 40,
        "max_new_tokens": 128,
    }
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(
        json.dumps(tokenizer_config(tok, a.max_position_embeddings), indent=2) + "\n"
    )
    (out / "README.md").write_text(readme)
    return sd


# ----------------------------------------------------------------------------------------------------------
# checks


@dataclass
class Sample:
    """A demo prompt and transformers' continuations of it."""

    label: str
    prompt_ids: list[int]
    greedy_ids: list[int]
    greedy: str
    sampled: str


@torch.no_grad()
def greedy(model: DemoBitNet, ids: list[int], n: int, stop: set[int]) -> list[int]:
    """Greedy continuation (without the stop token) by this script's model, recomputing the whole prefix."""
    out: list[int] = []
    for _ in range(n):
        nxt = int(model(torch.tensor([ids + out]))[0, -1].argmax())
        if nxt in stop:
            break
        out.append(nxt)
    return out


def _until_stop(ids: list[int], stop: set[int]) -> list[int]:
    for i, t in enumerate(ids):
        if t in stop:
            return ids[:i]
    return ids


@torch.no_grad()
def check_transformers(
    out: Path, exported: DemoBitNet, trained: DemoBitNet, val: torch.Tensor, seed: int, new_tokens: int = 40
) -> tuple[list[Sample], float]:
    """Load ``out`` with transformers, compare its logits with the quantized forward, print continuations.

    Args:
        out: the exported directory.
        exported: this script's model holding the exported values (:func:`load_exported`).
        trained: the trained model.
        val: validation token ids.
        seed: seeds sampling.
        new_tokens: the most tokens generated per prompt.

    Returns:
        The demo prompts with transformers' greedy and sampled continuations, and the relative logit error.

    Raises:
        SystemExit: the logits or the greedy tokens differ.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    exported.eval()
    trained.eval()
    n = min(4, (len(val) - 1) // 256)
    x = val[: n * 256].view(n, 256)
    ref, got, unrounded = exported(x), hf(input_ids=x).logits.float(), trained(x)
    rel = float((got - ref).norm() / ref.norm())
    rel_trained = float((got - unrounded).norm() / unrounded.norm())
    agree = float((got.argmax(-1) == ref.argmax(-1)).float().mean())
    log(
        f"transformers round trip ({hf.dtype}, {type(hf.model.layers[0].mlp.down_proj).__name__}): relative logit "
        f"error {rel:.2e} against this script's forward of the exported weights (argmax agreement {agree:.4f}), "
        f"{rel_trained:.2e} against the trained model before bf16 rounding"
    )
    stop = set(hf.generation_config.eos_token_id or [])
    chat = tok.apply_chat_template([{"role": "user", "content": DEMO_CHAT}], tokenize=False, add_generation_prompt=True)
    if chat != render_chat(DEMO_CHAT):
        raise SystemExit(f"chat template renders {chat!r}, training used {render_chat(DEMO_CHAT)!r}")
    prompts = [(p, tok(p).input_ids) for p in DEMO_PROMPTS]
    prompts.append((f"[chat] {DEMO_CHAT}", tok(chat, add_special_tokens=False).input_ids))
    samples, mismatches = [], 0
    for label, ids in prompts:
        inp = torch.tensor([ids])
        mask = torch.ones_like(inp)
        g = hf.generate(inp, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False)
        g_ids = _until_stop(g[0, len(ids) :].tolist(), stop)
        mine = greedy(exported, list(ids), new_tokens, stop)
        mismatches += mine != g_ids
        torch.manual_seed(seed)
        s = hf.generate(inp, attention_mask=mask, max_new_tokens=new_tokens, do_sample=True, temperature=0.7, top_p=0.9)
        sample = Sample(
            label=label,
            prompt_ids=list(ids),
            greedy_ids=g_ids,
            greedy=tok.decode(g_ids),
            sampled=tok.decode(_until_stop(s[0, len(ids) :].tolist(), stop)),
        )
        samples.append(sample)
        log(
            f"prompt {label!r}\n  greedy : {sample.greedy!r}\n  sampled: {sample.sampled!r}\n"
            f"  (this script's greedy tokens {'match' if mine == g_ids else 'DIFFER'})"
        )
    # int8 activation rounding flips on last-bit float differences, so a few 1e-4 of relative error is normal
    if rel > 5e-3 or agree < 0.99 or mismatches:
        raise SystemExit("transformers does not reproduce the exported model")
    return samples, rel


def check_engine(out: Path, samples: Sequence[Sample], new_tokens: int = 40) -> tuple[str, str]:
    """Load ``out`` with the project's engine; compare its tokenizer and greedy tokens with transformers'.

    Returns:
        A detailed report and a one-line summary (the engine is optional: an import or load failure is
        reported, not raised).
    """
    try:
        from bitnet_actor.engine import load_model
    except Exception as exc:  # the engine is built separately; report whatever keeps it from importing
        msg = f"engine not importable: {type(exc).__name__}: {exc}"
        return msg, msg
    try:
        m = load_model(out)
    except Exception as exc:  # report, do not fail: the model itself was checked with transformers
        msg = f"engine cannot load {out}: {type(exc).__name__}: {exc}"
        return msg, msg
    lines, same = [], 0
    for s in samples:
        got = list(m.generate(s.prompt_ids, max_tokens=new_tokens, temperature=0))
        same += got == s.greedy_ids
        verdict = "matches" if got == s.greedy_ids else "DIFFERS from"
        lines.append(f"{s.label!r}: engine greedy {verdict} transformers' ({m.tokenizer.decode(got)!r})")
    ids = list(m.tokenizer.encode("Return a list of"))
    text = m.tokenizer.decode(list(m.generate(ids, max_tokens=30, temperature=0)))
    lines.append(f"engine encode('Return a list of') = {ids}; greedy: {text!r}")
    summary = f"the project's engine gives transformers' greedy tokens for {same} of {len(samples)} prompts"
    return "\n".join(lines), summary


# ----------------------------------------------------------------------------------------------------------


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
