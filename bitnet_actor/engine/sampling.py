"""Sampling parameters and the per-sequence sampler.

Order of operations on a sequence's next-token logits (float32, vocab):

1. ``logit_bias`` is added;
2. ``repetition_penalty`` (transformers' rule: a positive logit is divided by it, a negative one multiplied)
   applies to every token in the prompt or the output; ``presence_penalty`` (once) and
   ``frequency_penalty`` (per occurrence) are subtracted for tokens of the output (OpenAI's rule);
3. ``temperature == 0``: greedy, the first index of the maximum;
4. else the logits are divided by the temperature, cut to the ``top_k`` largest, softmaxed, cut to the
   smallest set whose mass reaches ``top_p`` and to probabilities ``>= min_p * max``, renormalized and
   sampled with the sequence's own ``numpy.random.Generator`` (PCG64 seeded by ``seed``: reproducible).

Log-probabilities (``logprobs`` / ``top_logprobs``) are those of the model's own distribution: log-softmax
of the raw logits, before any of the transforms above.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    import numpy.typing as npt

    from bitnet_actor.engine.constraints import Grammar

__all__ = ["MAX_TOP_LOGPROBS", "Sampler", "SamplingParams"]

MAX_TOP_LOGPROBS = 20
_PARTIAL = 1024


@dataclass(frozen=True)
class SamplingParams:
    """How a sequence picks its tokens and when it stops.  Every field is validated (``ValueError``).

    Attributes:
        temperature: 0 for greedy; else > 0 (at most 100).
        top_k: keep the k most likely tokens (0: off).
        top_p: nucleus mass in (0, 1] (1: off).
        min_p: drop tokens less likely than ``min_p`` times the most likely, in [0, 1] (0: off).
        repetition_penalty: > 0 (1: off), on prompt and output tokens.
        presence_penalty: in [-2, 2], on output tokens.
        frequency_penalty: in [-2, 2], on output tokens, per occurrence.
        logit_bias: token id -> bias in [-100, 100] added to its logit.
        seed: seed of the sequence's generator (None: fresh entropy).
        stop: strings that end the output (not included in it); at most 16, none empty.
        stop_token_ids: token ids that end the output, beside the tokenizer's end-of-sequence ids.
        max_tokens: the most tokens to generate (>= 1).
        logprobs: report the chosen token's log-probability.
        top_logprobs: also report this many most likely tokens (0..20).
        ignore_eos: do not stop on the tokenizer's end-of-sequence ids (benchmarks).
        grammar: constrain the output to this grammar (:mod:`bitnet_actor.engine.constraints`).
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: Mapping[int, float] = field(default_factory=dict)
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    max_tokens: int = 256
    logprobs: bool = False
    top_logprobs: int = 0
    ignore_eos: bool = False
    grammar: Grammar | None = None

    def __post_init__(self) -> None:
        """Validate and freeze the fields.

        Raises:
            ValueError: a field out of range, naming it.
        """

        def num(name: str, lo: float, hi: float, *, lo_open: bool = False) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"{name} must be a finite number, got {v!r}")
            if v < lo or v > hi or (lo_open and v == lo):
                side = "(" if lo_open else "["
                raise ValueError(f"{name} must be in {side}{lo}, {hi}], got {v!r}")

        def integer(name: str, lo: int, hi: int | None = None) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
                rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
                raise ValueError(f"{name} must be an integer {rng}, got {v!r}")

        num("temperature", 0.0, 100.0)
        integer("top_k", 0)
        num("top_p", 0.0, 1.0, lo_open=True)
        num("min_p", 0.0, 1.0)
        num("repetition_penalty", 0.0, 100.0, lo_open=True)
        num("presence_penalty", -2.0, 2.0)
        num("frequency_penalty", -2.0, 2.0)
        integer("max_tokens", 1)
        integer("top_logprobs", 0, MAX_TOP_LOGPROBS)
        if self.seed is not None:
            integer("seed", 0)
        if not isinstance(self.logprobs, bool):
            raise ValueError(f"logprobs must be a bool, got {self.logprobs!r}")
        if not isinstance(self.ignore_eos, bool):
            raise ValueError(f"ignore_eos must be a bool, got {self.ignore_eos!r}")
        try:
            bias = {int(k): float(v) for k, v in dict(self.logit_bias).items()}
        except (TypeError, ValueError) as exc:
            raise ValueError(f"logit_bias must map token ids to numbers ({exc})") from exc
        for k, v in bias.items():
            if k < 0 or not math.isfinite(v) or not -100.0 <= v <= 100.0:
                raise ValueError(f"logit_bias: token {k} -> {v} (ids >= 0, biases in [-100, 100])")
        object.__setattr__(self, "logit_bias", MappingProxyType(bias))
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        if len(stop) > 16 or not all(isinstance(s, str) and s for s in stop):
            raise ValueError("stop must be at most 16 non-empty strings")
        object.__setattr__(self, "stop", stop)
        ids = tuple(self.stop_token_ids)
        if not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in ids):
            raise ValueError(f"stop_token_ids must be non-negative integers, got {ids!r}")
        object.__setattr__(self, "stop_token_ids", ids)
        if self.grammar is not None and not hasattr(self.grammar, "source"):
            raise ValueError(f"grammar must be a constraints.Grammar, got {type(self.grammar).__name__}")

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> SamplingParams:
        """Build from keyword arguments, rejecting unknown names.

        Raises:
            ValueError: an unknown name or a bad value.
        """
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise ValueError(f"unknown sampling parameter(s): {', '.join(unknown)}")
        return cls(**kwargs)

    @property
    def greedy(self) -> bool:
        """Temperature 0."""
        return self.temperature == 0.0


