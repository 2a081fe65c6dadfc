"""The OpenAI-compatible inference API, one module per endpoint family.

- :mod:`.protocol`: the request bodies (fields with their schemas and parsers), the one definition that both
  validation and the OpenAPI document (:mod:`.spec`) come from;
- :mod:`.admission`: authentication for inference and the one admission path (lease, plan, tenant, submit)
  shared by HTTP and the websocket; :mod:`.run`: one generation's state and its usage record;
- :mod:`.completions` (``/v1/completions``, ``/v1/chat/completions``), :mod:`.models` (``/v1/models``),
  :mod:`.tokenize` (``/v1/tokenize``, ``/v1/detokenize``), :mod:`.responses_ws` (the ``/v1/responses``
  websocket); :mod:`.sse`: server-sent events.
"""

from __future__ import annotations

from bitnet_actor.api.openai import completions, models, responses_ws, tokenize

__all__ = ["BLUEPRINTS"]

BLUEPRINTS = (models.blueprint, completions.blueprint, tokenize.blueprint, responses_ws.blueprint)
"""The blueprints to register, in order."""
