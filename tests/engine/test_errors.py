"""Truncated, corrupt, inconsistent and unsupported files: one clear error naming the file and tensor."""

from __future__ import annotations

import json
import shutil
import struct
from typing import TYPE_CHECKING

import numpy as np
import pytest

from bitnet_actor.engine import (
    ContextLengthError,
    CorruptModelError,
    ModelLoadError,
    SamplingParams,
    UnsupportedModelError,
    load_model,
)
from bitnet_actor.engine.gguf_io import write_gguf
from bitnet_actor.engine.tensors import SafetensorsFile
from kernels_cython.reference import TernaryMatrix, to_tq2_0

if TYPE_CHECKING:
    from pathlib import Path


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _rewrite(ckpt: Path, edit: dict[str, np.ndarray | None]) -> None:
    """Rewrite model.safetensors with some tensors replaced (None: dropped)."""
    from safetensors.numpy import save_file

    st = SafetensorsFile(ckpt / "model.safetensors")
    tensors = {}
    for name, t in st.tensors.items():
        if name in edit:
            if edit[name] is not None:
                tensors[name] = edit[name]
            continue
        tensors[name] = np.array(t.data)
    del st
    save_file(tensors, str(ckpt / "model.safetensors"))


def test_truncated_safetensors(tmp_path: Path, bitnet_dir: Path) -> None:
    ckpt = _copy(bitnet_dir, tmp_path / "m")
    f = ckpt / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) - 100])
    with pytest.raises(CorruptModelError, match=r"model\.safetensors: tensor '.*'.*truncated"):
        load_model(ckpt)


def test_truncated_header(tmp_path: Path, bitnet_dir: Path) -> None:
    ckpt = _copy(bitnet_dir, tmp_path / "m")
    f = ckpt / "model.safetensors"
    f.write_bytes(f.read_bytes()[:50])
    with pytest.raises(CorruptModelError, match=r"model\.safetensors: safetensors header length"):
        load_model(ckpt)


def test_missing_tensor(tmp_path: Path, bitnet_dir: Path) -> None:
    ckpt = _copy(bitnet_dir, tmp_path / "m")
    _rewrite(ckpt, {"model.layers.1.mlp.up_proj.weight": None})
    with pytest.raises(CorruptModelError, match=r"'model\.layers\.1\.mlp\.up_proj\.weight' is missing"):
        load_model(ckpt)


def test_wrong_shape(tmp_path: Path, bitnet_dir: Path) -> None:
    ckpt = _copy(bitnet_dir, tmp_path / "m")
    _rewrite(ckpt, {"model.layers.0.input_layernorm.weight": np.ones(95, dtype=np.float32)})
    with pytest.raises(
        CorruptModelError, match=r"model\.safetensors: tensor 'model\.layers\.0\.input_layernorm\.weight'.*\(96,\)"
    ):
        load_model(ckpt)


def test_wrong_packed_shape(tmp_path: Path, bitnet_dir: Path) -> None:
    ckpt = _copy(bitnet_dir, tmp_path / "m")
    _rewrite(ckpt, {"model.layers.0.self_attn.o_proj.weight": np.zeros((24, 95), dtype=np.uint8)})
    with pytest.raises(CorruptModelError, match=r"tensor 'model\.layers\.0\.self_attn\.o_proj\.weight'.*\(24, 96\)"):
        load_model(ckpt)


def test_wrong_dtype(tmp_path: Path, bitnet_dir: Path) -> None:
    ckpt = _copy(bitnet_dir, tmp_path / "m")
    _rewrite(ckpt, {"model.layers.0.mlp.gate_proj.weight": np.zeros((50, 96), dtype=np.int32)})
    with pytest.raises(CorruptModelError, match=r"tensor 'model\.layers\.0\.mlp\.gate_proj\.weight'.*dtype I32"):
        load_model(ckpt)


def test_header_lies_about_offsets(tmp_path: Path, bitnet_dir: Path) -> None:
    ckpt = _copy(bitnet_dir, tmp_path / "m")
    f = ckpt / "model.safetensors"
    raw = f.read_bytes()
    hlen = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + hlen])
    name = "model.norm.weight"
    b, e = header[name]["data_offsets"]
    header[name]["data_offsets"] = [b + 10**6, e + 10**6]
    new = json.dumps(header).encode()
    new += b" " * (-len(new) % 8)
    f.write_bytes(len(new).to_bytes(8, "little") + new + raw[8 + hlen :])
    with pytest.raises(CorruptModelError, match=r"tensor 'model\.norm\.weight'"):
        load_model(ckpt)


def test_unsupported_architecture(tmp_path: Path, bitnet_dir: Path) -> None:
    ckpt = _copy(bitnet_dir, tmp_path / "m")
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["architectures"] = ["GPT2LMHeadModel"]
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(
        UnsupportedModelError, match=r"'GPT2LMHeadModel' is not supported \(supported: BitNetForCausalLM"
    ):
        load_model(ckpt)