class Sampler:
    """The sampling state of one sequence: its generator and token counts."""

    __slots__ = ("_bias_ids", "_bias_vals", "_counts", "_params", "_prompt_mask", "_rng", "_seen", "_vocab")

    def __init__(self, params: SamplingParams, vocab: int, prompt: Sequence[int]) -> None:
        """Prepare for a sequence.

        Args:
            params: the parameters.
            vocab: the logits' width.
            prompt: the prompt's token ids (for the repetition penalty).

        Raises:
            ValueError: a ``logit_bias`` token outside the vocabulary.
        """
        self._params = params
        self._vocab = vocab
        self._rng = np.random.Generator(np.random.PCG64(params.seed))
        bad = [k for k in params.logit_bias if k >= vocab]
        if bad:
            raise ValueError(f"logit_bias: token id {bad[0]} is outside the vocabulary ({vocab})")
        self._bias_ids = np.fromiter(params.logit_bias.keys(), dtype=np.int64, count=len(params.logit_bias))
        self._bias_vals = np.fromiter(params.logit_bias.values(), dtype=np.float32, count=len(params.logit_bias))
        self._counts: npt.NDArray[np.int32] | None = None
        self._prompt_mask: npt.NDArray[np.bool_] | None = None
        self._seen: npt.NDArray[np.bool_] | None = None
        if params.presence_penalty or params.frequency_penalty:
            self._counts = np.zeros(vocab, dtype=np.int32)
        if params.repetition_penalty != 1.0:
            self._seen = np.zeros(vocab, dtype=np.bool_)
            ids = np.asarray(prompt, dtype=np.int64)
            self._seen[ids[(ids >= 0) & (ids < vocab)]] = True

    def record(self, token: int) -> None:
        """Count a generated token (for the penalties)."""
        if self._counts is not None:
            self._counts[token] += 1
        if self._seen is not None:
            self._seen[token] = True

    def sample(self, logits: npt.NDArray[np.float32]) -> int:
        """Pick the next token.

        Args:
            logits: float32 (vocab,), the raw logits (not modified).

        Returns:
            The token id.
        """
        p = self._params
        z = logits
        if len(self._bias_ids) or self._counts is not None or self._seen is not None:
            z = logits.copy()
            if len(self._bias_ids):
                np.add.at(z, self._bias_ids, self._bias_vals)
            if self._seen is not None:
                sel = z[self._seen]
                z[self._seen] = np.where(
                    sel > 0, sel / np.float32(p.repetition_penalty), sel * np.float32(p.repetition_penalty)
                )
            if self._counts is not None:
                c = self._counts
                z -= (c > 0).astype(np.float32) * np.float32(p.presence_penalty)
                z -= c.astype(np.float32) * np.float32(p.frequency_penalty)
        if p.greedy:
            return int(np.argmax(z))
        z64 = z.astype(np.float64) / p.temperature
        v = z64.shape[0]
        cand = np.argpartition(-z64, p.top_k - 1)[: p.top_k] if 0 < p.top_k < v else np.arange(v)
        zc = z64[cand]
        probs = np.exp(zc - zc.max())
        probs /= probs.sum()
        if p.top_p < 1.0:
            n = len(cand)
            order = None
            if n > _PARTIAL:
                part = np.argpartition(-probs, _PARTIAL - 1)[:_PARTIAL]
                if probs[part].sum() >= p.top_p:
                    order = part[np.argsort(-probs[part], kind="stable")]
            if order is None:
                order = np.argsort(-probs, kind="stable")
            csum = np.cumsum(probs[order])
            keep = int(np.searchsorted(csum, p.top_p)) + 1
            order = order[:keep]
            cand, probs = cand[order], probs[order]
        if p.min_p > 0.0:
            m = probs >= p.min_p * probs.max()
            cand, probs = cand[m], probs[m]
        probs = probs / probs.sum()
        return int(cand[int(self._rng.choice(len(cand), p=probs))])


def log_softmax(logits: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    """Log-softmax in float64.

    Args:
        logits: float32 (V,).

    Returns:
        float64 (V,).
    """
    z = logits.astype(np.float64)
    z -= z.max()
    z -= math.log(float(np.exp(z).sum()))
    return z
