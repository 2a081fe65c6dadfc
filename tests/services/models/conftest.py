"""A tiny HF model directory with a tokenizer and chat template (written once per session), and archives of it;
a database of its own per test for the encrypted-objects tests."""

from __future__ import annotations

import io
import json
import os
import tarfile
import uuid
import zipfile
from typing import TYPE_CHECKING

import pytest

from bitnet_actor.stores import app_dsn
from bitnet_actor.stores.migrate import migrate
from bitnet_actor.stores.postgres import Database, open_database
from tests.stores.conftest import s3_server

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

__all__ = ["s3_server"]  # the store tests' SeaweedFS server, for the encrypted-objects tests

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path


class Dbs:
    """The tables' owner and the service role, on a database of the test's own."""

    def __init__(self, owner: Database, app: Database) -> None:
        self.owner, self.app = owner, app

    async def new_org(self) -> uuid.UUID:
        org: uuid.UUID = await self.owner.fetchval(
            "INSERT INTO organizations (name) VALUES ($1) RETURNING id", f"crypto-{uuid.uuid4().hex[:8]}"
        )
        return org


@pytest.fixture
async def dbs(fresh_dsn: str) -> AsyncIterator[Dbs]:
    """A database of this test's own (rotation walks every row), migrated; and the service role's pool."""
    async with open_database(fresh_dsn, max_size=2) as owner:
        await migrate(owner)
        async with open_database(app_dsn(fresh_dsn, "bitnet_app"), max_size=4) as app:
            yield Dbs(owner, app)


CHAT_TEMPLATE = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"


def write_tokenizer(root: Path, *, words: int = 40) -> None:
    """A word-level tokenizer of ``words`` words plus ``[UNK]`` and ``<|end|>``, and a chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0, **{f"w{i}": i + 1 for i in range(words)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(["<|end|>"])
    tok.save(str(root / "tokenizer.json"))
    (root / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|end|>"}))
    (root / "chat_template.jinja").write_text(CHAT_TEMPLATE)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BitNet checkpoint (transformers' own classes) with a tokenizer and a chat template."""
    pytest.importorskip("torch", reason="torch (test-only dependency) is not installed")
    pytest.importorskip("transformers", reason="transformers (test-only dependency) is not installed")
    from tests.engine.hf_models import make_checkpoint

    root = make_checkpoint(tmp_path_factory.mktemp("models") / "tiny", sizes={"num_hidden_layers": 1})
    write_tokenizer(root)
    return root


def model_files(root: Path) -> list[tuple[str, bytes]]:
    """``(name, bytes)`` of every file of a model directory, sorted."""
    return [(p.name, p.read_bytes()) for p in sorted(root.iterdir()) if p.is_file()]


def make_tar(path: Path, members: list[tuple[str, bytes]], *, gz: bool = False) -> Path:
    """A tar (or tar.gz) of regular files."""
    with tarfile.open(path, "w:gz" if gz else "w") as tf:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return path


def make_zip(path: Path, members: list[tuple[str, bytes]]) -> Path:
    """A zip (deflated) of regular files."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members:
            zf.writestr(name, data)
    return path


def make_archive(path: Path, kind: str, members: list[tuple[str, bytes]]) -> Path:
    """``kind``: ``"tar"``, ``"tar.gz"`` or ``"zip"``."""
    if kind == "zip":
        return make_zip(path, members)
    return make_tar(path, members, gz=kind == "tar.gz")
