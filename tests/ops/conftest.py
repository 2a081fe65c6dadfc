"""The tiny served model for the load test's end-to-end run (as tests/api/conftest.py builds it)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def model_dir() -> Iterator[Path]:
    """A tiny served checkpoint with a tokenizer, built by transformers once per session."""
    pytest.importorskip("transformers", reason="transformers builds the test model")
    from tests.api.served import build_model_dir

    root = Path(tempfile.mkdtemp(prefix="bitnet-loadtest-"))
    yield build_model_dir(root / "tiny")
    shutil.rmtree(root, ignore_errors=True)
