"""Inspection in a worker process: facts that match the engine's own numbers, the loader's words for a model it
refuses, and the worker's memory limit and deadline stopping a hostile model cleanly."""

from __future__ import annotations

import hashlib
import json
import shutil
from typing import TYPE_CHECKING

import pytest

from bitnet_actor.engine import ModelLoadError, load_model
from bitnet_actor.engine.loader import list_tensors
from bitnet_actor.services.errors import ValidationError
from bitnet_actor.services.models.archive import ArchiveError, remove_unpacked, unpack_model_archive
from bitnet_actor.services.models.inspect import (
    InspectLimits,
    InvalidModelError,
    ModelFacts,
    inspect_model_files,
    inspect_upload,
)
from tests.services.models.conftest import CHAT_TEMPLATE, make_archive, model_files

if TYPE_CHECKING:
    from pathlib import Path


def check_against_the_engine(facts: ModelFacts, root: Path) -> None:
    model = load_model(root)
    info, cfg = model.info, model.config
    assert facts.format == info.source_format
    assert facts.architecture == info.architecture
    assert facts.family == info.family
    assert facts.parameter_count == info.parameter_count
    assert facts.nbytes == info.nbytes
    assert facts.context_length == info.context_length
    assert facts.loaded_formats == info.formats
    tensors = list_tensors(root)
    assert facts.tensor_count == len(tensors)
    assert sum(c for _, c, _ in facts.stored_formats) == len(tensors)
    assert sum(b for _, _, b in facts.stored_formats) == sum(t[3] for t in tensors)
    assert facts.shapes.hidden_size == cfg.hidden_size
    assert facts.shapes.layers == cfg.num_layers
    assert facts.shapes.vocab_size == cfg.vocab_size
    if model.has_tokenizer:
        assert facts.tokenizer_vocab_size == model.tokenizer.vocab_size
    files = [root] if root.is_file() else sorted(p for p in root.iterdir() if p.is_file())
    assert [(f.name, f.size, f.sha256) for f in facts.files] == [
        (p.name, p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest()) for p in files
    ]
    assert facts.file_bytes == sum(p.stat().st_size for p in files)


async def test_a_model_directory(model_dir: Path) -> None:
    facts = await inspect_model_files(model_dir)
    check_against_the_engine(facts, model_dir)
    assert facts.format == "safetensors"
    assert facts.architecture == "BitNetForCausalLM"
    assert facts.tokenizer_kind == "WordLevel"
    assert facts.tokenizer_vocab_size == 42
    assert facts.chat_template is True
    assert {t for t, _, _ in facts.stored_formats} == {"U8", "F32"}  # packed ternary weights, float rest
    assert ModelFacts.from_json(json.loads(json.dumps(facts.to_json()))) == facts


@pytest.mark.parametrize("kind", ["tar", "tar.gz", "zip"])
@pytest.mark.parametrize("top", ["", "tiny-model/"])
async def test_an_archive_unpacks_and_inspects(model_dir: Path, tmp_path: Path, kind: str, top: str) -> None:
    up = make_archive(tmp_path / "upload", kind, [(top + n, d) for n, d in model_files(model_dir)])
    out = unpack_model_archive(up, temp_root=tmp_path)
    try:
        facts = await inspect_model_files(out)
    finally:
        remove_unpacked(out)
    assert facts == await inspect_model_files(model_dir)


async def test_a_gguf_file(tmp_path: Path) -> None:
    pytest.importorskip("gguf", reason="the gguf package (test-only dependency) is not installed")
    from tests.engine.conftest import GGUF_SIZES
    from tests.engine.gguf_models import gguf_tensors, write_with_gguf_package
    from tests.engine.hf_models import make_checkpoint

    ckpt = make_checkpoint(tmp_path / "ckpt", sizes={**GGUF_SIZES, "num_hidden_layers": 1})
    meta, tensors = gguf_tensors(ckpt, "TQ2_0", "F16")
    path = write_with_gguf_package(tmp_path / "m.gguf", meta, tensors)
    facts = await inspect_model_files(path)
    check_against_the_engine(facts, path)
    assert facts.format == "gguf"
    assert {t for t, _, _ in facts.stored_formats} >= {"TQ2_0", "F16"}
    assert facts.tokenizer_kind is None
    assert facts.chat_template is False
    assert [f.name for f in facts.files] == ["m.gguf"]


def copy_model(model_dir: Path, tmp_path: Path) -> Path:
    return shutil.copytree(model_dir, tmp_path / "model")


def engine_message(root: Path) -> str:
    """What the loader says of ``root``, with ``root`` made relative as the worker reports it."""
    with pytest.raises(ModelLoadError) as info:
        load_model(root)
    return str(info.value).replace(str(root) + "/", "").replace(str(root), "the model directory")


async def refused(root: Path, reason: str, **limits: float) -> InvalidModelError:
    with pytest.raises(InvalidModelError) as info:
        await inspect_model_files(root, limits=InspectLimits(**limits))  # type: ignore[arg-type]
    err = info.value
    assert isinstance(err, ValidationError)
    assert err.code == "invalid_model"
    assert err.reason == reason
    assert str(root) not in str(err)  # no server paths in what a customer reads
    return err


