"""A tiny HF model directory with a tokenizer and chat template (written once per session), and archives of it."""

from __future__ import annotations

import io
import json
import os
import tarfile
import zipfile
from typing import TYPE_CHECKING

import pytest

from tests.stores.conftest import s3_server

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

__all__ = ["s3_server"]  # the store tests' SeaweedFS server, for the encrypted-objects tests

if TYPE_CHECKING:
    from pathlib import Path

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
