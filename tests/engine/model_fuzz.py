"""Model-file fuzzing: tiny valid seeds, seeded mutations, and a bounded worker process that loads them.

Seeds (no torch needed): an HF directory (``config.json``, ``model.safetensors`` with packed ternary weights,
a byte-level BPE ``tokenizer.json`` and ``tokenizer_config.json``) and a GGUF file of the same model (I2_S
ternary layers, F32 norms, F16 embedding, the tokenizer as ``tokenizer.ggml.*`` metadata).

Mutations are functions of ``(seed bytes, numpy Generator)`` so a case reproduces from its kind and seed:
truncation, bit flips, and targeted header lies (:func:`safetensors_lies`, :func:`gguf_fields` locates
every count, length, dim, type and offset of a GGUF header so :func:`gguf_lie` can overwrite one).

:class:`LoadWorker` loads each case in a child process with an address-space limit (``RLIMIT_AS``), resets
the peak-RSS counter before each case (``/proc/self/clear_refs``) and reports the exception type, message,
time and peak-RSS growth; a hang shows up as a timeout and a crash as an exit.
"""

from __future__ import annotations

import json
import os
import select
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bitnet_actor.engine.config import ModelConfig
from bitnet_actor.engine.gguf_io import write_gguf
from kernels_cython import reference as kref

AS_HEADROOM = 2 << 30
"""Address space a worker may map past what it holds after its imports (thread stacks and malloc arenas)."""
RSS_BOUND = 256 << 20
"""Peak-RSS growth allowed for one load of a seed-sized (< 1 MiB) file."""

_HF_CONFIG: dict[str, Any] = {
    "architectures": ["BitNetForCausalLM"],
    "model_type": "bitnet",
    "vocab_size": 300,
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 1,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 64,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": True,
    "quantization_config": {"quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": "offline"},
}


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


def tokenizer_json() -> dict[str, Any]:
    """A byte-level BPE: 256 byte tokens, 40 merges, ``<|end|>`` (297 ids)."""
    b2u = _bytes_to_unicode()
    vocab = {b2u[b]: b for b in range(256)}
    merges = []
    for a in "etaoinshrdlucmfwypvb":
        for b in "e ":
            vocab[a + b2u[ord(b)]] = len(vocab)
            merges.append(f"{a} {b2u[ord(b)]}")
    end = len(vocab)
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": end, "content": "<|end|>", "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": True},
        ],
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": merges},
    }  # fmt: skip


def safetensors_bytes(tensors: dict[str, np.ndarray], header_extra: dict[str, Any] | None = None) -> bytes:
    """A ``.safetensors`` file (our own writer, so tests can also write lies with ``header_extra``)."""
    names = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", np.dtype(np.uint8): "U8"}
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    blobs, offset = [], 0
    for name, arr in tensors.items():
        raw = np.ascontiguousarray(arr).tobytes()
        header[name] = {
            "dtype": names[arr.dtype],
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + len(raw)],
        }
        blobs.append(raw)
        offset += len(raw)
    for name, patch in (header_extra or {}).items():
        header[name] = {**header.get(name, {}), **patch} if isinstance(patch, dict) else patch
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    return struct.pack("<Q", len(head)) + head + b"".join(blobs)


def _seed_weights(rng: np.random.Generator) -> tuple[ModelConfig, dict[str, np.ndarray], dict[str, Any]]:
    """HF tensors (packed) and GGUF tensors (I2_S) of one random model."""
    cfg = ModelConfig.from_hf(_HF_CONFIG, "config.json")
    h, f, v = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    qd, kvd = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    hf: dict[str, np.ndarray] = {"model.embed_tokens.weight": rng.standard_normal((v, h)).astype(np.float16)}
    gg: dict[str, Any] = {"token_embd.weight": ("F16", (v, h), hf["model.embed_tokens.weight"])}
    linears = {"self_attn.q_proj": ("attn_q", qd, h), "self_attn.k_proj": ("attn_k", kvd, h),
               "self_attn.v_proj": ("attn_v", kvd, h), "self_attn.o_proj": ("attn_output", h, qd),
               "mlp.gate_proj": ("ffn_gate", f, h), "mlp.up_proj": ("ffn_up", f, h),
               "mlp.down_proj": ("ffn_down", h, f)}  # fmt: skip
    for mod, (gname, n, k) in linears.items():
        codes = rng.integers(-1, 2, size=(n, k), dtype=np.int8)
        w = kref.TernaryMatrix.from_codes(codes, np.float32(0.0625))
        packed, _ = kref.to_hf_packed(w)
        hf[f"model.layers.0.{mod}.weight"] = packed
        hf[f"model.layers.0.{mod}.weight_scale"] = np.array([0.0625], dtype=np.float32)
        gg[f"blk.0.{gname}.weight"] = ("I2_S", (n, k), kref.to_i2_s(w))
    norms = {"input_layernorm": ("attn_norm", h), "post_attention_layernorm": ("ffn_norm", h),
             "self_attn.attn_sub_norm": ("attn_sub_norm", qd), "mlp.ffn_sub_norm": ("ffn_sub_norm", f)}  # fmt: skip
    for mod, (gname, n) in norms.items():
        x = (1 + 0.1 * rng.standard_normal(n)).astype(np.float32)
        hf[f"model.layers.0.{mod}.weight"] = x
        gg[f"blk.0.{gname}.weight"] = ("F32", (n,), x)
    x = np.ones(h, dtype=np.float32)
    hf["model.norm.weight"] = x
    gg["output_norm.weight"] = ("F32", (h,), x)
    return cfg, hf, gg


