"""``/v1/tokenize`` and ``/v1/detokenize``: a model's tokenizer, as vLLM's server offers it."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from quart import Blueprint, Response, jsonify

from bitnet_actor.api.auth import handles
from bitnet_actor.api.errors import json_body
from bitnet_actor.api.openai.admission import (
    chat_prompt,
    encode_prompt,
    inference_access,
    lease,
    peek_limits,
    sticky_id,
)
from bitnet_actor.api.openai.protocol import DETOKENIZE, TOKENIZE, RequestType, bad

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from bitnet_actor.engine import Model

__all__ = ["blueprint"]

blueprint = Blueprint("tokenize", __name__)

MAX_BODY_BYTES = 4 * 1024 * 1024


@contextlib.asynccontextmanager
async def _leased(kind: RequestType) -> AsyncIterator[tuple[dict[str, Any], Model]]:
    """Authenticate, read and check the body, and lease its model for the block."""
    access = await inference_access()
    await peek_limits(access)
    body = await json_body(max_bytes=MAX_BODY_BYTES)
    kind.check(body)
    async with contextlib.AsyncExitStack() as stack:
        yield body, (await lease(stack, handles(), body, access.org_id, caller=sticky_id(access))).model


@blueprint.post("/v1/tokenize")
async def tokenize() -> Response:
    """Token ids of a prompt (or of chat messages through the template)."""
    async with _leased(TOKENIZE) as (body, model):
        if "messages" in body:
            ids = chat_prompt(model, TOKENIZE.parse(body, "messages"))
        else:
            prompt = TOKENIZE.parse(body, "prompt")
            add = TOKENIZE.parse(body, "add_special_tokens")
            ids = encode_prompt(model, prompt, add_special_tokens=add)
        return jsonify({"tokens": ids, "count": len(ids), "max_model_len": model.context_length})


@blueprint.post("/v1/detokenize")
async def detokenize() -> Response:
    """Text of token ids."""
    async with _leased(DETOKENIZE) as (body, model):
        tokens = DETOKENIZE.parse(body, "tokens")
        if any(t >= model.vocab_size for t in tokens):
            raise bad("token ids must be inside the vocabulary", "tokens")
        return jsonify({"prompt": model.tokenizer.decode(tokens, skip_special_tokens=False)})
