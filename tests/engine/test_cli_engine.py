"""``bitnet-actor generate`` / ``inspect`` through :mod:`bitnet_actor.cli_engine` (argparse wiring included)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

import pytest

from bitnet_actor import cli_engine
from tests.kernels_opencl.devices import device_params

if TYPE_CHECKING:
    from pathlib import Path


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bitnet-actor")
    sub = parser.add_subparsers(dest="command")
    cli_engine.add_subcommands(sub)
    return parser.parse_args(argv)


def test_inspect(checkpoints: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_engine.run(_parse(["inspect", str(checkpoints["llama-bitlinear-offline"]), "--tensors"])) == 0
    out, err = capsys.readouterr()
    assert "LlamaForCausalLM (llama)" in out
    assert "U8" in out
    assert "model.layers.1.mlp.down_proj.weight" in out
    assert "loaded in" in err


def test_generate_streams(checkpoints: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    from tests.engine.test_tokenizer_integration import _write_tokenizer

    root = tmp_path / "m"
    shutil.copytree(checkpoints["bitnet-auto-offline"], root)
    _write_tokenizer(root)
    argv = ["generate", "--model", str(root), "--prompt", "the rain", "--max-tokens", "5", "--ignore-eos"]
    assert cli_engine.run(_parse(argv)) == 0
    out, err = capsys.readouterr()
    assert out.endswith("\n")
    assert "[5 tokens, length;" in err


def test_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_engine.run(_parse(["inspect", str(tmp_path / "missing")])) == 1
    _, err = capsys.readouterr()
    assert err.strip().splitlines() == [f"bitnet-actor: error: {tmp_path / 'missing'}: no such file or directory"]
    assert cli_engine.run(_parse(["generate", "--model", str(tmp_path), "--prompt", "x", "--top-p", "0"])) == 1
    _, err = capsys.readouterr()
    assert err.strip() == "bitnet-actor: error: top_p must be in (0.0, 1.0], got 0.0"


@pytest.mark.parametrize("selector", device_params())
def test_generate_on_opencl_prints_the_cpu_text(selector: str, capsys: pytest.CaptureFixture[str]) -> None:
    from bitnet_actor.system import DEMO_MODEL_DIR

    argv = ["generate", "--model", str(DEMO_MODEL_DIR), "--prompt", "Return a list of", "--max-tokens", "12"]
    assert cli_engine.run(_parse(argv)) == 0
    cpu_out, _ = capsys.readouterr()
    assert cli_engine.run(_parse([*argv, "--device", "opencl", "--opencl-device", selector])) == 0
    out, err = capsys.readouterr()
    assert out == cpu_out
    assert "opencl:" in err


def test_a_bad_opencl_device_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from bitnet_actor.system import DEMO_MODEL_DIR

    argv = ["generate", "--model", str(DEMO_MODEL_DIR), "--prompt", "x", "--device", "opencl"]
    assert cli_engine.run(_parse([*argv, "--opencl-device", "no-such-gpu"])) == 1
    _, err = capsys.readouterr()
    last = err.strip().splitlines()[-1]
    assert last.startswith("bitnet-actor: error: OpenCL: no OpenCL ")  # "device matches 'no-such-gpu'" or "platform"
    assert "Traceback" not in err


def test_generate_with_f16_kv_cache(capsys: pytest.CaptureFixture[str]) -> None:
    from bitnet_actor.system import DEMO_MODEL_DIR

    argv = ["generate", "--model", str(DEMO_MODEL_DIR), "--prompt", "Return a list of", "--max-tokens", "12"]
    assert cli_engine.run(_parse([*argv, "--kv-cache", "f16"])) == 0
    out, _ = capsys.readouterr()
    assert out.strip()
    with pytest.raises(SystemExit):
        _parse([*argv, "--kv-cache", "int4"])


def test_generate_with_q6_output_layer(capsys: pytest.CaptureFixture[str]) -> None:
    from bitnet_actor.system import DEMO_MODEL_DIR

    argv = ["generate", "--model", str(DEMO_MODEL_DIR), "--prompt", "Return a list of", "--max-tokens", "12"]
    assert cli_engine.run(_parse([*argv, "--output-layer", "q6"])) == 0
    out, _ = capsys.readouterr()
    assert out.strip()
    with pytest.raises(SystemExit):
        _parse([*argv, "--output-layer", "q4"])