def build_seeds(root: Path) -> tuple[Path, Path]:
    """Write the two seeds under ``root``.

    Returns:
        ``(HF directory, GGUF file)``.
    """
    from bitnet_actor.engine.tokenizer import gguf_tokenizer_metadata

    cfg, hf, gg = _seed_weights(np.random.default_rng(0))
    hf_dir = root / "hf"
    hf_dir.mkdir(parents=True)
    (hf_dir / "config.json").write_text(json.dumps(_HF_CONFIG))
    (hf_dir / "model.safetensors").write_bytes(safetensors_bytes(hf))
    (hf_dir / "tokenizer.json").write_text(json.dumps(tokenizer_json()))
    (hf_dir / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|end|>", "chat_template": "{{ 1 }}"}))
    meta = {**cfg.to_gguf_metadata(), **gguf_tokenizer_metadata(hf_dir, cfg.vocab_size)}
    gguf = root / "model.gguf"
    write_gguf(gguf, meta, gg)
    return hf_dir, gguf


# ----------------------------------------------------------------------------------------------------------
# mutations


def truncate(data: bytes, rng: np.random.Generator) -> bytes:
    """Cut the file at a random offset (the header region twice as often)."""
    head = min(len(data), 4096)
    cut = int(rng.integers(0, head)) if rng.random() < 0.66 else int(rng.integers(0, len(data)))
    return data[:cut]


def bit_flips(data: bytes, rng: np.random.Generator, *, region: int | None = None) -> bytes:
    """Flip 1-8 random bits, within the first ``region`` bytes when given."""
    out = bytearray(data)
    end = min(len(out), region) if region else len(out)
    for _ in range(int(rng.integers(1, 9))):
        i = int(rng.integers(0, end))
        out[i] ^= 1 << int(rng.integers(0, 8))
    return bytes(out)


def safetensors_header(data: bytes) -> tuple[dict[str, Any], bytes]:
    """``(header, tensor data)`` of a safetensors file."""
    (hlen,) = struct.unpack_from("<Q", data)
    return json.loads(data[8 : 8 + hlen]), data[8 + hlen :]


def with_header(header: dict[str, Any], body: bytes, *, hlen: int | None = None) -> bytes:
    """A safetensors file from a header object and data (``hlen`` overrides the stored length)."""
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    return struct.pack("<Q", len(head) if hlen is None else hlen) + head + body


@dataclass(frozen=True)
class Field:
    """One integer of a GGUF header: where it is, its struct format, and what it counts or names."""

    kind: str  # one of test_model_file_fuzzing.GGUF_KINDS
    pos: int
    fmt: str
    tensor: str | None = None


def gguf_fields(data: bytes) -> list[Field]:
    """Every count, length, type, dim and offset of a valid GGUF file's header, in file order."""
    fields = [Field("version", 4, "<I"), Field("n_tensors", 8, "<Q"), Field("n_kv", 16, "<Q")]
    n_tensors, n_kv = struct.unpack_from("<QQ", data, 8)
    pos = 24

    def string(kind: str, tensor: str | None = None) -> str:
        nonlocal pos
        (n,) = struct.unpack_from("<Q", data, pos)
        fields.append(Field(kind, pos, "<Q", tensor))
        s = data[pos + 8 : pos + 8 + n].decode()
        pos += 8 + n
        return s

    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
    for _ in range(n_kv):
        string("key_len")
        (vt,) = struct.unpack_from("<I", data, pos)
        fields.append(Field("vtype", pos, "<I"))
        pos += 4
        if vt == 8:
            string("str_len")
        elif vt == 9:
            it, count = struct.unpack_from("<IQ", data, pos)
            fields += [Field("arr_type", pos, "<I"), Field("arr_len", pos + 4, "<Q")]
            pos += 12
            for _ in range(count):
                if it == 8:
                    string("str_len")
                else:
                    pos += sizes[it]
        else:
            pos += sizes[vt]
    for _ in range(n_tensors):
        name = string("name_len")
        (nd,) = struct.unpack_from("<I", data, pos)
        fields.append(Field("n_dims", pos, "<I", name))
        pos += 4
        for _ in range(nd):
            fields.append(Field("dim", pos, "<Q", name))
            pos += 8
        fields += [Field("ggml_type", pos, "<I", name), Field("offset", pos + 4, "<Q", name)]
        pos += 12
    return fields


INTERESTING = (0, 1, 2, 3, 7, 8, 9, 13, 31, 33, 37, 255, 2**16 - 1, 2**31 - 1, 2**31, 2**32 - 1, 2**32,
               2**40, 2**60, 2**62, 2**63 - 1, 2**63, 2**64 - 1)  # fmt: skip


def gguf_lie(data: bytes, field: Field, value: int) -> bytes:
    """``data`` with one header integer overwritten (wrapped to the field's width)."""
    out = bytearray(data)
    width = struct.calcsize(field.fmt)
    struct.pack_into(field.fmt, out, field.pos, value % (1 << (8 * width)))
    return bytes(out)


# ----------------------------------------------------------------------------------------------------------
# the worker

_WORKER = r"""
import json, os, resource, sys, time, traceback
os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")
from pathlib import Path
from bitnet_actor.engine import load_model
from bitnet_actor.engine.tokenizer import Tokenizer
def vm(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
headroom = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (vm("VmSize") + headroom, resource.RLIM_INFINITY))
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    case = json.loads(line)
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    base = vm("VmRSS")
    t0 = time.perf_counter()
    out = {"type": None, "module": None, "msg": ""}
    try:
        if case["op"] == "model":
            load_model(Path(case["path"]))
        else:
            Tokenizer.from_hf_dir(Path(case["path"]))
    except BaseException as exc:
        out = {"type": type(exc).__name__, "module": type(exc).__module__, "msg": str(exc)[:2000],
               "mro": [c.__name__ for c in type(exc).__mro__],
               "tb": "".join(traceback.format_exception(exc))[-3000:]}
    out["seconds"] = time.perf_counter() - t0
    out["rss_growth"] = vm("VmHWM") - base
    print(json.dumps(out), flush=True)
"""


@dataclass
class Outcome:
    """What one load did: ``error`` is the exception's class name (None: it loaded)."""

    error: str | None
    classes: list[str]
    message: str
    seconds: float
    rss_growth: int
    traceback: str = ""

    def is_a(self, name: str) -> bool:
        """Whether the exception is (a subclass of) the class named ``name``."""
        return name in self.classes


class LoadWorker:
    """A child process that loads cases one at a time under ``RLIMIT_AS``; restarted after a hang or crash."""

    def __init__(self, *, headroom: int = AS_HEADROOM, timeout_s: float = 60.0) -> None:
        self.headroom = headroom
        self.timeout_s = timeout_s
        self.proc: subprocess.Popen[str] | None = None

    def _start(self) -> subprocess.Popen[str]:
        root = Path(__file__).resolve().parents[2]
        env = {**os.environ, "PYTHONPATH": str(root), "TOKENIZERS_PARALLELISM": "false", "BITNET_THREADS": "1"}
        proc = subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(self.headroom)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=root,
        )
        line = self._readline(proc, 120.0)
        if line is None or "ready" not in line:
            proc.kill()
            proc.wait()
            raise RuntimeError("the load worker did not start")
        return proc

    def _readline(self, proc: subprocess.Popen[str], timeout_s: float) -> str | None:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
        if not ready:
            return None
        return proc.stdout.readline() or None

    def load(self, path: Path, op: str = "model") -> Outcome:
        """Load ``path`` (``op``: ``"model"`` for load_model, ``"tokenizer"`` for Tokenizer.from_hf_dir)."""
        if self.proc is None or self.proc.poll() is not None:
            self.proc = self._start()
        assert self.proc.stdin is not None
        t0 = time.perf_counter()
        self.proc.stdin.write(json.dumps({"op": op, "path": str(path)}) + "\n")
        self.proc.stdin.flush()
        line = self._readline(self.proc, self.timeout_s)
        if line is None:
            hung = self.proc.poll() is None
            self.close()
            kind = "Hang" if hung else "Crash"
            return Outcome(kind, [kind], f"{path}: worker {kind.lower()}", time.perf_counter() - t0, 0)
        r = json.loads(line)
        return Outcome(r["type"], r.get("mro", []), r["msg"], r["seconds"], r["rss_growth"], r.get("tb", ""))

    def close(self) -> None:
        """Stop the child."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            for pipe in (self.proc.stdin, self.proc.stdout):
                if pipe is not None:
                    pipe.close()
            self.proc = None
