"""Tokenizers, chat templates and streaming detokenization.

A :class:`Tokenizer` wraps a ``tokenizers.Tokenizer`` (the Rust "fast" tokenizer that ``tokenizer.json``
describes) and adds what a server needs around it: the special tokens and end-of-sequence ids from the model's
configuration, chat templates rendered the way transformers renders them, and an :class:`IncrementalDecoder`
that turns a stream of generated ids into text without ever emitting half a UTF-8 character.

Two sources:

* :meth:`Tokenizer.from_hf_dir` -- a Hugging Face directory: ``tokenizer.json`` (required),
  ``tokenizer_config.json``, ``special_tokens_map.json``, ``generation_config.json``, ``config.json`` and the
  chat template files (``chat_template.jinja``, ``chat_template.json``,
  ``additional_chat_templates/*.jinja``).
* :meth:`Tokenizer.from_gguf_metadata` -- the vocabulary a GGUF file carries, rebuilt as a ``tokenizers``
  object: ``"gpt2"`` files become a byte-level BPE with the file's merges and the pre-tokenizer regex that
  ``tokenizer.ggml.pre`` names; ``"llama"`` (SentencePiece) files become a BPE whose merges are recovered from
  the token scores (SentencePiece BPE merges the pair whose result has the best score, which is what llama.cpp
  does and what transformers' converter does), with byte fallback and the ``"▁"`` space prefix.

Chat templates run in jinja2's immutable sandbox with the settings, filters and globals transformers uses
(``trim_blocks``, ``lstrip_blocks``, ``loopcontrols``, ``tojson`` without ASCII escaping, ``raise_exception``,
``strftime_now``, the ``{% generation %}`` tag), and see the same variables: ``messages``, ``tools``,
``documents``, ``add_generation_prompt``, the named special tokens (``bos_token``, ``eos_token``, ...) and any
extra keyword arguments.

Modules: :mod:`._tokenizer` (the class), :mod:`._hf_loader` and :mod:`._gguf_loader` (the two sources),
:mod:`._gguf_writer` (an HF tokenizer as GGUF metadata, :func:`gguf_tokenizer_metadata`, for the converter),
:mod:`._chat_template` (rendering), :mod:`._incremental` (streaming decode), :mod:`._common` (the error and
what the others share). Import from this package; the modules are private.
"""

from __future__ import annotations

from bitnet_actor.engine.tokenizer._chat_template import render_chat_template
from bitnet_actor.engine.tokenizer._common import TokenizerError
from bitnet_actor.engine.tokenizer._gguf_loader import GGUF_TOKEN_TYPES
from bitnet_actor.engine.tokenizer._gguf_writer import gguf_tokenizer_metadata
from bitnet_actor.engine.tokenizer._incremental import IncrementalDecoder
from bitnet_actor.engine.tokenizer._tokenizer import Tokenizer

__all__ = [
    "GGUF_TOKEN_TYPES",
    "IncrementalDecoder",
    "Tokenizer",
    "TokenizerError",
    "gguf_tokenizer_metadata",
    "render_chat_template",
]
