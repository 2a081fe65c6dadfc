"""The usage ledger: one frozen :class:`UsageEvent` per request, written in batches by the usage meter.

``record_batch`` hands a batch to ``bitnet_record_usage`` (migration 0004), one statement: the events go
into ``usage_events`` (``ON CONFLICT (request_id, created_at) DO NOTHING``, so a retried batch or a replayed
spill file counts nothing twice), and only the events that were new are added to the per-bucket rollups
and to the Stripe outbox, in the same transaction.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Sequence

    from bitnet_actor.stores.postgres import Database

__all__ = ["ERROR_OUTCOMES", "UsageEvent", "record_batch"]

# Outcomes the rollups count as errors (a client that went away is not one).
ERROR_OUTCOMES = frozenset({"failed", "error", "timeout"})


@dataclass(frozen=True, slots=True, kw_only=True)
class UsageEvent:
    """What one request used, however it ended.

    Attributes:
        request_id: the request's id (``chatcmpl-...``): the idempotency key.
        org_id: the organization billed. api_key_id / user_id: who called (either may be None).
        model / model_version: what served it.
        endpoint: ``completions``, ``chat``, ``responses``.
        input_tokens / output_tokens / cached_tokens: counted as the response's usage reports them.
        latency_ms: end-to-end. ttft_ms: to the first token (None: none came).
        finish_reason: of the first choice. outcome: ``completed``, ``cancelled`` (the client left), ``failed``.
        request_data: the sampling parameters (never the prompt).
        created_at: when the request ended (part of the ledger's key: it travels with the event).
    """

    request_id: str
    org_id: uuid.UUID
    model: str
    input_tokens: int
    output_tokens: int
    latency_ms: int
    outcome: str
    api_key_id: uuid.UUID | None = None
    user_id: uuid.UUID | None = None
    model_version: str = ""
    endpoint: str = ""
    cached_tokens: int = 0
    ttft_ms: int | None = None
    finish_reason: str | None = None
    request_data: dict[str, Any] = field(default_factory=dict)
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def __post_init__(self) -> None:
        for name in ("input_tokens", "output_tokens", "cached_tokens", "latency_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if not self.request_id:
            raise ValueError("request_id is required")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (what the database function and the spill file take)."""
        data = asdict(self)
        for name in ("org_id", "api_key_id", "user_id"):
            value = data[name]
            data[name] = str(value) if value is not None else None
        data["created_at"] = self.created_at.isoformat()
        return data

    def to_json(self) -> str:
        """One line of a spill file."""
        return json.dumps(self.to_dict(), separators=(",", ":"), default=str)

    @classmethod
    def from_json(cls, line: str) -> UsageEvent:
        """An event from a spill line (raises ``ValueError`` / ``KeyError`` / ``TypeError`` when damaged)."""
        data = json.loads(line)
        if not isinstance(data, dict):
            raise ValueError("not an object")
        for name in ("org_id", "api_key_id", "user_id"):
            if data.get(name) is not None:
                data[name] = uuid.UUID(data[name])
        data["created_at"] = datetime.fromisoformat(data["created_at"])
        return cls(**data)


async def record_batch(db: Database, events: Sequence[UsageEvent], *, outbox: bool = True) -> int:
    """Write ``events`` in one statement; return how many were new (the rest were there already)."""
    if not events:
        return 0
    # Encoded here, as text: a value JSON cannot hold (in request_data) is written as its str, as in the spill
    # file, never an error that would leave the batch nowhere.
    payload = json.dumps([e.to_dict() for e in events], separators=(",", ":"), default=str)
    inserted = await db.fetchval("SELECT bitnet_record_usage($1::text::jsonb, $2)", payload, outbox)
    return int(inserted or 0)
