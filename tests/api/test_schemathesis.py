"""Schemathesis against a real server on loopback, from the OpenAPI document it serves (``/api/v1`` and
``/v1``): a few derandomized cases per operation (the same requests on every CI run), and no response is a 5xx,
has a status the document does not list, or a body outside the document's schema. ``ops/fuzz_api.py`` runs
the same for longer."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import pytest
import trio

from ops.fuzz_api import fuzz
from tests.api.served import _org_with_key, serve

if TYPE_CHECKING:
    from pathlib import Path

pytest.importorskip("schemathesis", reason="schemathesis drives the fuzzing")
pytest.importorskip("transformers", reason="transformers builds the test model")

EVERY_SCOPE = ["inference", "models:read", "models:write", "billing:read", "admin"]


async def test_every_operation_answers_within_its_documented_schema(
    aio_loop: object, pg_dsn: str, redis_url: str, tmp_path: Path, model_dir: Path
) -> None:
    async with serve(pg_dsn, redis_url, tmp_path, {"tiny": model_dir}) as served:
        _, key = await trio.to_thread.run_sync(_org_with_key, pg_dsn, f"fuzz-{uuid.uuid4().hex[:6]}", EVERY_SCOPE)
        result = await trio.to_thread.run_sync(lambda: fuzz(served.url, key, max_examples=10, seed=1))
    report = result.table() + "".join(
        f"\n\n{op} [{check}]\n{message}"
        for op, checks in result.failures.items()
        for check, messages in checks.items()
        for message in messages
    )
    assert result.operations, result.output
    assert result.ok, report
