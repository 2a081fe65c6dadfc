"""Loading a model's weights from an HF directory or a GGUF file into the engine's layout.

HF directory: ``config.json`` (+ ``generation_config.json``), ``model.safetensors`` or shards named by
``model.safetensors.index.json`` (or every ``*.safetensors``).  Per linear layer:

* uint8 packed weights ``(ceil(N/4), K)`` with ``weight_scale``: ``linear_class: bitlinear`` stores the
  reciprocal of the scale (transformers divides by it), ``autobitlinear`` the scale itself (multiplies);
* float weights with ``weight_scale`` (``autobitlinear`` offline, unpacked): values must be in {-1, 0, 1};
* float weights without a scale (``quantization_mode: online``, 1bitLLM fp16 masters): ternarized here as
  transformers' ``WeightQuant`` does: ``inv = 1 / max(mean|W|, 1e-5)``, ``codes = clamp(round(W * inv))``,
  scale ``1 / inv``;
* modules in ``modules_to_not_convert`` (transformers' matching rules) stay dense, as does ``lm_head``.

GGUF: ternary tensors (I2_S, TQ1_0, TQ2_0) are converted with :mod:`kernels_cython`'s converters; F32, F16
and BF16 tensors stay as stored (memory-mapped) where they are large, Q8_0 / Q6_K are dequantized.

Every tensor's presence, dtype and shape is checked; problems raise :class:`CorruptModelError` naming the
file and the tensor.  ``progress(done, total)`` is called after each tensor.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bitnet_actor.engine.config import ModelConfig
from bitnet_actor.engine.errors import CorruptModelError, ModelLoadError
from bitnet_actor.engine.gguf_io import GGUFFile, dequantize
from bitnet_actor.engine.layers import DenseMatrix, Linear, fuse_rows
from bitnet_actor.engine.tensors import RawTensor, SafetensorsFile, to_float32
from kernels_cython import reference as kref

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    import numpy.typing as npt

    from bitnet_actor.engine.config import QuantConfig
    from kernels_cython.reference import TernaryMatrix

__all__ = ["LayerWeights", "ModelWeights", "load_weights"]

Progress = "Callable[[int, int], None] | None"


@dataclass
class LayerWeights:
    """One decoder layer; ``qkv`` / ``gate_up`` hold one fused layer or the separate ones in order."""

    attn_norm: npt.NDArray[np.float32]
    qkv: list[Linear]
    o: Linear
    attn_sub_norm: npt.NDArray[np.float32] | None
    ffn_norm: npt.NDArray[np.float32]
    gate_up: list[Linear]
    down: Linear
    ffn_sub_norm: npt.NDArray[np.float32] | None


@dataclass
class ModelWeights:
    """Everything the forward pass reads.

    Attributes:
        config: the hyper-parameters.
        embed: the token embedding (V, H).
        lm_head: the output matrix (V, H); the same object as ``embed`` when tied.
        final_norm: float32 (H,).
        layers: the decoder layers.
        formats: storage format -> number of tensors (for :class:`ModelInfo`).
        source_format: ``"safetensors"`` or ``"gguf"``.
        tokenizer_source: ``("hf", dir)`` or ``("gguf", metadata)``.
        keep_alive: memory maps and other objects the arrays point into.
    """

    config: ModelConfig
    embed: DenseMatrix
    lm_head: DenseMatrix
    final_norm: npt.NDArray[np.float32]
    layers: list[LayerWeights]
    formats: dict[str, int]
    source_format: str
    tokenizer_source: tuple[str, Any]
    keep_alive: list[Any] = field(default_factory=list)


def load_weights(path: Path, progress: Callable[[int, int], None] | None = None) -> ModelWeights:
    """Load a model from an HF directory or a ``.gguf`` file.

    Args:
        path: a directory with ``config.json`` or a GGUF file.
        progress: called as ``progress(done, total)`` while tensors load.

    Returns:
        The weights.

    Raises:
        ModelLoadError: nothing loadable at ``path``.
        CorruptModelError: a truncated, corrupt or inconsistent file.
        UnsupportedModelError: an unsupported architecture, quantization method or tensor type.
    """
    path = Path(path)
    if path.is_dir():
        if (path / "config.json").is_file():
            return _HFLoader(path, progress).load()
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return _GGUFLoader(ggufs[0], progress).load()
        raise ModelLoadError(f"{path}: no config.json (HF model) and not exactly one .gguf file")
    if path.is_file():
        with path.open("rb") as fh:
            magic = fh.read(4)
        if magic == b"GGUF":
            return _GGUFLoader(path, progress).load()
        raise ModelLoadError(f"{path}: not a GGUF file and not a directory with config.json")
    raise ModelLoadError(f"{path}: no such file or directory")


# ----------------------------------------------------------------------------------------------------------
# shared helpers


def _float_vector(t: RawTensor, n: int) -> npt.NDArray[np.float32]:
    if t.shape != (n,):
        raise CorruptModelError(f"{t.where()}: expected shape ({n},), found {t.shape}")
    if t.dtype in ("F32", "F16", "BF16", "F64"):
        return to_float32(t)
    if t.dtype in ("Q8_0", "Q6_K"):
        return dequantize(t)
    raise CorruptModelError(f"{t.where()}: expected a float tensor, found dtype {t.dtype}")


def _dense(t: RawTensor, shape: tuple[int, int]) -> DenseMatrix:
    if t.shape != shape:
        raise CorruptModelError(f"{t.where()}: expected shape {shape}, found {t.shape}")
    if t.dtype == "F32":
        return DenseMatrix("f32", t.data)
    if t.dtype == "F16":
        return DenseMatrix("f16", t.data)
    if t.dtype == "BF16":
        return DenseMatrix("bf16", t.data)
    if t.dtype in ("Q8_0", "Q6_K", "F64"):
        return DenseMatrix("f32", dequantize(t) if t.dtype != "F64" else to_float32(t))
    raise CorruptModelError(f"{t.where()}: expected a float matrix, found dtype {t.dtype}")


def ternarize(w: npt.NDArray[np.float32]) -> TernaryMatrix:
    """Ternarize float weights as transformers' ``WeightQuant`` (absmean, torch's rounding order).

    Args:
        w: float32 (N, K).

    Returns:
        codes ``clamp(round(W * inv), -1, 1)`` with scale ``1 / inv``, ``inv = 1 / max(mean|W|, 1e-5)``.
    """
    return ternarize_inv(w)[0]


def ternarize_inv(w: npt.NDArray[np.float32]) -> tuple[TernaryMatrix, np.float32]:
    """:func:`ternarize`, also returning ``inv`` (float32): ``float32(1) / inv`` is the matrix's scale exactly,
    so ``inv`` is the ``weight_scale`` an HF ``bitlinear`` checkpoint stores for it."""
    mean = np.float32(max(float(np.abs(w).mean(dtype=np.float64)), 1e-5))
    inv = np.float32(1) / mean
    codes = np.clip(np.rint(w * inv), -1, 1).astype(np.int8)  # (N, K)
    return kref.TernaryMatrix.from_codes(codes, np.float32(1) / inv), np.float32(inv)


def _float_ternary(w: npt.NDArray[np.float32]) -> TernaryMatrix:
    """A float GGUF layer: already ternary values {-a, 0, a} (llama.cpp's pre-ternarized F16/F32) keep their
    scale ``a``; anything else is ternarized with absmean."""
    if not np.isfinite(w).all():
        raise ValueError("contains NaN or inf")
    a = np.float32(np.abs(w).max())
    if a > 0 and np.isin(np.abs(w), (np.float32(0), a)).all():
        return kref.TernaryMatrix.from_codes(np.sign(w).astype(np.int8), a)
    return ternarize(w)


def hf_keeps_dense(module: str, quant: QuantConfig | None) -> bool:
    """Whether an HF linear module stays dense (``lm_head``, or ``modules_to_not_convert`` by transformers' rules).

    Args:
        module: the module name, e.g. ``model.layers.0.mlp.down_proj``.
        quant: the bitnet quantization config, if any.

    Returns:
        True when the module is not ternary.
    """
    if module == "lm_head":
        return True
    if quant is None or not quant.modules_to_not_convert:
        return False
    boundary = r"(?:(?<=\.)|(?=\.|$))"
    return any(
        re.match(rf"(?:{key}){boundary}", module) or module.endswith(key) for key in quant.modules_to_not_convert
    )


def hf_scale(t: RawTensor, quant: QuantConfig | None) -> np.float32:
    """The multiplier a stored HF ``weight_scale`` stands for (``bitlinear`` stores its reciprocal).

    Raises:
        CorruptModelError: not one positive float.
    """
    if t.dtype not in ("F32", "F16", "BF16") or int(np.prod(t.shape)) != 1:
        raise CorruptModelError(f"{t.where()}: weight_scale must be one float, found {t.dtype} {t.shape}")
    v = np.float32(to_float32(t).reshape(-1)[0])
    if not np.isfinite(v) or v <= 0:
        raise CorruptModelError(f"{t.where()}: weight_scale {v} is not a positive number")
    if quant is not None and quant.linear_class == "bitlinear":
        return np.float32(1) / v
    return v


def hf_ternary(
    t: RawTensor, scale_t: RawTensor | None, quant: QuantConfig | None, n: int, k: int
) -> tuple[TernaryMatrix, str, np.float32 | None]:
    """Read one ternary HF linear: packed uint8 + ``weight_scale``, unpacked offline codes, or float masters
    ternarized with :func:`ternarize` (the one place the engine quantizes masters; the converter uses it too).

    Args:
        t: ``<module>.weight``.
        scale_t: ``<module>.weight_scale``, if stored.
        quant: the bitnet quantization config, if any.
        n: out_features.
        k: in_features.

    Returns:
        ``(matrix (N, K), storage format label, reciprocal)``: ``reciprocal`` is a float32 ``v`` with
        ``float32(1) / v`` equal to the matrix's scale, when one is known (a stored ``bitlinear`` scale, or
        the ``inv`` of an online quantization); else None.

    Raises:
        CorruptModelError: a wrong shape or dtype, a missing scale, values that are not ternary, NaN or inf.
    """
    if t.dtype == "U8":
        if t.shape != (-(-n // 4), k):
            raise CorruptModelError(
                f"{t.where()}: packed ternary weights must have shape {(-(-n // 4), k)} for {n} x {k}, found {t.shape}"
            )
        if scale_t is None:
            raise CorruptModelError(f"{t.where()}: packed weights without {t.name[: -len('.weight')]}.weight_scale")
        mult = hf_scale(scale_t, quant)
        try:
            w = kref.from_hf_packed(np.ascontiguousarray(t.data), mult, n)
        except ValueError as exc:
            raise CorruptModelError(f"{t.where()}: {exc}") from exc
        return w, "ternary (HF packed uint8)", _stored_reciprocal(scale_t, quant)
    if t.dtype in ("F32", "F16", "BF16"):
        if t.shape != (n, k):
            raise CorruptModelError(f"{t.where()}: expected shape {(n, k)}, found {t.shape}")
        wf = to_float32(t)
        if scale_t is not None and quant is not None and quant.mode == "offline":
            if not np.isin(wf, (-1.0, 0.0, 1.0)).all():
                raise CorruptModelError(f"{t.where()}: offline weights with a weight_scale must be in {{-1,0,1}}")
            w = kref.TernaryMatrix.from_codes(wf.astype(np.int8), hf_scale(scale_t, quant))
            return w, f"ternary (unpacked {t.dtype})", _stored_reciprocal(scale_t, quant)
        if not np.isfinite(wf).all():
            raise CorruptModelError(f"{t.where()}: contains NaN or inf")
        w, inv = ternarize_inv(wf)
        return w, f"ternarized on load ({t.dtype})", inv
    raise CorruptModelError(f"{t.where()}: expected uint8 packed or float weights, found dtype {t.dtype}")


def _stored_reciprocal(t: RawTensor, quant: QuantConfig | None) -> np.float32 | None:
    if quant is not None and quant.linear_class == "bitlinear":
        return np.float32(to_float32(t).reshape(-1)[0])
    return None


def gguf_ternary(t: RawTensor, n: int, k: int) -> TernaryMatrix:
    """Read one ternary GGUF linear (I2_S, TQ1_0, TQ2_0, or float), in the file's row order.

    Raises:
        CorruptModelError: a wrong shape, type or scale.
    """
    if t.shape != (n, k):
        raise CorruptModelError(f"{t.where()}: expected shape {(n, k)}, found {t.shape}")
    try:
        if t.dtype == "TQ2_0":
            w = kref.from_tq2_0(t.data, (n, k))
        elif t.dtype == "TQ1_0":
            w = kref.from_tq1_0(t.data, (n, k))
        elif t.dtype == "I2_S":
            w = kref.from_i2_s(t.data, (n, k))
        elif t.dtype in ("F32", "F16", "BF16"):
            w = _float_ternary(to_float32(t))
        else:
            raise CorruptModelError(
                f"{t.where()}: a ternary layer needs I2_S, TQ1_0, TQ2_0 or a float type, found {t.dtype}"
            )
    except ValueError as exc:
        raise CorruptModelError(f"{t.where()}: {exc}") from exc
    if isinstance(w.scale, float) and not (np.isfinite(w.scale) and w.scale > 0):
        raise CorruptModelError(f"{t.where()}: scale {w.scale} is not a positive number")
    return w


def _config(path: Path, read: Callable[..., ModelConfig], *args: Any) -> ModelConfig:
    """``read(meta, str(path), *rest)``, with every error naming ``path``: a lying header can hand the config
    reader a zero head count or a string where a number goes, and the config's own checks say only "config"."""
    meta, *rest = args
    try:
        return read(meta, str(path), *rest)
    except ModelLoadError as exc:
        if str(path) in str(exc):
            raise
        raise type(exc)(f"{path}: {exc}") from exc
    except (ArithmeticError, ValueError, TypeError, KeyError) as exc:
        raise CorruptModelError(f"{path}: invalid model configuration ({type(exc).__name__}: {exc})") from exc


def _fuse(layers: list[Linear]) -> list[Linear]:
    fused = fuse_rows(layers)
    return [fused] if fused is not None else layers


# ----------------------------------------------------------------------------------------------------------
# HF directories


class _HFLoader:
    def __init__(self, root: Path, progress: Callable[[int, int], None] | None) -> None:
        self.root = root
        self.progress = progress
        self.done = 0
        self.total = 1
        self.formats: dict[str, int] = {}

    def _json(self, name: str, required: bool) -> dict[str, Any] | None:
        p = self.root / name
        if not p.is_file():
            if required:
                raise ModelLoadError(f"{p}: missing")
            return None
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CorruptModelError(f"{p}: not valid JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise CorruptModelError(f"{p}: not a JSON object")
        return data

    def _open_tensors(self) -> tuple[dict[str, RawTensor], list[Any]]:
        index = self.root / "model.safetensors.index.json"
        files: list[Path]
        expected: Mapping[str, str] = {}
        if index.is_file():
            idx = self._json(index.name, True) or {}
            wm = idx.get("weight_map")
            if not isinstance(wm, dict):
                raise CorruptModelError(f"{index}: no weight_map")
            expected = wm
            files = [self.root / f for f in sorted(set(wm.values()))]
        elif (self.root / "model.safetensors").is_file():
            files = [self.root / "model.safetensors"]
        else:
            files = sorted(self.root.glob("*.safetensors"))
        if not files:
            raise ModelLoadError(f"{self.root}: no .safetensors files")
        tensors: dict[str, RawTensor] = {}
        keep: list[Any] = []
        self.files = files
        for f in files:
            if not f.is_file():
                raise CorruptModelError(f"{f}: named by {index.name} but missing")
            st = SafetensorsFile(f)
            keep.append(st)
            tensors.update(st.tensors)
        for name, fname in expected.items():
            if name not in tensors:
                raise CorruptModelError(f"{self.root / fname}: tensor {name!r} listed in the index is missing")
        return tensors, keep

    def _get(self, name: str) -> RawTensor:
        t = self.tensors.get(name)
        if t is None:
            where = self.files[0] if len(self.files) == 1 else self.root
            raise CorruptModelError(f"{where}: tensor {name!r} is missing from the safetensors files")
        return t

    def _tick(self, fmt: str) -> None:
        self.formats[fmt] = self.formats.get(fmt, 0) + 1
        self.done += 1
        if self.progress is not None:
            self.progress(min(self.done, self.total), self.total)

    def _skip(self, module: str) -> bool:
        return hf_keeps_dense(module, self.cfg.quant)

    def _linear(self, module: str, n: int, k: int, bias: bool) -> Linear:
        t = self._get(module + ".weight")
        q = self.cfg.quant
        b = _float_vector(self._get(module + ".bias"), n) if bias else None
        pre = None
        eps = 1e-6
        if q is not None and q.use_rms_norm and not self._skip(module):
            pre = _float_vector(self._get(module + ".rms_norm.weight"), k)
            eps = q.rms_norm_eps
        if self._skip(module):
            dense = _dense(t, (n, k))
            self._tick(t.dtype)
            return Linear(dense=dense, bias=b)
        w, fmt, _ = hf_ternary(t, self.tensors.get(module + ".weight_scale"), q, n, k)
        self._tick(fmt)
        return Linear(ternary=w, bias=b, pre_norm=pre, pre_norm_eps=eps)

    def _norm(self, name: str, n: int) -> npt.NDArray[np.float32]:
        v = _float_vector(self._get(name), n)
        self._tick("norm")
        return v

    def load(self) -> ModelWeights:
        raw = self._json("config.json", True) or {}
        gen = self._json("generation_config.json", False)
        self.cfg = cfg = _config(self.root / "config.json", ModelConfig.from_hf, raw, gen)
        self.tensors, keep = self._open_tensors()
        h, f, hd = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
        qd, kvd = cfg.num_heads * hd, cfg.num_kv_heads * hd
        per_layer = 9 + (2 if cfg.sub_norms else 0)
        self.total = cfg.num_layers * per_layer + 3
        embed = _dense(self._get("model.embed_tokens.weight"), (cfg.vocab_size, h))
        self._tick(f"embedding {self._get('model.embed_tokens.weight').dtype}")
        if cfg.sub_norms:
            sub_a = "self_attn.inner_attn_ln" if cfg.family == "bitnet-1bitllm" else "self_attn.attn_sub_norm"
            sub_f = "mlp.ffn_layernorm" if cfg.family == "bitnet-1bitllm" else "mlp.ffn_sub_norm"
        layers = []
        for i in range(cfg.num_layers):
            p = f"model.layers.{i}."
            ab, mb = cfg.attention_bias, cfg.mlp_bias
            q = self._linear(p + "self_attn.q_proj", qd, h, ab)
            k = self._linear(p + "self_attn.k_proj", kvd, h, ab)
            v = self._linear(p + "self_attn.v_proj", kvd, h, ab)
            o = self._linear(p + "self_attn.o_proj", h, qd, ab)
            g = self._linear(p + "mlp.gate_proj", f, h, mb)
            u = self._linear(p + "mlp.up_proj", f, h, mb)
            d = self._linear(p + "mlp.down_proj", h, f, mb)
            layers.append(
                LayerWeights(
                    attn_norm=self._norm(p + "input_layernorm.weight", h),
                    qkv=_fuse([q, k, v]),
                    o=o,
                    attn_sub_norm=self._norm(p + sub_a + ".weight", qd) if cfg.sub_norms else None,
                    ffn_norm=self._norm(p + "post_attention_layernorm.weight", h),
                    gate_up=_fuse([g, u]),
                    down=d,
                    ffn_sub_norm=self._norm(p + sub_f + ".weight", f) if cfg.sub_norms else None,
                )
            )
        final = self._norm("model.norm.weight", h)
        if cfg.tie_word_embeddings or "lm_head.weight" not in self.tensors:
            lm_head = embed
            self._tick("tied output")
        else:
            lm_t = self._get("lm_head.weight")
            lm_head = _dense(lm_t, (cfg.vocab_size, h))
            self._tick(f"output {lm_t.dtype}")
        return ModelWeights(
            config=cfg,
            embed=embed,
            lm_head=lm_head,
            final_norm=final,
            layers=layers,
            formats=self.formats,
            source_format="safetensors",
            tokenizer_source=("hf", self.root),
            keep_alive=keep,
        )


# ----------------------------------------------------------------------------------------------------------
# GGUF


def unpermute_rows(w: TernaryMatrix, n_head: int) -> TernaryMatrix:
    """Undo llama.cpp's Q/K row permutation (interleaved RoPE) so NeoX RoPE applies.

    llama.cpp's converter maps HF row ``h*D + i*(D/2) + j`` (half ``i``, index ``j``) to row ``h*D + 2j + i``.

    Args:
        w: the permuted matrix (N, K), ``N = n_head * D``.
        n_head: heads.

    Returns:
        The matrix in HF row order.
    """
    n = w.shape[0]
    d = n // n_head
    perm = np.arange(n).reshape(n_head, d // 2, 2).transpose(0, 2, 1).reshape(-1)  # HF row -> GGUF row
    packed = np.ascontiguousarray(w.packed[perm])
    scale = w.scale
    if isinstance(scale, np.ndarray):
        scale = np.ascontiguousarray(scale[perm])
    return kref.TernaryMatrix(packed, w.shape[1], scale)


class _GGUFLoader:
    def __init__(self, path: Path, progress: Callable[[int, int], None] | None) -> None:
        self.path = path
        self.progress = progress
        self.done = 0
        self.total = 1
        self.formats: dict[str, int] = {}

    def _get(self, name: str) -> RawTensor:
        t = self.g.tensors.get(name)
        if t is None:
            raise CorruptModelError(f"{self.path}: tensor {name!r} is missing")
        return t

    def _tick(self, fmt: str) -> None:
        self.formats[fmt] = self.formats.get(fmt, 0) + 1
        self.done += 1
        if self.progress is not None:
            self.progress(min(self.done, self.total), self.total)

    def _linear(self, name: str, n: int, k: int, permute_heads: int = 0) -> Linear:
        t = self._get(name + ".weight")
        w = gguf_ternary(t, n, k)
        if permute_heads:
            w = unpermute_rows(w, permute_heads)
        self._tick(t.dtype)
        return Linear(ternary=w)

    def _norm(self, name: str, n: int) -> npt.NDArray[np.float32]:
        v = _float_vector(self._get(name), n)
        self._tick("norm")
        return v

    def load(self) -> ModelWeights:
        self.g = g = GGUFFile(self.path)
        emb_t = self._get("token_embd.weight")
        if len(emb_t.shape) != 2:
            raise CorruptModelError(f"{emb_t.where()}: expected 2 dimensions, found {emb_t.shape}")
        tied = "output.weight" not in g.tensors
        cfg = _config(self.path, ModelConfig.from_gguf, g.metadata, emb_t.shape[0], tied)
        h, f, hd = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
        qd, kvd = cfg.num_heads * hd, cfg.num_kv_heads * hd
        self.total = cfg.num_layers * (9 + (2 if cfg.sub_norms else 0)) + 3
        embed = _dense(emb_t, (cfg.vocab_size, h))
        self._tick(f"embedding {emb_t.dtype}")
        perm = cfg.family == "llama"
        layers = []
        for i in range(cfg.num_layers):
            p = f"blk.{i}."
            q = self._linear(p + "attn_q", qd, h, cfg.num_heads if perm else 0)
            k = self._linear(p + "attn_k", kvd, h, cfg.num_kv_heads if perm else 0)
            v = self._linear(p + "attn_v", kvd, h)
            o = self._linear(p + "attn_output", h, qd)
            gt = self._linear(p + "ffn_gate", f, h)
            u = self._linear(p + "ffn_up", f, h)
            d = self._linear(p + "ffn_down", h, f)
            layers.append(
                LayerWeights(
                    attn_norm=self._norm(p + "attn_norm.weight", h),
                    qkv=_fuse([q, k, v]),
                    o=o,
                    attn_sub_norm=self._norm(p + "attn_sub_norm.weight", qd) if cfg.sub_norms else None,
                    ffn_norm=self._norm(p + "ffn_norm.weight", h),
                    gate_up=_fuse([gt, u]),
                    down=d,
                    ffn_sub_norm=self._norm(p + "ffn_sub_norm.weight", f) if cfg.sub_norms else None,
                )
            )
        final = self._norm("output_norm.weight", h)
        if tied:
            lm_head = embed
            self._tick("tied output")
        else:
            out_t = self._get("output.weight")
            lm_head = _dense(out_t, (cfg.vocab_size, h))
            self._tick(f"output {out_t.dtype}")
        return ModelWeights(
            config=cfg,
            embed=embed,
            lm_head=lm_head,
            final_norm=final,
            layers=layers,
            formats=self.formats,
            source_format="gguf",
            tokenizer_source=("gguf", g.metadata),
            keep_alive=[g],
        )


def list_tensors(path: Path) -> list[tuple[str, str, tuple[int, ...], int]]:
    """The tensors stored at ``path`` (HF directory or GGUF file), without loading the model.

    Args:
        path: as for :func:`load_weights`.

    Returns:
        ``(name, stored type, shape, bytes)`` per tensor, in file order.

    Raises:
        ModelLoadError: as for :func:`load_weights`.
    """
    path = Path(path)
    if path.is_dir() and not (path / "config.json").is_file():
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            path = ggufs[0]
    if path.is_file():
        g = GGUFFile(path)
        return [(t.name, t.dtype, t.shape, int(t.data.nbytes)) for t in g.tensors.values()]
    if not path.is_dir():
        raise ModelLoadError(f"{path}: no such file or directory")
    loader = _HFLoader(path, None)
    tensors, _keep = loader._open_tensors()
    return [(t.name, t.dtype, t.shape, int(t.data.nbytes)) for t in tensors.values()]
