"""The GGUF tokenizer metadata of a Hugging Face tokenizer directory: the inverse of :mod:`._gguf_loader`.

Laid out as llama.cpp's converter lays a vocabulary out, so :func:`read_gguf_metadata` rebuilds the same
tokenizer: a byte-level BPE becomes ``tokenizer.ggml.model = "gpt2"`` with its merges and the
``tokenizer.ggml.pre`` name of its pre-tokenizer regex; a SentencePiece-style BPE (``"▁"`` spaces, byte
fallback) becomes ``"llama"`` with its merges (and placeholder scores, which the reader does not need when
merges are present).  Token types follow llama.cpp: special added tokens are control (3), other added tokens
user-defined (4), ``<0xNN>`` byte tokens byte (6), ids past the tokenizer up to the model's vocabulary
``[PAD<id>]`` unused (5).  Anything else (Unigram, WordPiece, an unknown pre-tokenizer regex) raises
:class:`TokenizerError`: a GGUF whose tokenizer silently differs would be worse than none.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bitnet_actor.engine.tokenizer._common import _BYTE_TOKEN_RE, TokenizerError
from bitnet_actor.engine.tokenizer._gguf_loader import (
    _GGUF_PRE_SPLITS,
    _GPT4O_SPLIT,
    _LLAMA3_SPLIT,
    _QWEN2_SPLIT,
    GGUF_TOKEN_TYPES,
)

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = ["gguf_tokenizer_metadata"]


def _walk(node: Any) -> Iterable[dict[str, Any]]:
    """Every object in a tokenizer.json component, nested sequences included."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def _regexes(node: Any) -> list[str]:
    return [
        c["pattern"]["Regex"]
        for c in _walk(node)
        if c.get("type") == "Split"
        and isinstance(c.get("pattern"), dict)
        and isinstance(c["pattern"].get("Regex"), str)
    ]


def _pre_name(spec: dict[str, Any], where: str) -> str:
    regexes = _regexes(spec.get("pre_tokenizer"))
    ignore_merges = bool(spec["model"].get("ignore_merges", False))
    if not regexes:
        return "default"  # ByteLevel's own (GPT-2) regex
    if len(regexes) == 1:
        rx = regexes[0]
        if rx == _LLAMA3_SPLIT:
            return "llama-bpe" if ignore_merges else "dbrx"
        if rx == _QWEN2_SPLIT:
            return "qwen2"
        if rx == _GPT4O_SPLIT:
            return "gpt-4o"
    raise TokenizerError(
        f"{where}: the pre-tokenizer's split regex is not one GGUF names "
        f"(known: {', '.join(sorted(set(_GGUF_PRE_SPLITS)))}, or ByteLevel's own): cannot write it to GGUF"
    )


def gguf_tokenizer_metadata(root: Path, n_vocab: int) -> dict[str, Any]:
    """GGUF ``tokenizer.*`` metadata for the tokenizer in an HF directory.

    Args:
        root: the directory (``tokenizer.json`` and its companion files).
        n_vocab: the model's vocabulary (embedding rows); ids past the tokenizer's become ``[PAD<id>]``.

    Returns:
        key -> value, for :func:`~bitnet_actor.engine.gguf_io.write_gguf`.

    Raises:
        TokenizerError: no ``tokenizer.json``, or a tokenizer GGUF cannot describe.
    """
    from bitnet_actor.engine.tokenizer._tokenizer import Tokenizer

    path = Path(root) / "tokenizer.json"
    tok = Tokenizer.from_hf_dir(root)
    spec = json.loads(path.read_text(encoding="utf-8"))
    model = spec.get("model") or {}
    if model.get("type") != "BPE":
        raise TokenizerError(f"{path}: a {model.get('type')!r} tokenizer cannot be written to GGUF (BPE only)")
    if tok.vocab_size > n_vocab:
        raise TokenizerError(f"{path}: {tok.vocab_size} tokens but the model has {n_vocab} embedding rows")
    components = [spec.get(k) for k in ("normalizer", "pre_tokenizer", "decoder")]
    spm = bool(model.get("byte_fallback")) or any(c.get("type") in ("Metaspace", "Prepend") for c in _walk(components))
    backend = tok.backend
    by_id = {i: t for t, i in backend.get_vocab(with_added_tokens=True).items()}
    added = backend.get_added_tokens_decoder()
    tokens: list[str] = []
    types: list[int] = []
    for i in range(n_vocab):
        if i in added:
            tokens.append(added[i].content)
            types.append(GGUF_TOKEN_TYPES["control" if added[i].special else "user_defined"])
        elif i in by_id:
            t = by_id[i]
            tokens.append(t)
            if spm and i == tok.unk_token_id:
                types.append(GGUF_TOKEN_TYPES["unknown"])
            elif spm and model.get("byte_fallback") and _BYTE_TOKEN_RE.fullmatch(t):
                types.append(GGUF_TOKEN_TYPES["byte"])
            else:
                types.append(GGUF_TOKEN_TYPES["normal"])
        else:
            tokens.append(f"[PAD{i}]")
            types.append(GGUF_TOKEN_TYPES["unused"])
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    meta: dict[str, Any] = {
        "tokenizer.ggml.model": "llama" if spm else "gpt2",
        "tokenizer.ggml.pre": "default" if spm else _pre_name(spec, str(path)),
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": types,
    }
    if spm:
        meta["tokenizer.ggml.scores"] = [-float(i) for i in range(n_vocab)]
        schemes = [c.get("prepend_scheme") for c in _walk(components) if c.get("type") == "Metaspace"]
        prefix = any(c.get("type") == "Prepend" for c in _walk(components)) or any(
            s in (None, "always", "first") for s in schemes
        )
        meta["tokenizer.ggml.add_space_prefix"] = prefix
    if merges:
        meta["tokenizer.ggml.merges"] = merges
    for key, value in (
        ("bos_token_id", tok.bos_token_id),
        ("eos_token_id", tok.eos_token_id),
        ("unknown_token_id", tok.unk_token_id),
        ("padding_token_id", tok.pad_token_id),
    ):
        if value is not None:
            meta[f"tokenizer.ggml.{key}"] = int(value)
    extra = sorted(i for i in tok.eos_token_ids if i != tok.eos_token_id)
    if extra:
        meta["tokenizer.ggml.eot_token_id"] = extra[0]
    meta["tokenizer.ggml.add_bos_token"] = bool(tok.add_bos_token)
    meta["tokenizer.ggml.add_eos_token"] = bool(tok.add_eos_token)
    for name, template in tok.chat_templates.items():
        meta["tokenizer.chat_template" if name == "default" else f"tokenizer.chat_template.{name}"] = template
    return meta
