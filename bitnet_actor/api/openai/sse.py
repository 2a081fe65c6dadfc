"""Server-sent events as OpenAI sends them: ``data: {json}\\n\\n`` chunks, ``data: [DONE]\\n\\n`` at the end."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from quart import Response

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

__all__ = ["DONE", "sse_event", "sse_response"]

DONE = b"data: [DONE]\n\n"


def sse_event(obj: Any) -> bytes:
    """One SSE event carrying ``obj`` as compact JSON."""
    return b"data: " + json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


def sse_response(body: AsyncIterator[bytes]) -> Response:
    """A streaming ``text/event-stream`` response of ``body``'s events (no timeout: it lasts as generation does;
    no proxy buffering). Quart calls ``body.aclose()`` when the stream ends or the client goes away."""
    response = Response(body, content_type="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"
    response.timeout = None
    return response
