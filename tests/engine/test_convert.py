"""Model conversion: HF masters -> ternary packed HF, any loadable model -> GGUF TQ1_0 / TQ2_0 / I2_S."""

from __future__ import annotations

import itertools
import json
import shutil
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

from bitnet_actor.engine import ConversionCancelled, CorruptModelError, UnsupportedModelError, load_model
from bitnet_actor.engine.convert import FORMATS, convert_model
from bitnet_actor.engine.gguf_io import GGUFFile
from bitnet_actor.engine.loader import ternarize_inv
from bitnet_actor.engine.tensors import SafetensorsFile, to_float32
from kernels_cython import reference as kref
from tests.engine.conftest import GGUF_SIZES
from tests.engine.test_tokenizer import byte_level_dir, corpus, spm_dir, spm_hf, spm_model
from tests.test_cli import assert_one_line_error, run_cli

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["byte_level_dir", "corpus", "spm_dir", "spm_hf", "spm_model"]  # fixtures shared with test_tokenizer

PROMPTS = [[1, 2, 3], [50, 60, 70, 80, 90], [200]]
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _greedy(model: Any) -> list[list[int]]:
    return [list(model.generate(p, max_tokens=16, temperature=0, ignore_eos=True)) for p in PROMPTS]


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Online (bf16 masters) checkpoints with a tokenizer; K a multiple of 256 for the TQ types."""
    pytest.importorskip("transformers")
    from tests.engine.hf_models import make_checkpoint
    from tests.engine.test_tokenizer_integration import _write_tokenizer

    base = tmp_path_factory.mktemp("convert-src")
    out = {
        "bitnet-online": make_checkpoint(
            base / "bo", arch="bitnet", linear_class="bitlinear", mode="online", tie=False, sizes=GGUF_SIZES
        ),
        "llama-online": make_checkpoint(
            base / "lo",
            arch="llama",
            linear_class="bitlinear",
            mode="online",
            tie=False,
            modules_to_not_convert=["lm_head"],
            sizes=GGUF_SIZES,
            seed=5,
        ),
    }
    for root in out.values():
        _write_tokenizer(root)
    return out


def _dst(tmp_path: Path, fmt: str) -> Path:
    return tmp_path / ("out" if fmt == "hf-ternary" else f"out.{fmt}.gguf")


def _fp16_scaled(src: Path, dst: Path) -> Path:
    """The source as the engine runs it, with each ternary scale rounded to fp16 (what TQ1_0/TQ2_0 store)."""
    tmp = dst.parent / (dst.name + "-hf")
    convert_model(src, tmp, "hf-ternary")
    st = SafetensorsFile(tmp / "model.safetensors")
    from safetensors.numpy import save_file

    tensors: dict[str, np.ndarray] = {}
    for name, t in st.tensors.items():
        if name.endswith(".weight_scale"):
            mult = np.float32(1) / np.float32(to_float32(t)[0])
            tensors[name] = np.array([np.float16(mult)], dtype=np.float32)  # autobitlinear: the multiplier
        elif t.dtype == "BF16":
            tensors[name] = to_float32(t)
        else:
            tensors[name] = np.array(t.data)
    dst.mkdir()
    save_file(tensors, str(dst / "model.safetensors"))
    cfg = json.loads((tmp / "config.json").read_text())
    cfg["quantization_config"]["linear_class"] = "autobitlinear"
    (dst / "config.json").write_text(json.dumps(cfg))
    for f in tmp.iterdir():
        if f.name not in ("model.safetensors", "config.json"):
            shutil.copy(f, dst / f.name)
    return dst


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", ["bitnet-online", "llama-online"])
def test_converted_model_generates_the_same(sources: dict[str, Path], name: str, fmt: str, tmp_path: Path) -> None:
    src = sources[name]
    source = load_model(src)
    dst = _dst(tmp_path, fmt)
    result = convert_model(src, dst, fmt, source_sha256="ab" * 32)
    assert result.path == dst and result.format == fmt and result.source_sha256 == "ab" * 32
    assert result.parameter_count == source.info.parameter_count
    files = sorted(p for p in dst.rglob("*") if p.is_file()) if dst.is_dir() else [dst]
    assert result.nbytes == sum(p.stat().st_size for p in files)
    import hashlib

    for p in files:
        key = str(p.relative_to(dst)) if dst.is_dir() else p.name
        assert result.sha256[key] == hashlib.sha256(p.read_bytes()).hexdigest()
    out = load_model(dst)
    assert out.has_tokenizer
    text = "the rain in spain"
    assert out.tokenizer.encode(text) == source.tokenizer.encode(text)
    if fmt in ("hf-ternary", "i2_s"):
        # float32 scales: the very model the engine runs from the masters
        np.testing.assert_array_equal(out.logits(PROMPTS[1]), source.logits(PROMPTS[1]))
        assert _greedy(out) == _greedy(source)
    else:
        # TQ1_0 / TQ2_0 carry fp16 block scales: the same as the source with its scales rounded to fp16
        ref = load_model(_fp16_scaled(src, tmp_path / "fp16"))
        np.testing.assert_array_equal(out.logits(PROMPTS[1]), ref.logits(PROMPTS[1]))
        assert _greedy(out) == _greedy(ref)
        a, b = out.logits(PROMPTS[1]), source.logits(PROMPTS[1])
        assert np.linalg.norm(a - b) < 0.05 * np.linalg.norm(b)  # int8 activations amplify the rounding


def test_hf_ternary_tensors(sources: dict[str, Path], checkpoints: dict[str, Path], tmp_path: Path) -> None:
    # masters: packed codes are the loader's absmean ternarization, weight_scale its inv, the rest copied
    src = sources["bitnet-online"]
    convert_model(src, tmp_path / "a", "hf-ternary")
    a, s = SafetensorsFile(tmp_path / "a" / "model.safetensors"), SafetensorsFile(src / "model.safetensors")
    cfg = json.loads((tmp_path / "a" / "config.json").read_text())
    assert cfg["quantization_config"] == {
        "quant_method": "bitnet",
        "linear_class": "bitlinear",
        "quantization_mode": "offline",
    }
    for name, t in s.tensors.items():
        out = a.tensors[name]
        if any(name.endswith(f"{lin}.weight") for lin in LINEARS):
            w, inv = ternarize_inv(to_float32(t))
            assert out.dtype == "U8"
            np.testing.assert_array_equal(out.data, kref.to_hf_packed(w)[0])
            assert a.tensors[name[: -len(".weight")] + ".weight_scale"].data.tolist() == [inv]
        else:
            assert (out.dtype, out.shape) == (t.dtype, t.shape)
            assert out.data.tobytes() == t.data.tobytes()
    for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        if (src / f).exists():
            assert (tmp_path / "a" / f).read_bytes() == (src / f).read_bytes()
    # an already packed bitlinear checkpoint comes out bit-identical, tensor by tensor
    packed = checkpoints["bitnet-bitlinear-offline"]
    convert_model(packed, tmp_path / "b", "hf-ternary")
    b, p = SafetensorsFile(tmp_path / "b" / "model.safetensors"), SafetensorsFile(packed / "model.safetensors")
    assert set(b.tensors) == set(p.tensors)
    for name, t in p.tensors.items():
        assert (b.tensors[name].dtype, b.tensors[name].shape) == (t.dtype, t.shape)
        assert b.tensors[name].data.tobytes() == t.data.tobytes(), name


def test_gguf_tensors(sources: dict[str, Path], tmp_path: Path) -> None:
    src = sources["bitnet-online"]
    convert_model(src, tmp_path / "m.gguf", "i2_s")
    g, s = GGUFFile(tmp_path / "m.gguf"), SafetensorsFile(src / "model.safetensors")
    w, _ = ternarize_inv(to_float32(s.tensors["model.layers.1.mlp.down_proj.weight"]))
    down = g.tensors["blk.1.ffn_down.weight"]
    assert down.dtype == "I2_S"
    np.testing.assert_array_equal(down.data, kref.to_i2_s(w))
    emb = g.tensors["token_embd.weight"]
    assert emb.dtype == "F16"
    np.testing.assert_array_equal(emb.data, to_float32(s.tensors["model.embed_tokens.weight"]).astype(np.float16))
    norm = g.tensors["blk.0.attn_sub_norm.weight"]
    assert norm.dtype == "F32"
    np.testing.assert_array_equal(norm.data, to_float32(s.tensors["model.layers.0.self_attn.attn_sub_norm.weight"]))
    assert g.metadata["general.architecture"] == "bitnet-b1.58"
    assert g.metadata["tokenizer.ggml.model"] == "gpt2"
    convert_model(src, tmp_path / "f32.gguf", "tq2_0", dense="f32")
    assert GGUFFile(tmp_path / "f32.gguf").tensors["output.weight"].dtype == "F32"


@pytest.mark.parametrize("fmt", ["tq1_0", "i2_s"])
def test_gguf_to_gguf(sources: dict[str, Path], fmt: str, tmp_path: Path) -> None:
    first = tmp_path / "first.gguf"
    convert_model(sources["llama-online"], first, "tq2_0")
    second = tmp_path / "second.gguf"
    convert_model(first, second, fmt)
    a, b = load_model(first), load_model(second)
    assert _greedy(a) == _greedy(b)
    assert b.tokenizer.encode("the rain") == a.tokenizer.encode("the rain")
    with pytest.raises(UnsupportedModelError, match="HF model directory"):
        convert_model(first, tmp_path / "hf", "hf-ternary")


def test_sharded_output(sources: dict[str, Path], tmp_path: Path) -> None:
    src = sources["llama-online"]
    convert_model(src, tmp_path / "s", "hf-ternary", max_shard_bytes=200_000)
    index = json.loads((tmp_path / "s" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert _greedy(load_model(tmp_path / "s")) == _greedy(load_model(src))


@pytest.mark.parametrize("fmt", ["hf-ternary", "tq2_0"])
def test_progress_is_monotone(sources: dict[str, Path], fmt: str, tmp_path: Path) -> None:
    calls: list[tuple[int, int, int, int]] = []
    result = convert_model(sources["bitnet-online"], _dst(tmp_path, fmt), fmt, progress=lambda *a: calls.append(a))
    assert calls[0][0] == 0 and calls[0][2] == 0
    for (d0, t0, b0, bt0), (d1, t1, b1, bt1) in itertools.pairwise(calls):
        assert t0 == t1 and bt0 == bt1 and d1 >= d0 and b1 >= b0
    done, total, nbytes, total_bytes = calls[-1]
    assert done == total and nbytes == total_bytes
    path = result.path
    weights = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
    model_bytes = sum(p.stat().st_size for p in weights)  # progress counts the tensor files
    assert total_bytes == model_bytes


@pytest.mark.parametrize("fmt", ["hf-ternary", "i2_s"])
def test_cancel_leaves_nothing(sources: dict[str, Path], fmt: str, tmp_path: Path) -> None:
    polls = iter(range(1000))
    dst = _dst(tmp_path, fmt)
    with pytest.raises(ConversionCancelled):
        convert_model(sources["bitnet-online"], dst, fmt, should_stop=lambda: next(polls) >= 5)
    assert list(tmp_path.iterdir()) == []

    def boom(done: int, total: int, nbytes: int, total_bytes: int) -> None:
        if done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        convert_model(sources["bitnet-online"], dst, fmt, progress=boom)
    assert list(tmp_path.iterdir()) == []


def test_bad_input(sources: dict[str, Path], checkpoints: dict[str, Path], tmp_path: Path) -> None:
    src = sources["bitnet-online"]
    with pytest.raises(ValueError, match="unknown format"):
        convert_model(src, tmp_path / "x", "q4_0")
    (tmp_path / "exists.gguf").write_bytes(b"keep")
    with pytest.raises(FileExistsError):
        convert_model(src, tmp_path / "exists.gguf", "i2_s")
    assert (tmp_path / "exists.gguf").read_bytes() == b"keep"
    # K = 96 (the small checkpoints) is no multiple of TQ's 256-weight blocks
    with pytest.raises(UnsupportedModelError, match="multiple of 256"):
        convert_model(checkpoints["bitnet-auto-online"], tmp_path / "k.gguf", "tq2_0")
    # a dense layer (modules_to_not_convert) has no place among GGUF's ternary layers
    with pytest.raises(UnsupportedModelError, match="stays dense"):
        convert_model(checkpoints["llama-bitlinear-offline"], tmp_path / "d.gguf", "i2_s")
    # a corrupt source gives the loader's own error
    bad = tmp_path / "bad"
    shutil.copytree(src, bad)
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptModelError) as loading:
        load_model(bad)
    with pytest.raises(CorruptModelError) as converting:
        convert_model(bad, tmp_path / "bad.gguf", "i2_s")
    assert str(converting.value) == str(loading.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad", "exists.gguf"]


def test_cli_convert(sources: dict[str, Path], tmp_path: Path) -> None:
    src = sources["bitnet-online"]
    dst = tmp_path / "m.gguf"
    ok = run_cli("convert", str(src), str(dst), "--to", "tq1_0")
    assert ok.returncode == 0, ok.stderr
    assert "sha256" in ok.stdout and dst.is_file()
    assert load_model(dst).info.source_format == "gguf"
    assert_one_line_error(run_cli("convert", str(src), str(dst), "--to", "tq1_0"), "already exists")
    assert_one_line_error(run_cli("convert", str(src), str(tmp_path / "y"), "--to", "q4_k"), "invalid choice")
    assert_one_line_error(
        run_cli("convert", str(tmp_path / "nope"), str(tmp_path / "z"), "--to", "i2_s"), "no such file"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]


@pytest.mark.parametrize("which", ["byte_level_dir", "spm_dir"])
def test_tokenizer_metadata_round_trip(which: str, request: pytest.FixtureRequest, corpus: list[str]) -> None:
    from bitnet_actor.engine.tokenizer import Tokenizer, gguf_tokenizer_metadata

    root = request.getfixturevalue(which)
    hf = Tokenizer.from_hf_dir(root)
    meta = gguf_tokenizer_metadata(root, hf.vocab_size + 3)
    assert meta["tokenizer.ggml.model"] == ("gpt2" if which == "byte_level_dir" else "llama")
    assert meta["tokenizer.ggml.tokens"][-1] == f"[PAD{hf.vocab_size + 2}]"
    g = Tokenizer.from_gguf_metadata(meta)
    assert (g.bos_token_id, g.eos_token_id, g.add_bos_token) == (hf.bos_token_id, hf.eos_token_id, hf.add_bos_token)
    assert g.chat_templates == hf.chat_templates
    for text in corpus:
        assert g.encode(text) == hf.encode(text), text
        assert g.decode(hf.encode(text)) == hf.decode(hf.encode(text))
