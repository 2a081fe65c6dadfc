"""The model engine: loads BitNet b1.58 (ternary) models and runs them on the CPU.

Nothing here imports trio or the stores: a scheduler (issue [E]) calls these functions from worker threads.

Loading
=======

``load_model(path, *, device="cpu", output="exact", threads=None, progress=None, opencl_device=None,
kv_cache="f32") -> Model``
(``device``: ``"cpu"``, ``"opencl"`` or ``"auto"``; see :mod:`bitnet_actor.engine.opencl`) takes an HF
model directory (``config.json`` + safetensors, sharded or not) or a ``.gguf`` file and repacks every
ternary weight into :mod:`kernels_cython`'s layout (see :mod:`bitnet_actor.engine.loader` for the
conventions and :mod:`bitnet_actor.engine.config` for the supported architectures).  Files are read through
memory maps; errors are :mod:`bitnet_actor.engine.errors` (``CorruptModelError`` names the file and tensor,
``UnsupportedModelError`` the architecture / method / type found and the supported ones).

Conversion
==========

``convert_model(src, dst, fmt, *, progress=None, should_stop=None, ...)`` in :mod:`bitnet_actor.engine.convert`
writes a model as a ternary packed HF directory (``"hf-ternary"``) or a GGUF file (``"tq1_0"``, ``"tq2_0"``,
``"i2_s"``), streamed tensor by tensor, under a temporary name renamed at the end.

Model
=====

* ``model.logits(token_ids) -> float32 (T, vocab)`` for a whole prompt;
* ``model.generate(prompt_ids, *, max_tokens, **sampling)`` yields token ids (greedy at ``temperature=0``);
* ``model.tokenizer`` (encode, decode, apply_chat_template, incremental_decoder), ``model.info`` (a frozen
  :class:`ModelInfo`: architecture, parameter count, bytes, formats), ``model.nbytes``,
  ``model.context_length``, ``model.set_output_layer("exact" | "q8" | "q6")`` (int8 or 6-bit output matrix:
  fewer bytes per token, slightly different logits), ``model.set_kv_cache("f32" | "f16")`` (float16 KV caches for new
  sequences: half their memory and attention's bytes, logits within float16 precision).

Step-wise, batched API (for the scheduler)
==========================================

``seq = model.new_sequence(prompt_ids, params, *, cache_salt=None)``
    allocates the sequence's KV cache (float32, prompt + ``max_tokens`` positions); raises
    ``ContextLengthError`` (a ``ValueError``) when that exceeds ``model.context_length``.  With
    ``model.set_prefix_cache(budget_bytes)`` on, a ``cache_salt`` (who may share: an organization's id) makes its
    first step reuse the cached keys and values of the prompt's longest run of full 16-token blocks seen before
    under that salt (``seq.cached_tokens``), with the same output (:mod:`bitnet_actor.engine.prefix_cache`).
``outs = model.step(seqs, *, prefill_chunk=256)``
    one forward for all unfinished ``seqs``: a sequence still prefilling consumes up to ``prefill_chunk``
    prompt tokens, the others decode one token; returns one :class:`StepOutput` per unfinished sequence
    (``token_id`` or None while the prompt is not all in, ``text`` delta from the incremental decoder with
    stop strings removed and partial stop-string prefixes held back, ``finished``, ``finish_reason``
    ``"stop"`` | ``"length"``, ``logprob`` / ``top_logprobs``).  A finished sequence frees its cache.
``seq.release()``
    frees the cache of a sequence abandoned early (idempotent).

``step`` holds a per-model lock and spends its time in kernels that release the GIL; run it in a worker
thread.  A sequence's greedy output is identical alone and in any batch (linear layers are exact per row,
attention is per sequence).  :class:`SamplingParams` (frozen, validated: ``ValueError`` naming the field)
holds temperature, top_k, top_p, min_p, repetition / presence / frequency penalties, logit_bias, seed, stop,
stop_token_ids, max_tokens, logprobs, top_logprobs, ignore_eos.
"""

from __future__ import annotations

from bitnet_actor.engine.errors import (
    ContextLengthError,
    ConversionCancelled,
    CorruptModelError,
    DeviceError,
    EngineError,
    ModelLoadError,
    UnsupportedModelError,
)
from bitnet_actor.engine.loading import load_model
from bitnet_actor.engine.model import Model, ModelInfo
from bitnet_actor.engine.sampling import SamplingParams
from bitnet_actor.engine.sequence import Sequence, StepOutput

__all__ = [
    "ContextLengthError",
    "ConversionCancelled",
    "CorruptModelError",
    "DeviceError",
    "EngineError",
    "Model",
    "ModelInfo",
    "ModelLoadError",
    "SamplingParams",
    "Sequence",
    "StepOutput",
    "UnsupportedModelError",
    "load_model",
]
