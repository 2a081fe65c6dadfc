"""A served model whose WordLevel vocabulary has no unknown token: text it cannot encode is a 400 naming the
field (never a 500), text it can is served."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from tests.api.served import Served, serve

pytest.importorskip("transformers", reason="transformers builds the test model")


@pytest.fixture(scope="module")
def words_model() -> Iterator[Path]:
    from tests.engine.hf_models import make_checkpoint
    from tests.engine.test_unusual_tokenizers import word_level

    root = Path(tempfile.mkdtemp(prefix="bitnet-words-"))
    model = make_checkpoint(root / "words", sizes={"vocab_size": 64})
    word_level(model)
    yield model
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
async def served(
    aio_loop: object, pg_dsn: str, redis_url: str, words_model: Path, tmp_path: Path
) -> AsyncIterator[Served]:
    async with serve(pg_dsn, redis_url, tmp_path, {"words": words_model}) as s:
        yield s


async def test_uncovered_text_is_a_400(served: Served) -> None:
    auth = {"Authorization": f"Bearer {served.key}"}
    async with httpx.AsyncClient(base_url=served.url, headers=auth, timeout=60) as http:
        ok = await http.post("/v1/completions", json={"model": "words", "prompt": "hello world", "max_tokens": 2})
        assert ok.status_code == 200, ok.text
        for path, body, param in (
            ("/v1/completions", {"model": "words", "prompt": "hello zebra", "max_tokens": 2}, "prompt"),
            ("/v1/completions", {"model": "words", "prompt": "zebra", "stream": True}, "prompt"),
            ("/v1/tokenize", {"model": "words", "prompt": "zebra"}, "prompt"),
            (
                "/v1/chat/completions",
                {"model": "words", "messages": [{"role": "user", "content": "zebra"}]},
                "messages",
            ),
        ):
            r = await http.post(path, json=body)
            assert r.status_code == 400, (path, r.status_code, r.text)
            error = r.json()["error"]
            assert error["param"] == param and error["type"] == "invalid_request_error", error
        tokens = await http.post("/v1/tokenize", json={"model": "words", "prompt": "hello world"})
        assert tokens.status_code == 200 and tokens.json()["tokens"] == [0, 2, 3]
