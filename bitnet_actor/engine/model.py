"""The model: forward pass, per-sequence KV caches, batched steps and generation.

One :meth:`Model.step` runs one forward over the rows of every sequence it is given (prefill chunks and
single decode tokens together): every linear layer runs once on all rows (the ternary kernels are exact
integer products per row, so a row's result does not depend on the other rows), attention runs per
sequence over that sequence's own cache, and the output layer runs only on the rows whose next token is
needed.  A sequence's greedy output is therefore the same alone and inside any batch.

On the CPU the decoder layers of a forward run in one compiled call (``LayerStack`` in the engine ops) when
every linear layer is a plain ternary product, else one op at a time from Python; both give the same bits (see
:meth:`Model.set_compiled_layers`).

A sequence's own state (its KV cache, sampler, stop strings and text) is :class:`~bitnet_actor.engine.sequence.Sequence`
in :mod:`bitnet_actor.engine.sequence`; this module re-exports it and :class:`StepOutput`.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from bitnet_actor.engine import ops
from bitnet_actor.engine.constraints import ConstraintError, Constraints
from bitnet_actor.engine.errors import ContextLengthError, EngineError
from bitnet_actor.engine.forward import build_stack, forward
from bitnet_actor.engine.layers import DenseMatrix
from bitnet_actor.engine.prefix_cache import BLOCK_TOKENS, PrefixCache
from bitnet_actor.engine.sampling import SamplingParams
from bitnet_actor.engine.sequence import Sequence, StepOutput

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from collections.abc import Sequence as Seq

    import numpy.typing as npt

    from bitnet_actor.engine.config import ModelConfig
    from bitnet_actor.engine.loader import ModelWeights
    from bitnet_actor.engine.opencl import OpenCLRunner

__all__ = ["Model", "ModelInfo", "Sequence", "StepOutput"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelInfo:
    """What a loaded model is.

    Attributes:
        architecture: as named in the file (HF class or GGUF architecture).
        family: ``bitnet-b1.58``, ``bitnet-1bitllm`` or ``llama``.
        parameter_count: parameters (tied embedding counted once).
        nbytes: bytes of weights the engine holds (packed ternary, dense as stored).
        bytes_per_token: bytes read per decoded token (every layer, the output matrix, one embedding row).
        source_format: ``safetensors`` or ``gguf``.
        formats: stored format -> number of tensors.
        context_length: the longest sequence.
        vocab_size: the output width.
        output_layer: ``exact``, ``q8`` (int8 per row) or ``q6`` (6-bit, Q6_K-like).
        fast_kernels: the compiled ternary kernels are in use.
        fast_ops: the compiled engine ops are in use.
        device: ``"cpu"``, or ``"opencl:<platform> / <device>"``.
    """

    architecture: str
    family: str
    parameter_count: int
    nbytes: int
    bytes_per_token: int
    source_format: str
    formats: tuple[tuple[str, int], ...]
    context_length: int
    vocab_size: int
    output_layer: str
    fast_kernels: bool
    fast_ops: bool
    device: str = "cpu"


class Model:
    """A loaded model.  See the package docstring for the API.

    Thread safety: :meth:`step` / :meth:`logits` / :meth:`generate` hold an internal lock, so a scheduler
    may call them from worker threads; they release the GIL inside the kernels.
    """

    def __init__(
        self,
        weights: ModelWeights,
        tokenizer: Any | None = None,
        *,
        output: str = "exact",
        opencl: Any | None = None,
        progress: Callable[[int, int], None] | None = None,
        kv_cache: str = "f32",
    ) -> None:
        """Wrap loaded weights (use :func:`bitnet_actor.engine.load_model`).

        Args:
            weights: the weights.
            tokenizer: a :class:`~bitnet_actor.engine.tokenizer.Tokenizer`, or None.
            output: ``"exact"`` (the output matrix as stored), ``"q8"`` or ``"q6"`` (quantized: fewer bytes per
                token, logits change slightly; see :meth:`set_output_layer`).  On OpenCL ``"q6"`` becomes
                ``"q8"`` (with a warning in the log).
            opencl: a :class:`kernels_opencl.Context` to run on (weights uploaded now), or None for the CPU.
            progress: called as ``progress(done, total)`` while weights upload to the device.
            kv_cache: ``"f32"`` or ``"f16"`` (see :meth:`set_kv_cache`).
        """
        self.weights = weights
        self.config: ModelConfig = weights.config
        self._tokenizer = tokenizer
        self._lock = threading.Lock()
        self._constraints: Constraints | None = None
        self._constraints_lock = threading.Lock()
        cfg = self.config
        inv = cfg.rope_inv_freq()  # (D/2,)
        pos = np.arange(cfg.context_length, dtype=np.float32)[:, None]
        freqs = (pos * inv[None, :]).astype(np.float32)  # (ctx, D/2)
        self._cos = np.cos(freqs).astype(np.float32)
        self._sin = np.sin(freqs).astype(np.float32)
        self._exact_head = weights.lm_head
        self._q8_head: DenseMatrix | None = None
        self._q6_head: DenseMatrix | None = None
        self._head = weights.lm_head
        self._runner: OpenCLRunner | None = None
        if opencl is not None:
            from bitnet_actor.engine.opencl import OpenCLRunner

            self._runner = OpenCLRunner(weights, opencl, self._cos, self._sin, progress)
        if output == "q6" and self._runner is not None:
            log.warning("output layer q6: the OpenCL path takes q8 instead")
            output = "q8"
        self.set_output_layer(output)
        self._kv_cache = "f32"
        self.set_kv_cache(kv_cache)
        self._compiled = build_stack(self.weights) if self._runner is None else None
        self._stack = self._compiled
        self._prefix_cache: PrefixCache | None = None
        #: None, or float64 (3,) to which each forward adds the seconds its compiled layer loop spends in the
        #: ternary products, attention and the other ops (profiling; see ops/bench_engine.py)
        self.op_times: npt.NDArray[np.float64] | None = None

    # ---------------------------------------------------------------------------------------------- properties

    @property
    def tokenizer(self) -> Any:
        """The tokenizer (encode, decode, apply_chat_template, incremental_decoder).

        Raises:
            EngineError: the model was loaded without one.
        """
        if self._tokenizer is None:
            raise EngineError("this model has no tokenizer (none was found next to the weights)")
        return self._tokenizer

    @tokenizer.setter
    def tokenizer(self, tok: Any) -> None:
        self._tokenizer = tok
        self._constraints = None

    @property
    def constraints(self) -> Constraints:
        """Constrained decoding over this model's vocabulary (made on first use).

        Raises:
            ConstraintError: the model has no tokenizer, or llguidance cannot read it.
        """
        found = self._constraints
        if found is None:
            if self._tokenizer is None:
                raise ConstraintError("structured output needs a model with a tokenizer; this one has none")
            with self._constraints_lock:
                found = self._constraints
                if found is None:
                    found = self._constraints = Constraints(self._tokenizer, self.vocab_size, self.eos_token_ids)
        return found

    @property
    def has_tokenizer(self) -> bool:
        """Whether a tokenizer is attached."""
        return self._tokenizer is not None

    @property
    def eos_token_ids(self) -> frozenset[int]:
        """End-of-sequence ids: the tokenizer's and the config's."""
        ids = set(self.config.eos_token_ids)
        if self._tokenizer is not None:
            ids |= set(self._tokenizer.eos_token_ids)
        return frozenset(ids)

    @property
    def context_length(self) -> int:
        """The longest sequence (prompt + output)."""
        return self.config.context_length

    @property
    def vocab_size(self) -> int:
        """Width of the logits."""
        return self.config.vocab_size

    @property
    def nbytes(self) -> int:
        """Bytes of weights held (ternary packed, dense as stored, plus the q8 output copy if made)."""
        w = self.weights
        n = w.embed.nbytes + int(w.final_norm.nbytes)
        if w.lm_head is not w.embed:
            n += w.lm_head.nbytes
        for q in (self._q8_head, self._q6_head):
            if q is not None:
                n += q.nbytes
        for layer in w.layers:
            n += sum(lin.nbytes for lin in (*layer.qkv, layer.o, *layer.gate_up, layer.down))
            n += sum(int(a.nbytes) for a in (layer.attn_norm, layer.ffn_norm) if a is not None)
        return n

    @property
    def bytes_per_token(self) -> int:
        """Weight bytes read per decoded token."""
        w = self.weights
        n = self._head.nbytes + w.embed.nbytes // self.config.vocab_size
        for layer in w.layers:
            n += sum(lin.nbytes for lin in (*layer.qkv, layer.o, *layer.gate_up, layer.down))
        return n

    @property
    def info(self) -> ModelInfo:
        """A description of the loaded model."""
        cfg = self.config
        return ModelInfo(
            architecture=cfg.architecture,
            family=cfg.family,
            parameter_count=cfg.parameter_count(),
            nbytes=self.nbytes,
            bytes_per_token=self.bytes_per_token,
            source_format=self.weights.source_format,
            formats=tuple(sorted(self.weights.formats.items())),
            context_length=cfg.context_length,
            vocab_size=cfg.vocab_size,
            output_layer=self.output_layer,
            fast_kernels=ops.FAST_KERNELS,
            fast_ops=ops.FAST_OPS,
            device=self.device,
        )

    @property
    def device(self) -> str:
        """Where the forward pass runs: ``"cpu"`` or ``"opencl:<platform> / <device>"``."""
        if self._runner is None:
            return "cpu"
        info = self._runner.ctx.info
        return f"opencl:{info.platform} / {info.name}"

    @property
    def output_layer(self) -> str:
        """The output layer in use: ``"exact"``, ``"q8"`` or ``"q6"`` (see :meth:`set_output_layer`)."""
        if self._head is self._q8_head:
            return "q8"
        if self._head is self._q6_head:
            return "q6"
        return "exact"

    def set_output_layer(self, kind: str) -> None:
        """Choose the output layer.

        The output matrix is the largest one a decode step reads (a third of the bytes of BitNet-b1.58-2B-4T);
        the quantized copies read fewer bytes for logits that move a little.

        Args:
            kind: ``"exact"`` (as stored), ``"q8"`` (int8 weights with a float32 scale per row: 8 bits a weight)
                or ``"q6"`` (6-bit weights with a scale per 16 and a float32 scale per row, as llama.cpp's Q6_K:
                6.5 bits a weight).  A quantized copy is made on first use and kept.

        Raises:
            ValueError: another kind, or ``"q6"`` on OpenCL.
        """
        if kind == "exact":
            self._head = self._exact_head
        elif kind == "q8":
            if self._q8_head is None:
                self._q8_head = DenseMatrix.quantize_q8(self._exact_head)
            self._head = self._q8_head
        elif kind == "q6":
            if self._runner is not None:
                raise ValueError("the q6 output layer runs on the CPU only; use 'exact' or 'q8' on OpenCL")
            if self._q6_head is None:
                self._q6_head = DenseMatrix.quantize_q6(self._exact_head)
            self._head = self._q6_head
        else:
            raise ValueError(f"output must be 'exact', 'q8' or 'q6', got {kind!r}")
        if self._runner is not None:
            self._runner.set_head(self._head)

    @property
    def kv_cache(self) -> str:
        """Element type of new sequences' KV caches: ``"f32"`` or ``"f16"``."""
        return self._kv_cache

    def set_kv_cache(self, kind: str) -> None:
        """Choose the KV cache's element type for sequences created from now on.

        ``"f32"`` keeps keys and values as computed (the forward pass proven against transformers); ``"f16"``
        stores them rounded to float16, as llama.cpp does by default: half the memory per token, and half the
        bytes each decode step reads from the cache (attention at long contexts is bound by them), for logits
        that move by about float16's precision.  The OpenCL path keeps float32.

        Args:
            kind: ``"f32"`` or ``"f16"``.

        Raises:
            ValueError: another kind.
        """
        if kind not in ("f32", "f16"):
            raise ValueError(f"kv_cache must be 'f32' or 'f16', got {kind!r}")
        if kind == "f16" and self._runner is not None:
            log.warning("kv_cache f16: the OpenCL path keeps float32 KV caches")
            kind = "f32"
        self._kv_cache = kind

    @property
    def compiled_layers(self) -> bool:
        """Whether the forward pass runs every decoder layer in one compiled call (see :meth:`set_compiled_layers`)."""
        return self._stack is not None

    def set_compiled_layers(self, on: bool) -> None:
        """Run the decoder layers in one compiled call, or one op at a time from Python.

        The compiled loop is the default wherever it applies: on the CPU with the compiled kernels, when every
        linear layer is one plain ternary product (q/k/v and gate/up fused; no bias, input norm, dense layer or
        per-block scales).  Both give the same bits; the per-op path costs a Python call per op (about 1 ms per
        token on a 30-layer model).

        Args:
            on: the compiled loop (True) or the per-op path (False).

        Raises:
            ValueError: ``on`` for a model the compiled loop does not take.
        """
        if on and self._compiled is None:
            raise ValueError("this model cannot run the compiled layer loop (see Model.set_compiled_layers)")
        self._stack = self._compiled if on else None

    @property
    def prefix_cache(self) -> PrefixCache | None:
        """The prefix cache (see :meth:`set_prefix_cache`), or None when it is off."""
        return self._prefix_cache

    def set_prefix_cache(self, budget_bytes: int, *, block_tokens: int = BLOCK_TOKENS) -> None:
        """Turn automatic prefix caching on (a new, empty cache; on OpenCL in device memory) or off.

        Sequences started with a ``cache_salt`` (:meth:`new_sequence`) then reuse the keys and values of
        prompt blocks computed before under the same salt, with the same output
        (:mod:`bitnet_actor.engine.prefix_cache`).

        Args:
            budget_bytes: the most bytes the cached blocks may take; 0: off (the blocks are freed).
            block_tokens: tokens per block.

        Raises:
            ValueError: a negative budget or a block size below 1.
        """
        cache = PrefixCache(self.config, budget_bytes, block_tokens=block_tokens, runner=self._runner)
        with self._lock:
            self._prefix_cache = cache if budget_bytes else None

    # ---------------------------------------------------------------------------------------------- sequences

    def new_sequence(
        self,
        prompt_ids: Seq[int] | npt.NDArray[Any],
        params: SamplingParams | None = None,
        *,
        cache_salt: bytes | None = None,
    ) -> Sequence:
        """Start a sequence (allocates its KV cache for prompt + max_tokens tokens).

        Args:
            prompt_ids: the prompt's token ids (at least one).
            params: sampling parameters (default: :class:`SamplingParams` defaults).
            cache_salt: with the prefix cache on, who this sequence shares cached prompt blocks with (the same
                salt only); None: it neither uses nor adds any.

        Returns:
            The sequence.

        Raises:
            ValueError: an empty prompt, a token id outside the vocabulary, stop strings without a tokenizer.
            ContextLengthError: prompt + max_tokens exceeds the context length.
        """
        params = params or SamplingParams()
        prompt = np.asarray(prompt_ids, dtype=np.int64).reshape(-1)
        if prompt.size == 0:
            raise ValueError("prompt_ids must hold at least one token")
        if int(prompt.min()) < 0 or int(prompt.max()) >= self.vocab_size:
            raise ValueError(f"prompt_ids: token ids must be in [0, {self.vocab_size})")
        if len(prompt) + params.max_tokens > self.context_length:
            raise ContextLengthError(
                f"prompt ({len(prompt)} tokens) + max_tokens ({params.max_tokens}) exceeds the context length "
                f"of {self.context_length} tokens"
            )
        if params.stop and self._tokenizer is None:
            raise ValueError("stop strings need a tokenizer; this model has none")
        seq = Sequence(self, prompt, params)
        if self._prefix_cache is not None and cache_salt is not None:
            self._prefix_cache.key(seq, cache_salt)
        return seq

    def step(self, seqs: list[Sequence], *, prefill_chunk: int = 256) -> list[StepOutput]:
        """Advance every unfinished sequence by one scheduler step in one batched forward.

        Sequences still prefilling consume up to ``prefill_chunk`` prompt tokens (and sample their first
        token when the chunk reaches the end of the prompt); the others decode one token.

        Args:
            seqs: the sequences (finished ones are skipped and get no output).
            prefill_chunk: the most prompt tokens per sequence per step (>= 1).

        Returns:
            One :class:`StepOutput` per unfinished sequence, in order.
        """
        if prefill_chunk < 1:
            raise ValueError(f"prefill_chunk must be >= 1, got {prefill_chunk}")
        active = [s for s in seqs if not s.finished]
        if any(s.model is not self for s in active):
            raise ValueError("a sequence belongs to another model")
        if len({s.id for s in active}) != len(active):
            raise ValueError("a sequence appears twice in one step")
        if not active:
            return []
        with self._lock:
            cache = self._prefix_cache
            if cache is not None:
                cache.attach(active)  # new sequences start after their prompts' cached blocks
            feeds = [s._next_rows(prefill_chunk) for s in active]
            want = [s.pos + len(f) >= len(s.prompt) for s, f in zip(active, feeds, strict=True)]
            logits = forward(self, active, feeds, want, all_rows=False)
            if cache is not None:
                cache.store(active, [s.pos + len(f) for s, f in zip(active, feeds, strict=True)])
        sampling = [s for s, w in zip(active, want, strict=True) if w]
        masked = self._mask_constrained(sampling, logits)
        outs: list[StepOutput] = []
        li = 0
        for s, f, w in zip(active, feeds, want, strict=True):
            s.pos += len(f)
            if not w:
                outs.append(StepOutput(s, None, "", False, None))
                continue
            row = logits[li]
            token = s.sampler.sample(masked.get(li, row))
            li += 1
            outs.append(s._accept(token, row))
        return outs

    def _mask_constrained(self, sampling: list[Sequence], logits: npt.NDArray[np.float32]) -> dict[int, Any]:
        """Copies of the logits rows of the sequences with a grammar, masked to what it allows (by row);
        the unconstrained rows are not touched or copied."""
        rows = [i for i, s in enumerate(sampling) if s.params.grammar is not None]
        if not rows:
            return {}
        for i in rows:
            seq = sampling[i]
            if seq.matcher is None and seq.params.grammar is not None:
                seq.matcher = self.constraints.matcher(seq.params.grammar)
        sub = logits[rows]  # a copy: logprobs stay those of the model's own distribution
        self.constraints.mask_rows([sampling[i].matcher for i in rows], sub, list(range(len(rows))))
        return {row: sub[k] for k, row in enumerate(rows)}

    def generate(
        self, prompt_ids: Seq[int] | npt.NDArray[Any], *, max_tokens: int = 256, **sampling: Any
    ) -> Iterator[int]:
        """Generate token ids for one prompt (greedy when ``temperature=0``).

        Args:
            prompt_ids: the prompt.
            max_tokens: the most tokens.
            **sampling: other :class:`SamplingParams` fields.

        Yields:
            Token ids as they are generated (a stop token ends the stream and is not yielded).
        """
        params = SamplingParams.from_kwargs(max_tokens=max_tokens, **sampling)
        seq = self.new_sequence(prompt_ids, params)
        try:
            done = 0
            while not seq.finished:
                self.step([seq])
                while done < len(seq.output_ids):
                    yield seq.output_ids[done]
                    done += 1
        finally:
            seq.release()

    def logits(self, token_ids: Seq[int] | npt.NDArray[Any]) -> npt.NDArray[np.float32]:
        """Logits of every position of a prompt.

        Args:
            token_ids: the prompt (1 .. context_length tokens).

        Returns:
            float32 (T, vocab): row ``t`` predicts token ``t + 1``.
        """
        ids = np.asarray(token_ids, dtype=np.int64).reshape(-1)
        if ids.size == 0 or ids.size > self.context_length:
            raise ContextLengthError(f"logits needs 1 .. {self.context_length} tokens, got {ids.size}")
        if int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size:
            raise ValueError(f"token_ids must be in [0, {self.vocab_size})")
        seq = Sequence(self, ids, SamplingParams(max_tokens=1, ignore_eos=True))
        with self._lock:
            out = forward(self, [seq], [ids], [True], all_rows=True)
        seq.release()
        return out
