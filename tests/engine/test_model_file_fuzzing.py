"""Fuzzed model files: truncated, bit-flipped and header-lying safetensors, GGUF and tokenizer files.

Every load runs in :class:`~tests.engine.model_fuzz.LoadWorker`'s child process under an address-space
limit (``AS_HEADROOM`` past its imports) with a hang bound; it must load or raise the project's error
(``ModelLoadError`` from ``load_model``, ``TokenizerError`` from the tokenizer loader) naming the file (and
the tensor, for a lie about one), and grow peak RSS by at most ``RSS_BOUND``.  Mutations are seeded: a
failure names its kind and seed.  ``ops/fuzz_model_files.py`` runs many more.
"""

from __future__ import annotations

import json
import shutil
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

from tests.engine import model_fuzz as mf

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

pytest.importorskip("tokenizers", reason="the tokenizers package is not installed")

CASES_PER_SEED = 12


class Fuzz:
    """The seeds and a worker; ``case`` writes a mutated copy and checks its load."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.hf, self.gguf = mf.build_seeds(root / "seeds")
        self.worker = mf.LoadWorker()
        self.n = 0

    def seed_bytes(self, name: str) -> bytes:
        return (self.gguf if name == "model.gguf" else self.hf / name).read_bytes()

    def write(self, name: str, data: bytes) -> tuple[Path, Path]:
        """``(what to load, the mutated file)``."""
        self.n += 1
        if name == "model.gguf":
            f = self.root / f"case{self.n}.gguf"
            f.write_bytes(data)
            return f, f
        d = self.root / f"case{self.n}"
        shutil.copytree(self.hf, d)
        (d / name).write_bytes(data)
        return d, d / name

    def check(
        self,
        label: str,
        name: str,
        data: bytes,
        *,
        op: str = "model",
        tensor: str | None = None,
        must_fail: bool = False,
    ) -> mf.Outcome:
        target, file = self.write(name, data)
        out = self.worker.load(target, op)
        allowed = "TokenizerError" if op == "tokenizer" else "ModelLoadError"
        where = f"{label} ({file})"
        assert out.error not in ("Hang", "Crash"), f"{where}: {out.message}"
        if out.error is None:
            assert not must_fail, f"{where}: loaded"
        else:
            assert out.is_a(allowed), f"{where}: {out.error} escaped:\n{out.traceback}"
            assert str(file) in out.message, f"{where}: the message does not name the file: {out.message}"
            if tensor is not None:
                assert tensor in out.message, f"{where}: the message does not name tensor {tensor}: {out.message}"
        assert out.rss_growth <= mf.RSS_BOUND, f"{where}: peak RSS grew by {out.rss_growth} bytes"
        if out.error is None or must_fail:
            shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink()
        return out


@pytest.fixture(scope="module")
def fuzz(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzz]:
    f = Fuzz(tmp_path_factory.mktemp("fuzz"))
    yield f
    f.worker.close()


def test_seeds_load(fuzz: Fuzz) -> None:
    for target in (fuzz.hf, fuzz.gguf):
        out = fuzz.worker.load(target)
        assert out.error is None, out.traceback
    assert fuzz.worker.load(fuzz.hf, "tokenizer").error is None


RANDOM_KINDS: dict[str, tuple[str, str, Callable[[bytes, np.random.Generator], bytes]]] = {
    "st-truncate": ("model.safetensors", "model", mf.truncate),
    "st-flip-header": ("model.safetensors", "model", lambda d, r: mf.bit_flips(d, r, region=4096)),
    "st-flip": ("model.safetensors", "model", mf.bit_flips),
    "gguf-truncate": ("model.gguf", "model", mf.truncate),
    "gguf-flip-header": ("model.gguf", "model", lambda d, r: mf.bit_flips(d, r, region=12288)),
    "gguf-flip": ("model.gguf", "model", mf.bit_flips),
    "tokenizer-truncate": ("tokenizer.json", "tokenizer", mf.truncate),
    "tokenizer-flip": ("tokenizer.json", "tokenizer", mf.bit_flips),
    "tokenizer-flip-model": ("tokenizer.json", "model", mf.bit_flips),
}


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("kind", RANDOM_KINDS)
def test_random_mutations(fuzz: Fuzz, kind: str, seed: int) -> None:
    name, op, mutate = RANDOM_KINDS[kind]
    rng = np.random.default_rng([seed, list(RANDOM_KINDS).index(kind)])
    data = fuzz.seed_bytes(name)
    for i in range(CASES_PER_SEED):
        fuzz.check(f"{kind} seed {seed} case {i}", name, mutate(data, rng), op=op)


def _st_lies(data: bytes) -> Iterator[tuple[str, bytes, str | None]]:
    header, body = mf.safetensors_header(data)
    name = "model.layers.0.mlp.up_proj.weight"
    info = header[name]
    b, e = info["data_offsets"]
    size = 8 + len(data)
    yield "header length past the file", mf.with_header(header, body, hlen=size * 4), None
    yield "header length huge", mf.with_header(header, body, hlen=2**63 + 5), None
    yield "header length zero", mf.with_header(header, body, hlen=0), None
    tensor_lies: list[tuple[str, dict[str, Any]]] = [
        ("offsets past the end", {"data_offsets": [b + size, e + size]}),
        ("offsets huge", {"data_offsets": [2**64, 2**64 + e - b]}),
        ("offsets reversed", {"data_offsets": [e, b]}),
        ("offsets negative", {"data_offsets": [-4, e - b - 4]}),
        ("offsets of three", {"data_offsets": [b, e, e]}),
        ("offsets as strings", {"data_offsets": [str(b), str(e)]}),
        ("offsets overlapping the next", {"data_offsets": [b + 8, e + 8]}),
        ("dtype unknown", {"dtype": "Q4"}),
        ("dtype not a string", {"dtype": 7}),
        ("dtype inconsistent with bytes", {"dtype": "F32"}),
        ("shape product overflow", {"shape": [2**62, 4]}),
        ("shape product wraps to zero", {"shape": [2**62, 4, 0]}),
        ("shape past int64 beside zero", {"shape": [0, 2**70]}),
        ("shape negative", {"shape": [-1, -64]}),
        ("shape float", {"shape": [64.0, 128]}),
        ("shape not a list", {"shape": "64x128"}),
        ("entry not an object", {"__replace__": [1, 2]}),
    ]
    for label, patch in tensor_lies:
        h = json.loads(json.dumps(header))
        h[name] = patch.get("__replace__", {**info, **patch})
        yield label, mf.with_header(h, body), name
    yield "header a list", mf.with_header([1, 2], body), None  # type: ignore[arg-type]
    yield "header not UTF-8", data[:8] + b"\xff\xfe" + data[10:], None


def test_safetensors_header_lies(fuzz: Fuzz) -> None:
    for label, data, tensor in _st_lies(fuzz.seed_bytes("model.safetensors")):
        fuzz.check(f"safetensors: {label}", "model.safetensors", data, tensor=tensor, must_fail=True)


GGUF_KINDS = ("version", "n_tensors", "n_kv", "key_len", "vtype", "str_len", "arr_type", "arr_len", "name_len",
              "n_dims", "dim", "ggml_type", "offset")  # fmt: skip


@pytest.mark.parametrize("kind", GGUF_KINDS)
def test_gguf_header_lies(fuzz: Fuzz, kind: str) -> None:
    """Each count, length, type, dim and offset set to boundary values: the first field of the kind to all
    of them, four more (seeded) to six."""
    data = fuzz.seed_bytes("model.gguf")
    fields = [f for f in mf.gguf_fields(data) if f.kind == kind]
    rng = np.random.default_rng(GGUF_KINDS.index(kind))
    picks = [fields[0]] + [fields[int(i)] for i in rng.choice(len(fields), min(4, len(fields)), replace=False)]
    for j, field in enumerate(picks):
        values = mf.INTERESTING if j == 0 else rng.choice(mf.INTERESTING, 6, replace=False)
        for v in values:
            tensor = field.tensor if kind in ("n_dims", "dim", "ggml_type", "offset") else None
            out = fuzz.check(f"gguf {kind}@{field.pos} = {v}", "model.gguf", mf.gguf_lie(data, field, int(v)))
            if tensor is not None and out.error is not None and out.is_a("CorruptModelError"):
                # a lie about a tensor's place or type is reported with the tensor's name
                assert tensor in out.message or "tensor" in out.message, out.message


def _tokenizer_lies() -> Iterator[tuple[str, str, Any]]:
    spec = mf.tokenizer_json()

    def edit(path: tuple[str, ...], value: Any) -> dict[str, Any]:
        s: dict[str, Any] = json.loads(json.dumps(spec))
        node = s
        for k in path[:-1]:
            node = node[k]
        node[path[-1]] = value
        return s

    vocab = spec["model"]["vocab"]
    yield "tokenizer.json", "truncated JSON", json.dumps(spec)[:2000]
    yield "tokenizer.json", "top level a list", [spec]
    yield "tokenizer.json", "model a string", edit(("model",), "BPE")
    yield "tokenizer.json", "vocab a list", edit(("model", "vocab"), list(vocab))
    yield "tokenizer.json", "vocab ids strings", edit(("model", "vocab"), {k: str(v) for k, v in vocab.items()})
    yield "tokenizer.json", "vocab id huge", edit(("model", "vocab"), {**vocab, "zz": 2**40})
    yield "tokenizer.json", "vocab id negative", edit(("model", "vocab"), {**vocab, "zz": -3})
    yield "tokenizer.json", "merges an int", edit(("model", "merges"), 7)
    yield "tokenizer.json", "merges of unknown tokens", edit(("model", "merges"), ["qq zz", "e t"])
    yield "tokenizer.json", "added token id huge", edit(("added_tokens",), [{**spec["added_tokens"][0], "id": 2**40}])
    yield "tokenizer.json", "added tokens not a list", edit(("added_tokens",), {"a": 1})
    yield "tokenizer.json", "pre_tokenizer unknown", edit(("pre_tokenizer",), {"type": "Nope"})
    yield "tokenizer.json", "not UTF-8", "\udcff"
    yield "tokenizer_config.json", "chat_template an int", {"chat_template": 3}
    yield "tokenizer_config.json", "chat_template an object", {"chat_template": {"a": "b"}}
    yield "tokenizer_config.json", "chat_template list of junk", {"chat_template": [1, {"name": 2}]}
    yield "tokenizer_config.json", "eos_token a number", {"eos_token": 5}
    yield "tokenizer_config.json", "added_tokens_decoder a list", {"added_tokens_decoder": [1]}
    yield "tokenizer_config.json", "a list", [1]


def test_tokenizer_file_lies(fuzz: Fuzz) -> None:
    for name, label, value in _tokenizer_lies():
        data = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else json.dumps(value).encode()
        if label == "truncated JSON":
            data = value.encode()
        for op in ("tokenizer", "model"):
            fuzz.check(f"{name}: {label} ({op})", name, data, op=op, must_fail=True)


@pytest.mark.parametrize("context", [2**24 + 1, 2**31, 2**62])
def test_a_lying_context_length_allocates_nothing(fuzz: Fuzz, context: int) -> None:
    # the RoPE tables are made at load, context_length x head_dim: an absurd claim must not allocate them
    config = json.loads(fuzz.seed_bytes("config.json"))
    config["max_position_embeddings"] = context
    out = fuzz.check(f"context {context}", "config.json", json.dumps(config).encode(), must_fail=True)
    assert "context_length" in out.message