async def test_a_corrupt_tensor_gives_the_loaders_words(model_dir: Path, tmp_path: Path) -> None:
    root = copy_model(model_dir, tmp_path)
    st = root / "model.safetensors"
    data = st.read_bytes()
    st.write_bytes(data[: len(data) - 1000])  # the last tensor's bytes cut short
    err = await refused(root, "load")
    assert str(err) == engine_message(root)
    assert str(err).startswith("model.safetensors: ")


async def test_a_tensor_of_the_wrong_shape_gives_the_loaders_words(model_dir: Path, tmp_path: Path) -> None:
    root = copy_model(model_dir, tmp_path)
    cfg = json.loads((root / "config.json").read_text())
    cfg["hidden_size"] = 64
    (root / "config.json").write_text(json.dumps(cfg))
    err = await refused(root, "load")
    assert str(err) == engine_message(root)


async def test_a_tokenizer_the_engine_cannot_load(model_dir: Path, tmp_path: Path) -> None:
    root = copy_model(model_dir, tmp_path)
    (root / "tokenizer.json").write_text('{"model": {"type": "NoSuchModel"}}')
    err = await refused(root, "load")
    assert str(err) == engine_message(root)
    assert "cannot load the tokenizer" in str(err) or "tokenizer.json" in str(err)


async def test_a_broken_chat_template_file(model_dir: Path, tmp_path: Path) -> None:
    root = copy_model(model_dir, tmp_path)
    assert (root / "chat_template.jinja").read_text() == CHAT_TEMPLATE
    (root / "config.json").write_text("{not json")
    err = await refused(root, "load")
    assert str(err) == engine_message(root)
    assert str(err).startswith("config.json: not valid JSON")


async def test_a_huge_claimed_context_is_refused_before_allocating(model_dir: Path, tmp_path: Path) -> None:
    # RoPE tables of 2**34 positions would be hundreds of GiB: the engine refuses the claim first (it used to
    # reach the worker's memory limit; a trigger for that limit is to be found again)
    root = copy_model(model_dir, tmp_path)
    cfg = json.loads((root / "config.json").read_text())
    cfg["max_position_embeddings"] = 1 << 34
    (root / "config.json").write_text(json.dumps(cfg))
    err = await refused(root, "load")
    assert "context_length" in str(err)


async def test_the_deadline_kills_the_worker(model_dir: Path) -> None:
    err = await refused(model_dir, "timeout", timeout_s=0.05)
    assert str(err) == "the model took longer than 0.05 s to inspect and was stopped"


async def test_nothing_at_the_path(tmp_path: Path) -> None:
    err = await refused(tmp_path / "missing", "load")
    assert "no such file or directory" in str(err)


@pytest.mark.parametrize("kind", ["tar.gz", "zip"])
async def test_an_upload_inspects_and_is_removed(model_dir: Path, tmp_path: Path, kind: str) -> None:
    temp_root = tmp_path / "tmp"
    temp_root.mkdir()
    up = make_archive(tmp_path / "upload", kind, [("m/" + n, d) for n, d in model_files(model_dir)])
    done = await inspect_upload(up, temp_root=temp_root)
    assert done.unpacked
    assert done.path.parent.parent == temp_root
    assert done.facts == await inspect_model_files(model_dir)
    done.remove()
    assert list(temp_root.iterdir()) == []


async def test_a_refused_upload_leaves_no_temporary_files(model_dir: Path, tmp_path: Path) -> None:
    temp_root = tmp_path / "tmp"
    temp_root.mkdir()
    files = [(n, b"{oops" if n == "config.json" else d) for n, d in model_files(model_dir)]
    with pytest.raises(InvalidModelError, match=r"^config\.json: not valid JSON"):
        await inspect_upload(make_archive(tmp_path / "bad.tar", "tar", files), temp_root=temp_root)
    assert list(temp_root.iterdir()) == []
    with pytest.raises(InvalidModelError, match="took longer than"):
        await inspect_upload(
            make_archive(tmp_path / "ok.zip", "zip", model_files(model_dir)),
            temp_root=temp_root,
            limits=InspectLimits(timeout_s=0.05),
        )
    assert list(temp_root.iterdir()) == []
    with pytest.raises(ArchiveError, match="unexpected files"):
        await inspect_upload(make_archive(tmp_path / "x.zip", "zip", [*files, ("x.exe", b"")]), temp_root=temp_root)
    assert list(temp_root.iterdir()) == []


async def test_a_gguf_upload_is_inspected_in_place(tmp_path: Path) -> None:
    (tmp_path / "m.gguf").write_bytes(b"GGUF" + bytes(60))
    with pytest.raises(InvalidModelError) as info:
        await inspect_upload(tmp_path / "m.gguf", temp_root=tmp_path)
    assert info.value.reason == "load"
    assert str(tmp_path) not in str(info.value)
    assert (tmp_path / "m.gguf").exists()
