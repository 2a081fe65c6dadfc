"""Rebuilding the tokenizer a GGUF file's vocabulary describes, as a ``tokenizers`` object.

:func:`read_gguf_metadata` does the work of :meth:`Tokenizer.from_gguf_metadata
<bitnet_actor.engine.tokenizer.Tokenizer.from_gguf_metadata>`. ``"gpt2"`` files become a byte-level BPE with
the file's merges and the pre-tokenizer regex that ``tokenizer.ggml.pre`` names; ``"llama"`` (SentencePiece)
files become a BPE whose merges are recovered from the token scores (SentencePiece BPE merges the pair whose
result has the best score, which is what llama.cpp does and what transformers' converter does), with byte
fallback and the ``"▁"`` space prefix.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors
from tokenizers import Tokenizer as Backend

from bitnet_actor.engine.tokenizer._common import _BYTE_TOKEN_RE, TokenizerError, TokenizerParts

__all__ = ["GGUF_TOKEN_TYPES", "read_gguf_metadata"]

log = logging.getLogger("bitnet_actor.engine.tokenizer")  # the package's logger, as before the split

# GGUF ``tokenizer.ggml.token_type`` values (llama.cpp's llama_token_type).
GGUF_TOKEN_TYPES: Mapping[str, int] = {
    "normal": 1,
    "unknown": 2,
    "control": 3,
    "user_defined": 4,
    "unused": 5,
    "byte": 6,
}
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6

# Pre-tokenizer regexes by ``tokenizer.ggml.pre`` name (as in each vocabulary's published tokenizer.json).
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_GPT4O_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_GGUF_PRE_SPLITS: Mapping[str, str] = {
    **dict.fromkeys(
        ("llama3", "llama-v3", "llama-bpe", "falcon3", "smaug-bpe", "dbrx", "pixtral", "falcon-h1"),
        _LLAMA3_SPLIT,
    ),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "megrez"), _QWEN2_SPLIT),
    **dict.fromkeys(("gpt-4o", "llama4"), _GPT4O_SPLIT),
}
# Pre-tokenizers whose vocabularies match a whole pre-token before applying merges (Llama 3 style).
_IGNORE_MERGES_PRE = frozenset(("llama3", "llama-v3", "llama-bpe", "falcon3", "smaug-bpe"))
_GPT2_PRE = frozenset(("default", "gpt2", "gpt-2"))

# Control tokens that end a turn in common chat formats; a GGUF that lists one as a control token stops on it
# (llama.cpp treats these as end-of-generation tokens too).
_END_OF_TURN_TOKENS = frozenset(
    (
        "<|eot_id|>",
        "<|eom_id|>",
        "<|im_end|>",
        "<|end|>",
        "<end_of_turn>",
        "<|endoftext|>",
        "<|end_of_text|>",
        "<|return|>",
        "<|call|>",
    )
)


def _template_processor(bos: tuple[str, int] | None, eos: tuple[str, int] | None) -> processors.TemplateProcessing:
    """Post-processor adding BOS and/or EOS around each sequence (transformers' ``update_post_processor``)."""
    first = [f"{bos[0]}:0"] if bos else []
    last = [f"{eos[0]}:0"] if eos else []
    single = [*first, "$A:0", *last]
    pair = [*single, *([f"{bos[0]}:1"] if bos else []), "$B:1", *([f"{eos[0]}:1"] if eos else [])]
    special = [t for t in (bos, eos) if t is not None]
    return processors.TemplateProcessing(single=single, pair=pair, special_tokens=special)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (byte-level BPE vocabularies are spelled in it)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


_BYTE_LEVEL_ALPHABET = frozenset(_bytes_to_unicode().values())


def _spm_merges(tokens: Sequence[str], scores: Sequence[float], mergeable: Sequence[bool]) -> list[tuple[str, str]]:
    """BPE merges that reproduce SentencePiece BPE: every split of a token into two tokens, best score first.

    SentencePiece BPE (and llama.cpp's SPM tokenizer) repeatedly joins the adjacent pair whose concatenation
    is the highest-scoring token; a BPE whose merge ranks follow the scores of the merge results does the
    same. Ties go to the longer left piece, then the longer right piece, then vocabulary order (as in
    transformers' converter).
    """
    ids: dict[str, int] = {}
    for i, tok in enumerate(tokens):
        if mergeable[i]:
            ids.setdefault(tok, i)
    found: list[tuple[float, int, int, str, str]] = []
    for i, tok in enumerate(tokens):
        if not mergeable[i] or len(tok) < 2 or ids.get(tok) != i:
            continue
        local = []
        for cut in range(1, len(tok)):
            left, right = tok[:cut], tok[cut:]
            li, ri = ids.get(left), ids.get(right)
            if li is not None and ri is not None:
                local.append((li, ri, left, right))
        local.sort()
        found.extend((float(scores[i]), len(left), len(right), left, right) for _, _, left, right in local)
    found.sort(key=lambda m: (-m[0], -m[1], -m[2]))  # stable: keeps vocabulary order within ties
    return [(left, right) for _, _, _, left, right in found]


def _gguf_list(fields: Mapping[str, Any], key: str, *, required: bool) -> list[Any] | None:
    value = fields.get(key)
    if value is None:
        if required:
            raise TokenizerError(f"GGUF metadata: missing {key}")
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise TokenizerError(f"GGUF metadata: {key} must be an array, got {type(value).__name__}")
    return list(value)


def _gguf_int(fields: Mapping[str, Any], key: str, n_tokens: int) -> int | None:
    value = fields.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TokenizerError(f"GGUF metadata: {key} must be an integer, got {value!r}")
    if value < 0:  # llama.cpp writes -1 (as uint32 max, or int) for "none"
        return None
    if value >= n_tokens:
        if value >= 2**31:  # 0xFFFFFFFF
            return None
        raise TokenizerError(f"GGUF metadata: {key} = {value} is outside the vocabulary of {n_tokens} tokens")
    return value


def _gguf_bool(fields: Mapping[str, Any], key: str) -> bool | None:
    value = fields.get(key)
    if value is None:
        return None
    if isinstance(value, (bool, int)):
        return bool(value)
    raise TokenizerError(f"GGUF metadata: {key} must be a boolean, got {value!r}")


def read_gguf_metadata(fields: Mapping[str, Any]) -> TokenizerParts:
    """Read the tokenizer a GGUF file describes (see :meth:`Tokenizer.from_gguf_metadata`).

    Raises:
        TokenizerError: a required field is missing or malformed, or the tokenizer model is not supported.
    """
    kind = fields.get("tokenizer.ggml.model")
    if kind is None:
        raise TokenizerError("GGUF metadata: missing tokenizer.ggml.model")
    tokens_raw = _gguf_list(fields, "tokenizer.ggml.tokens", required=True)
    assert tokens_raw is not None
    if not all(isinstance(t, str) for t in tokens_raw):
        raise TokenizerError("GGUF metadata: tokenizer.ggml.tokens must be strings")
    tokens: list[str] = list(tokens_raw)
    n = len(tokens)
    if n == 0:
        raise TokenizerError("GGUF metadata: tokenizer.ggml.tokens is empty")
    types_raw = _gguf_list(fields, "tokenizer.ggml.token_type", required=False)
    if types_raw is not None and len(types_raw) != n:
        raise TokenizerError(f"GGUF metadata: tokenizer.ggml.token_type has {len(types_raw)} entries for {n} tokens")
    types = [int(t) for t in types_raw] if types_raw is not None else None
    ids = {
        name: _gguf_int(fields, f"tokenizer.ggml.{key}", n)
        for name, key in (
            ("bos", "bos_token_id"),
            ("eos", "eos_token_id"),
            ("eot", "eot_token_id"),
            ("eom", "eom_token_id"),
            ("unk", "unknown_token_id"),
            ("pad", "padding_token_id"),
            ("sep", "seperator_token_id"),
            ("cls", "cls_token_id"),
            ("mask", "mask_token_id"),
        )
    }
    notes: list[str] = []
    if types is None:
        # No types: byte tokens by spelling, the named special tokens as control.
        named = {i for i in ids.values() if i is not None}
        types = [
            _CONTROL if i in named else _BYTE if _BYTE_TOKEN_RE.fullmatch(t) else _NORMAL for i, t in enumerate(tokens)
        ]
        notes.append("no tokenizer.ggml.token_type: token types guessed")
    # Duplicate spellings cannot share a vocabulary; give later copies a placeholder spelling.
    seen: set[str] = set()
    for i, tok in enumerate(tokens):
        if tok in seen:
            tokens[i] = f"<dup_token_{i}>"
            notes.append(f"duplicate token {tok!r} at id {i} renamed")
        seen.add(tok)

    if kind == "gpt2":
        backend, add_bos_default = _gguf_byte_level(fields, tokens, types, notes)
    elif kind == "llama":
        backend = _gguf_sentencepiece(fields, tokens, types, ids["unk"], notes)
        add_bos_default = True
    else:
        raise TokenizerError(
            f"GGUF metadata: tokenizer.ggml.model {kind!r} is not supported (supported: 'gpt2', 'llama')"
        )

    # Control/unknown tokens are special (atomic in text, dropped by skip_special_tokens); user-defined
    # tokens are atomic in text but kept when decoding.
    special_added = [
        AddedToken(t, special=True, normalized=False)
        for t, ty in zip(tokens, types, strict=True)
        if ty in (_CONTROL, _UNKNOWN)
    ]
    user_added = [
        AddedToken(t, special=False, normalized=False)
        for t, ty in zip(tokens, types, strict=True)
        if ty == _USER_DEFINED
    ]
    if special_added:
        backend.add_special_tokens(special_added)
    if user_added:
        backend.add_tokens(user_added)

    def token_of(name: str) -> str | None:
        i = ids[name]
        return tokens[i] if i is not None else None

    add_bos = _gguf_bool(fields, "tokenizer.ggml.add_bos_token")
    add_eos = _gguf_bool(fields, "tokenizer.ggml.add_eos_token")
    add_bos = add_bos_default if add_bos is None else add_bos
    bos_id, eos_id = ids["bos"], ids["eos"]
    backend.post_processor = _template_processor(
        (tokens[bos_id], bos_id) if add_bos and bos_id is not None else None,
        (tokens[eos_id], eos_id) if add_eos and eos_id is not None else None,
    )
    extra_eos = [i for i in (ids["eot"], ids["eom"]) if i is not None]
    extra_eos += [
        i for i, (t, ty) in enumerate(zip(tokens, types, strict=True)) if ty == _CONTROL and t in _END_OF_TURN_TOKENS
    ]

    templates: dict[str, str] = {}
    template = fields.get("tokenizer.chat_template")
    if template is not None:
        if not isinstance(template, str):
            raise TokenizerError("GGUF metadata: tokenizer.chat_template must be a string")
        templates["default"] = template
    for key, value in fields.items():
        if key.startswith("tokenizer.chat_template.") and isinstance(value, str):
            templates[key.removeprefix("tokenizer.chat_template.")] = value

    for note in notes:
        log.info("GGUF tokenizer: %s", note)
    return TokenizerParts(
        backend=backend,
        special_tokens={
            "bos_token": token_of("bos"),
            "eos_token": token_of("eos"),
            "unk_token": token_of("unk"),
            "pad_token": token_of("pad"),
            "sep_token": token_of("sep"),
            "cls_token": token_of("cls"),
            "mask_token": token_of("mask"),
        },
        extra_eos_ids=extra_eos,
        chat_templates=templates,
        source=f"GGUF ({kind})",
        notes=notes,
    )


def _gguf_byte_level(
    fields: Mapping[str, Any], tokens: list[str], types: list[int], notes: list[str]
) -> tuple[Backend, bool]:
    merges_raw = _gguf_list(fields, "tokenizer.ggml.merges", required=True)
    assert merges_raw is not None
    merges: list[tuple[str, str]] = []
    for m in merges_raw:
        if not isinstance(m, str) or " " not in m:
            raise TokenizerError(f"GGUF metadata: tokenizer.ggml.merges entry {m!r} is not 'left right'")
        left, right = m.split(" ", 1)
        merges.append((left, right))
    spelling = _bytes_to_unicode()
    vocab: dict[str, int] = {}
    for i, (token, ty) in enumerate(zip(tokens, types, strict=True)):
        if ty in (_NORMAL, _UNUSED, _BYTE) and not set(token) <= _BYTE_LEVEL_ALPHABET:
            # A plain-text spelling of a normal token: respell it in the byte-level alphabet.
            token = "".join(spelling[b] for b in token.encode("utf-8"))
        vocab.setdefault(token, i)
    pre = fields.get("tokenizer.ggml.pre")
    pre_name = pre if isinstance(pre, str) else "default"
    model = models.BPE(vocab=vocab, merges=merges, ignore_merges=pre_name in _IGNORE_MERGES_PRE)
    backend = Backend(model)
    split = _GGUF_PRE_SPLITS.get(pre_name)
    if split is not None:
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(split), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    else:
        if pre_name not in _GPT2_PRE:
            notes.append(f"tokenizer.ggml.pre {pre_name!r} is not known here; using the GPT-2 pre-tokenizer")
            log.warning("GGUF tokenizer.ggml.pre %r is not known; falling back to the GPT-2 regex", pre_name)
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    return backend, pre_name in _IGNORE_MERGES_PRE


def _gguf_sentencepiece(
    fields: Mapping[str, Any], tokens: list[str], types: list[int], unk_id: int | None, notes: list[str]
) -> Backend:
    scores_raw = _gguf_list(fields, "tokenizer.ggml.scores", required=False)
    merges_raw = _gguf_list(fields, "tokenizer.ggml.merges", required=False)
    if merges_raw is not None:
        merges = []
        for m in merges_raw:
            if not isinstance(m, str) or " " not in m:
                raise TokenizerError(f"GGUF metadata: tokenizer.ggml.merges entry {m!r} is not 'left right'")
            left, right = m.split(" ", 1)
            merges.append((left, right))
    else:
        if scores_raw is None:
            raise TokenizerError("GGUF metadata: missing tokenizer.ggml.scores (needed for a 'llama' vocabulary)")
        if len(scores_raw) != len(tokens):
            raise TokenizerError(
                f"GGUF metadata: tokenizer.ggml.scores has {len(scores_raw)} entries for {len(tokens)} tokens"
            )
        scores = [float(s) for s in scores_raw]
        mergeable = [ty in (_NORMAL, _USER_DEFINED) for ty in types]
        merges = _spm_merges(tokens, scores, mergeable)
    vocab = {t: i for i, t in enumerate(tokens)}
    if unk_id is None:
        unk_id = next((i for i, ty in enumerate(types) if ty == _UNKNOWN), None)
    byte_fallback = any(ty == _BYTE for ty in types)
    model = models.BPE(
        vocab=vocab,
        merges=merges,
        unk_token=tokens[unk_id] if unk_id is not None else None,
        fuse_unk=True,
        byte_fallback=byte_fallback,
    )
    backend = Backend(model)
    prefix = _gguf_bool(fields, "tokenizer.ggml.add_space_prefix")
    prefix = True if prefix is None else prefix
    # llama.cpp (and sentencepiece, which encodes each piece of text between special tokens on its own)
    # prefixes every such piece with a space: the "always" scheme.
    backend.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="▁", prepend_scheme="always" if prefix else "never", split=False
    )
    steps: list[decoders.Decoder] = [decoders.Replace("▁", " ")]
    if byte_fallback:
        steps.append(decoders.ByteFallback())
    steps.append(decoders.Fuse())
    if prefix:
        steps.append(decoders.Strip(content=" ", left=1, right=0))
    backend.decoder = decoders.Sequence(steps)
    if not byte_fallback:
        notes.append("no byte tokens: characters outside the vocabulary encode as the unknown token")
    return backend
