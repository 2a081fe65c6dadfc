"""Fixtures: tiny checkpoints built once per session (transformers needed only where a test asks for one)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pytest

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

if TYPE_CHECKING:
    from pathlib import Path


def _need_transformers() -> None:
    pytest.importorskip("torch", reason="torch (test-only dependency) is not installed")
    pytest.importorskip("transformers", reason="transformers (test-only dependency) is not installed")
    pytest.importorskip("safetensors", reason="safetensors (test-only dependency) is not installed")


GGUF_SIZES = {"hidden_size": 256, "intermediate_size": 512, "num_attention_heads": 4, "num_key_value_heads": 2}


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """name -> directory of a tiny checkpoint written by transformers."""
    _need_transformers()
    from tests.engine.hf_models import make_checkpoint

    base = tmp_path_factory.mktemp("ckpt")
    specs = {
        "bitnet-auto-offline": {"arch": "bitnet", "linear_class": "autobitlinear", "mode": "offline"},
        "bitnet-bitlinear-offline": {"arch": "bitnet", "linear_class": "bitlinear", "mode": "offline", "seed": 1},
        "bitnet-auto-online": {"arch": "bitnet", "linear_class": "autobitlinear", "mode": "online", "tie": False},
        "llama-bitlinear-offline": {
            "arch": "llama",
            "linear_class": "bitlinear",
            "mode": "offline",
            "tie": False,
            "seed": 2,
            "modules_to_not_convert": ["lm_head", "model.layers.1.mlp.down_proj"],
        },
        # K a multiple of 256 for TQ1_0 / TQ2_0
        "bitnet-gguf": {"sizes": GGUF_SIZES},
        "bitnet-gguf-bitlinear": {"linear_class": "bitlinear", "seed": 3, "sizes": GGUF_SIZES},
        "llama-gguf": {
            "arch": "llama",
            "linear_class": "bitlinear",
            "tie": False,
            "seed": 4,
            "modules_to_not_convert": ["lm_head"],
            "sizes": GGUF_SIZES,
        },
    }
    return {name: make_checkpoint(base / name, **kw) for name, kw in specs.items()}  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def bitnet_dir(checkpoints: dict[str, Path]) -> Path:
    """The default BitNet checkpoint (autobitlinear, packed, tied)."""
    return checkpoints["bitnet-auto-offline"]