def test_unsupported_quant_method(tmp_path: Path, bitnet_dir: Path) -> None:
    ckpt = _copy(bitnet_dir, tmp_path / "m")
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["architectures"] = ["LlamaForCausalLM"]
    cfg["quantization_config"] = {"quant_method": "gptq"}
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedModelError, match=r"quantization method 'gptq' of LlamaForCausalLM"):
        load_model(ckpt)
    del cfg["quantization_config"]
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedModelError, match=r"LlamaForCausalLM without a bitnet quantization_config"):
        load_model(ckpt)


def test_nothing_there(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no such file"):
        load_model(tmp_path / "nope")
    (tmp_path / "x.bin").write_bytes(b"abcd")
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        load_model(tmp_path / "x.bin")


def _small_gguf(path: Path) -> Path:
    meta = {
        "general.architecture": "bitnet-b1.58",
        "bitnet-b1.58.embedding_length": 256,
        "bitnet-b1.58.block_count": 1,
        "bitnet-b1.58.feed_forward_length": 256,
        "bitnet-b1.58.attention.head_count": 4,
    }
    tensors = {
        "token_embd.weight": ("F32", (10, 256), np.ones((10, 256), np.float32)),
        "blk.0.attn_q.weight": (
            "TQ2_0",
            (256, 256),
            to_tq2_0(TernaryMatrix.from_codes(np.zeros((256, 256), np.int8), 0.5)),
        ),
    }
    write_gguf(path, meta, tensors)
    return path


def test_gguf_offsets_past_eof(tmp_path: Path) -> None:
    f = _small_gguf(tmp_path / "m.gguf")
    f.write_bytes(f.read_bytes()[:-1000])
    with pytest.raises(CorruptModelError, match=r"m\.gguf: tensor 'blk\.0\.attn_q\.weight'.*past the end"):
        load_model(f)


def test_gguf_unknown_type(tmp_path: Path) -> None:
    f = _small_gguf(tmp_path / "m.gguf")
    raw = bytearray(f.read_bytes())
    name = b"blk.0.attn_q.weight"
    at = raw.find(name) + len(name) + 4 + 2 * 8  # n_dims, two dims, then the type
    assert struct.unpack_from("<I", raw, at)[0] == 35
    struct.pack_into("<I", raw, at, 99)
    f.write_bytes(bytes(raw))
    with pytest.raises(
        UnsupportedModelError, match=r"m\.gguf: tensor 'blk\.0\.attn_q\.weight': GGUF tensor type unknown type 99"
    ):
        load_model(f)


def test_gguf_missing_tensor(tmp_path: Path) -> None:
    f = _small_gguf(tmp_path / "m.gguf")
    with pytest.raises(CorruptModelError, match=r"m\.gguf: tensor 'blk\.0\.attn_k\.weight' is missing"):
        load_model(f)


def test_gguf_unsupported_arch_and_bad_magic(tmp_path: Path) -> None:
    f = tmp_path / "g.gguf"
    write_gguf(f, {"general.architecture": "gpt2"}, {"token_embd.weight": ("F32", (2, 4), np.ones((2, 4), np.float32))})
    with pytest.raises(
        UnsupportedModelError, match=r"GGUF architecture 'gpt2' is not supported \(supported: bitnet-b1.58"
    ):
        load_model(f)
    f.write_bytes(b"GGUF" + b"\x03\x00")
    with pytest.raises(CorruptModelError, match="truncated GGUF header"):
        load_model(f)


def test_context_bound(bitnet_dir: Path) -> None:
    model = load_model(bitnet_dir)
    with pytest.raises(ContextLengthError, match="exceeds the context length of 160"):
        model.new_sequence(list(range(100)), SamplingParams(max_tokens=61))
    with pytest.raises(ValueError, match="exceeds the context length"):
        model.new_sequence(list(range(100)), SamplingParams(max_tokens=61))
    seq = model.new_sequence(list(range(100)), SamplingParams(max_tokens=60, temperature=0))
    assert seq.capacity == 160
    seq.release()
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 301\)"):
        model.new_sequence([5, 301])
    with pytest.raises(ValueError, match="device must be one of cpu, opencl, auto"):
        load_model(bitnet_dir, device="cuda")


def test_sharded_checkpoint(tmp_path: Path, bitnet_dir: Path) -> None:
    from safetensors.numpy import save_file

    ckpt = _copy(bitnet_dir, tmp_path / "m")
    st = SafetensorsFile(ckpt / "model.safetensors")
    names = sorted(st.tensors)
    half = len(names) // 2
    weight_map = {}
    for i, part in enumerate((names[:half], names[half:])):
        fname = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({n: np.array(st.tensors[n].data) for n in part}, str(ckpt / fname))
        weight_map.update(dict.fromkeys(part, fname))
    del st
    (ckpt / "model.safetensors").unlink()
    (ckpt / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    ids = list(range(20))
    np.testing.assert_array_equal(load_model(ckpt).logits(ids), load_model(bitnet_dir).logits(ids))
    (ckpt / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CorruptModelError, match=r"model-00002-of-00002\.safetensors: named by .* but missing"):
        load_model(ckpt)
