"""One generation in progress: :class:`Sequence` (its prompt, KV cache, sampler, stop handling and text) and
:class:`StepOutput`, what one :meth:`Model.step <bitnet_actor.engine.model.Model.step>` did for it.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from bitnet_actor.engine.sampling import Sampler, log_softmax

if TYPE_CHECKING:
    import numpy.typing as npt

    from bitnet_actor.engine.model import Model
    from bitnet_actor.engine.sampling import SamplingParams

__all__ = ["FinishReason", "Sequence", "StepOutput"]

FinishReason = Literal["stop", "length"]
_ids = itertools.count()
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepOutput:
    """What one step did for one sequence.

    Attributes:
        sequence: the sequence.
        token_id: the token generated in this step, or None (a prefill chunk that did not reach the end of
            the prompt).
        text: new complete text (incremental detokenization; stop strings and anything after them removed).
        finished: the sequence is done.
        finish_reason: ``"stop"`` (stop token or string) or ``"length"`` (max_tokens or context), or None.
        logprob: log-probability of ``token_id`` when ``logprobs`` was asked for.
        top_logprobs: the most likely ``(token id, log-probability)`` pairs when ``top_logprobs > 0``.
    """

    sequence: Sequence
    token_id: int | None
    text: str
    finished: bool
    finish_reason: FinishReason | None
    logprob: float | None = None
    top_logprobs: tuple[tuple[int, float], ...] | None = None


class Sequence:
    """One generation in progress: its prompt, KV cache, sampler and output.

    Create with :meth:`Model.new_sequence`; advance with :meth:`Model.step`; call :meth:`release` (or let it
    be collected) to free the cache.  Not thread-safe: one step at a time per sequence.

    Attributes:
        id: a process-unique number.
        prompt: the prompt's token ids.
        params: the sampling parameters.
        output_ids: the generated token ids (a stop token is not included).
        text: the generated text so far (when the model has a tokenizer).
        finished: no more steps.
        finish_reason: why it finished.
        capacity: tokens the KV cache holds (prompt + max_tokens, at most the context length).
        cached_tokens: leading prompt tokens whose keys and values came from the model's prefix cache (not
            computed again; see :mod:`bitnet_actor.engine.prefix_cache`).
    """

    def __init__(self, model: Model, prompt: npt.NDArray[np.int64], params: SamplingParams) -> None:
        """Use :meth:`Model.new_sequence`."""
        cfg = model.config
        self.id = next(_ids)
        self.model = model
        self.prompt = prompt
        self.params = params
        self.capacity = int(len(prompt) + params.max_tokens)
        # (layers, Hkv, capacity, D) arrays on the CPU (float32, or float16: see Model.kv_cache), float32 device
        # buffers of that layout on OpenCL
        self.k_cache: Any = None
        self.v_cache: Any = None
        if model._runner is not None:
            self.k_cache, self.v_cache, self._cache_bytes = model._runner.new_cache(self.capacity)
        else:
            shape = (cfg.num_layers, cfg.num_kv_heads, self.capacity, cfg.head_dim)
            dtype = np.float16 if model.kv_cache == "f16" else np.float32
            self.k_cache = np.empty(shape, dtype=dtype)
            self.v_cache = np.empty(shape, dtype=dtype)
            self._cache_bytes = int(self.k_cache.nbytes + self.v_cache.nbytes)
        self.pos = 0  # tokens whose keys/values are in the cache
        self.cached_tokens = 0
        # the prefix cache's keys of the prompt's full blocks (None: not cached), whether they were looked up,
        # and how many leading blocks are known cached (see bitnet_actor.engine.prefix_cache)
        self._prefix_keys: list[bytes] | None = None
        self._prefix_attached = False
        self._prefix_stored = 0
        self.output_ids: list[int] = []
        self.text = ""
        self._emitted = 0  # characters of self.text already returned
        self.finished = False
        self.finish_reason: FinishReason | None = None
        self.sampler = Sampler(params, cfg.vocab_size, prompt.tolist())
        tok = model._tokenizer
        self.decoder = tok.incremental_decoder() if tok is not None else None
        stops = set(params.stop_token_ids)
        if not params.ignore_eos:
            stops |= model.eos_token_ids
        self.stop_ids = frozenset(stops)
        self._max_stop = max((len(s) for s in params.stop), default=0)
        self._stopped_on_string = False
        # the grammar's matcher: made at the first sampling step (in the step's worker thread: building it may
        # take milliseconds), advanced with every sampled token; its masks constrain sampling (Model.step)
        self.matcher: Any = None

    @property
    def prefilling(self) -> bool:
        """The prompt is not all in the cache yet."""
        return self.pos < len(self.prompt)

    @property
    def nbytes(self) -> int:
        """Bytes of the KV cache."""
        if self.k_cache is None or self.v_cache is None:
            return 0
        return self._cache_bytes

    def release(self) -> None:
        """Free the KV cache and finish the sequence (idempotent); an unfinished one keeps finish_reason None."""
        self.k_cache = None
        self.v_cache = None
        self.finished = True

    def _next_rows(self, chunk: int) -> npt.NDArray[np.int64]:
        if self.prefilling:
            return self.prompt[self.pos : self.pos + chunk]
        return np.array(self.output_ids[-1:], dtype=np.int64)

    def _accept(self, token: int, logits: npt.NDArray[np.float32]) -> StepOutput:
        """Record a sampled token and work out text, stops and logprobs."""
        p = self.params
        lp: float | None = None
        top: tuple[tuple[int, float], ...] | None = None
        if p.logprobs or p.top_logprobs:
            ls = log_softmax(logits)
            lp = float(ls[token])
            if p.top_logprobs:
                idx = np.argpartition(-ls, p.top_logprobs - 1)[: p.top_logprobs]
                idx = idx[np.argsort(-ls[idx], kind="stable")]
                top = tuple((int(i), float(ls[i])) for i in idx)
        matcher = self.matcher
        ends = token in self.stop_ids or (matcher is not None and token in self.model.eos_token_ids)
        if ends and (matcher is None or matcher.is_accepting()):
            delta = self._finish("stop")
            return StepOutput(self, token, delta, True, "stop", lp, top)
        if matcher is not None and not matcher.consume_token(token):  # the mask rules this out: a bug
            log.error("sequence %d: the grammar refused token %d: %s", self.id, token, matcher.get_error())
            return StepOutput(self, token, self._finish("stop"), True, "stop", lp, top)
        self.output_ids.append(token)
        self.sampler.record(token)
        if self.decoder is not None:
            self.text += self.decoder.push(token)
        reason: FinishReason | None = None
        if p.stop and self.decoder is not None:
            cut = self._find_stop()
            if cut is not None:
                self.text = self.text[:cut]
                self._stopped_on_string = True
                reason = "stop"
        if reason is None and matcher is not None and matcher.is_stopped():
            reason = "stop"  # the grammar is complete and allows nothing more
        if reason is None and len(self.output_ids) >= p.max_tokens:
            reason = "length"
        if reason is not None:
            return StepOutput(self, token, self._finish(reason), True, reason, lp, top)
        return StepOutput(self, token, self._delta(final=False), False, None, lp, top)

    def _find_stop(self) -> int | None:
        # only the tail can hold a new match: the last piece plus the longest stop string
        start = max(0, self._emitted - self._max_stop)
        best: int | None = None
        for s in self.params.stop:
            i = self.text.find(s, start)
            if i >= 0 and (best is None or i < best):
                best = i
        return best

    def _delta(self, *, final: bool) -> str:
        end = len(self.text)
        if not final and self.params.stop:
            # hold back a suffix that could still grow into a stop string
            for s in self.params.stop:
                for n in range(min(len(s) - 1, end - self._emitted), 0, -1):
                    if self.text.endswith(s[:n]):
                        end = min(end, len(self.text) - n)
                        break
        delta = self.text[self._emitted : end]
        self._emitted = max(self._emitted, end)
        return delta

    def _finish(self, reason: FinishReason) -> str:
        self.finished = True
        self.finish_reason = reason
        flush = getattr(self.decoder, "flush", None)
        if flush is not None and not (reason == "stop" and self.params.stop and self._stopped_on_string):
            self.text += flush()
        delta = self._delta(final=True)
        self.k_cache = None
        self.v_cache = None
        return delta
