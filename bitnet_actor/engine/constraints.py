"""Constrained decoding: grammars compiled from JSON schemas, and the per-step token masks that enforce them.

The grammar work is llguidance's (a Rust library built for this: an Earley parser over a lexer, with a token
trie of the vocabulary, so one mask costs tens of microseconds at a 32k vocabulary). This module is the seam:

- :func:`json_schema_grammar` turns a JSON schema (or None: any JSON object) into a :class:`Grammar`, model
  independent and cached; compact JSON (no free whitespace), so a constrained sequence spends its tokens on
  content and the output is one canonical line.
- :class:`Constraints` (one per model, :attr:`Model.constraints <bitnet_actor.engine.model.Model.constraints>`)
  holds the vocabulary as llguidance sees it, checks a grammar against it (:meth:`Constraints.check`: a
  :class:`ConstraintError` naming what the schema uses that is not supported), makes one matcher per sequence
  and fills the masks of every constrained row of a batched step in one call (:meth:`Constraints.mask_rows`),
  leaving the unconstrained rows of the same batch untouched.

A sequence with a grammar samples only tokens the grammar allows; it finishes (``"stop"``) when the grammar is
complete and allows nothing more, or on an end-of-sequence token the grammar accepts; at ``max_tokens`` first
it finishes with ``"length"`` and its output is cut short (as OpenAI's).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import numpy.typing as npt

__all__ = ["ConstraintError", "Constraints", "Grammar", "json_schema_grammar", "lark_grammar"]

_JSON_OPTIONS = {"whitespace_flexible": False}
_FLT_MAX_BITS = 0x7F7FFFFF  # float32 bit patterns, as int32
_NEG_INF_BITS = -0x00800000  # 0xFF800000
_MAX_SCHEMA_BYTES = 256 * 1024
_CACHE = 256


class ConstraintError(ValueError):
    """A grammar that cannot be used: unsupported schema features, a bad schema, or a tokenizer llguidance
    cannot read. ``str()`` says what, in words a caller can act on."""


@dataclass(frozen=True, slots=True)
class Grammar:
    """A compiled grammar (llguidance's serialized form) and its digest (for caches and logs).

    Attributes:
        source: the grammar as llguidance takes it.
        digest: sha256 of ``source``.
        kind: what it came from (``"json_schema"``, ``"json_object"``, ``"lark"``), for messages.
    """

    source: str
    digest: str
    kind: str

    def __repr__(self) -> str:
        return f"Grammar({self.kind}, {self.digest[:12]})"


_grammars: OrderedDict[str, Grammar] = OrderedDict()
_grammars_lock = threading.Lock()


def _remember(key: str, make: Callable[[], Grammar]) -> Grammar:
    with _grammars_lock:
        found = _grammars.get(key)
        if found is not None:
            _grammars.move_to_end(key)
            return found
    grammar = make()
    with _grammars_lock:
        _grammars[key] = grammar
        while len(_grammars) > _CACHE:
            _grammars.popitem(last=False)
    return grammar


def json_schema_grammar(schema: Mapping[str, Any] | None) -> Grammar:
    """The grammar of JSON documents valid against ``schema`` (None: any JSON object).

    Raises:
        ConstraintError: the schema is not a JSON object, is too large, or llguidance cannot translate it.
    """
    if schema is None:
        schema, kind = {"type": "object"}, "json_object"
    else:
        kind = "json_schema"
    if not isinstance(schema, Mapping):
        raise ConstraintError("the JSON schema must be an object")
    try:
        text = json.dumps(schema, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ConstraintError(f"the JSON schema is not plain JSON ({exc})") from None
    if len(text) > _MAX_SCHEMA_BYTES:
        raise ConstraintError(f"the JSON schema is larger than {_MAX_SCHEMA_BYTES // 1024} KiB")

    def make() -> Grammar:
        import llguidance

        try:
            source = llguidance.LLMatcher.grammar_from_json_schema(text, defaults=_JSON_OPTIONS)  # type: ignore[arg-type]
        except ValueError as exc:
            raise ConstraintError(f"the JSON schema cannot be used: {exc}") from None
        return Grammar(source, hashlib.sha256(source.encode()).hexdigest(), kind)

    return _remember(f"json:{text}", make)


def lark_grammar(lark: str, kind: str = "lark") -> Grammar:
    """A grammar from llguidance's Lark dialect (``%json {...}`` embeds a JSON schema).

    Raises:
        ConstraintError: llguidance refuses it.
    """

    def make() -> Grammar:
        import llguidance

        try:
            source = llguidance.LLMatcher.grammar_from_lark(lark)
        except ValueError as exc:
            raise ConstraintError(f"the grammar cannot be used: {exc}") from None
        return Grammar(source, hashlib.sha256(source.encode()).hexdigest(), kind)

    return _remember(f"lark:{lark}", make)


class Constraints:
    """One model's side of constrained decoding: its vocabulary as llguidance reads it, grammar checks,
    matchers and batched masks. Thread-safe (the scheduler's worker thread and the web layer's checks)."""

    def __init__(self, tokenizer: Any, vocab_size: int, eos_ids: frozenset[int]) -> None:
        """Read the vocabulary of ``tokenizer`` (a :class:`~bitnet_actor.engine.tokenizer.Tokenizer`).

        Args:
            tokenizer: the model's tokenizer (its ``backend`` is a ``tokenizers.Tokenizer``).
            vocab_size: the width of the model's logits (may exceed the tokenizer's vocabulary: padding).
            eos_ids: the ids that end a sequence (the grammar allows them where the document may end).

        Raises:
            ConstraintError: llguidance cannot read this tokenizer.
        """
        import llguidance

        eos = sorted(i for i in eos_ids if i < vocab_size)
        try:
            self._tok = llguidance.LLTokenizer(
                tokenizer.backend.to_str(), n_vocab=vocab_size, eos_token=eos or None, slices=None
            )
        except (ValueError, RuntimeError) as exc:
            raise ConstraintError(f"this model's tokenizer cannot be used for structured output: {exc}") from None
        self.vocab_size = vocab_size
        self._executor = llguidance.LLExecutor(num_threads=2)
        self._checked: OrderedDict[str, str | None] = OrderedDict()
        self._lock = threading.Lock()
        self._words = (vocab_size + 31) // 32
        self._masks = np.full((8, self._words), -1, dtype=np.int32)

    def check(self, grammar: Grammar) -> None:
        """Refuse a grammar this vocabulary cannot serve (cached per grammar).

        Raises:
            ConstraintError: naming the unsupported features (llguidance's words).
        """
        with self._lock:
            known = self._checked.get(grammar.digest, "")
        if known == "":
            import llguidance

            is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar.source, self._tok)
            known = "; ".join(messages) if is_error else None
            with self._lock:
                self._checked[grammar.digest] = known
                while len(self._checked) > _CACHE:
                    self._checked.popitem(last=False)
        if known is not None:
            what = "JSON schema" if grammar.kind == "json_schema" else "grammar"
            raise ConstraintError(f"the {what} uses what structured output does not support: {known}")

    def matcher(self, grammar: Grammar) -> Any:
        """A fresh matcher (one per sequence) at the start of ``grammar``.

        Raises:
            ConstraintError: the grammar fails to build (it passed :meth:`check`, so only limits).
        """
        import llguidance

        m = llguidance.LLMatcher(self._tok, grammar.source, log_level=0)
        if m.is_error():
            raise ConstraintError(f"the grammar cannot start: {m.get_error()}")
        return m

    def mask_rows(self, matchers: list[Any], logits: npt.NDArray[np.float32], rows: list[int]) -> None:
        """Set to -inf, in place, every token of ``logits[rows[i]]`` that ``matchers[i]`` does not allow.

        One call for the whole batch (llguidance computes the masks on its own threads, without the GIL);
        rows not listed are not read or written.
        """
        if not matchers:
            return
        import llguidance.numpy as lln

        with self._lock:
            if self._masks.shape[0] < len(matchers):
                self._masks = np.full((len(matchers), self._words), -1, dtype=np.int32)
            masks = self._masks[: len(matchers)]
            lln.fill_next_token_bitmask_par(self._executor, [(m, i) for i, m in enumerate(matchers)], masks)
            allowed = np.unpackbits(masks.view(np.uint8), axis=1, bitorder="little")[:, : logits.shape[1]]
        # Branch-free (a boolean-indexed store costs ~6 ns a token on a random mask): the float32 whose bits
        # are FLT_MAX where allowed and -inf elsewhere, then the minimum with the logits.
        bits = allowed.astype(np.int32)
        bits *= np.int32(_FLT_MAX_BITS - _NEG_INF_BITS)
        bits += np.int32(_NEG_INF_BITS)
        ceiling = bits.view(np.float32)
        for i, row in enumerate(rows):
            np.minimum(logits[row], ceiling[i], out=logits[row])
