"""The engine with a real tokenizer (helper module :mod:`bitnet_actor.engine.tokenizer`) found next to the weights:
text deltas from the incremental decoder, stop strings on real text, GGUF tokenizer metadata."""

from __future__ import annotations

import json
import shutil
from typing import TYPE_CHECKING

import numpy as np
import pytest

from bitnet_actor.engine import SamplingParams, load_model

if TYPE_CHECKING:
    from pathlib import Path

tokenizers = pytest.importorskip("tokenizers", reason="the tokenizers package is not installed")
pytest.importorskip("bitnet_actor.engine.tokenizer", reason="the tokenizer module is not there yet")


def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def _write_tokenizer(root: Path) -> None:
    """A byte-level BPE with 256 byte tokens + 44 merges + one end-of-text token (301 ids)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    b2u = _bytes_to_unicode()
    vocab = {b2u[b]: b for b in range(256)}
    merges = []
    letters = "etaoinshrdlucmfwypvbgkjqxz"
    for a in letters[:22]:
        for b in "e ":
            if len(vocab) >= 300:
                break
            ua, ub = a, b2u[ord(b)]
            if ua + ub not in vocab:
                vocab[ua + ub] = len(vocab)
                merges.append((ua, ub))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|end|>"])
    assert tok.get_vocab_size() == 301
    tok.save(str(root / "tokenizer.json"))
    (root / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|end|>"}))


@pytest.fixture(scope="module")
def tok_dir(checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tok") / "m"
    shutil.copytree(checkpoints["bitnet-auto-offline"], root)
    _write_tokenizer(root)
    return root


def test_text_streams_and_matches_decode(tok_dir: Path) -> None:
    model = load_model(tok_dir)
    tok = model.tokenizer
    ids = tok.encode("the rain in spain", add_special_tokens=False)
    assert 300 in model.eos_token_ids
    seq = model.new_sequence(ids, SamplingParams(max_tokens=24, temperature=0, ignore_eos=True))
    streamed = ""
    while not seq.finished:
        for out in model.step([seq]):
            streamed += out.text
    assert streamed == seq.text == tok.decode(seq.output_ids)


def test_stop_string_on_real_text(tok_dir: Path) -> None:
    model = load_model(tok_dir)
    ids = model.tokenizer.encode("the rain in spain", add_special_tokens=False)
    full = model.tokenizer.decode(list(model.generate(ids, max_tokens=24, temperature=0, ignore_eos=True)))
    visible = [i for i in range(2, len(full) - 2) if full[i : i + 2].strip() and full[i : i + 2].isprintable()]
    if not visible:
        pytest.skip("the random model's output has no printable pair to stop on")
    i = visible[len(visible) // 2]
    stop = full[i : i + 2]
    seq = model.new_sequence(ids, SamplingParams(max_tokens=24, temperature=0, ignore_eos=True, stop=(stop,)))
    streamed = ""
    while not seq.finished:
        for out in model.step([seq]):
            streamed += out.text
    assert seq.finish_reason == "stop"
    assert streamed == full[: full.find(stop)]


def test_gguf_carries_the_tokenizer(tok_dir: Path, tmp_path: Path) -> None:
    from bitnet_actor.engine.gguf_io import write_gguf

    data = json.loads((tok_dir / "tokenizer.json").read_text())
    vocab = data["model"]["vocab"]
    tokens = [""] * 301
    for t, i in vocab.items():
        tokens[i] = t
    tokens[300] = "<|end|>"
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    # the tiny checkpoint's K is not a multiple of 256 (no TQ types): layers are written as F32 codes * scale
    from bitnet_actor.engine.config import ModelConfig
    from bitnet_actor.engine.tensors import SafetensorsFile, to_float32
    from tests.engine.gguf_models import _HF_TO_GGUF

    cfg = ModelConfig.from_hf(json.loads((tok_dir / "config.json").read_text()), "config.json")
    st = SafetensorsFile(tok_dir / "model.safetensors")
    tens = {}
    from kernels_cython import reference as kref

    for name, t in st.tensors.items():
        if name.endswith("weight_scale"):
            continue
        if name == "model.embed_tokens.weight":
            tens["token_embd.weight"] = ("F32", t.shape, to_float32(t))
        elif name == "model.norm.weight":
            tens["output_norm.weight"] = ("F32", t.shape, to_float32(t))
        else:
            parts = name.split(".")
            gname = f"blk.{parts[2]}.{_HF_TO_GGUF['.'.join(parts[3:-1])]}.weight"
            if t.dtype == "U8":
                ws = float(to_float32(st.tensors[name[:-7] + ".weight_scale"])[0])
                w = kref.from_hf_packed(np.ascontiguousarray(t.data), ws, t.shape[0] * 4)
                tens[gname] = ("F32", w.shape, (w.to_codes().astype(np.float32) * np.float32(ws)))
            else:
                tens[gname] = ("F32", t.shape, to_float32(t))
    meta = {
        **cfg.to_gguf_metadata(),
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "default",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": [1] * 300 + [3],
        "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.eos_token_id": 300,
    }
    path = tmp_path / "tok.gguf"
    write_gguf(path, meta, tens)
    g = load_model(path)
    hf = load_model(tok_dir)
    text = "the rain in spain"
    assert g.tokenizer.encode(text, add_special_tokens=False) == hf.tokenizer.encode(text, add_special_tokens=False)
    assert 300 in g.eos_token_ids
    ids = hf.tokenizer.encode(text, add_special_tokens=False)
    assert g.info.source_format == "gguf"
    # F32 layers holding exactly codes * scale are read back as those codes with that scale: same model
    np.testing.assert_array_equal(g.logits(ids), hf.logits(ids))
