"""Model hyper-parameters, read from an HF ``config.json`` or from GGUF metadata.

Supported architectures (anything else raises :class:`UnsupportedModelError` naming what was found):

* ``BitNetForCausalLM`` (BitNet-b1.58-2B-4T): squared-ReLU gated FFN, ``attn_sub_norm`` / ``ffn_sub_norm``,
  grouped-query attention, NeoX RoPE.  GGUF architecture ``bitnet-b1.58`` (also ``bitnet-25``).
* ``BitnetForCausalLM`` (1bitLLM bitnet_b1_58-large / 3B): SiLU gated FFN with sub-norms
  ``self_attn.inner_attn_ln`` / ``mlp.ffn_layernorm``; fp16 masters ternarized on load.  GGUF ``bitnet``.
* ``LlamaForCausalLM`` with a ``quantization_config`` whose ``quant_method`` is ``"bitnet"`` (Falcon3-1.58bit,
  Llama3-8B-1.58): SiLU gated FFN, no sub-norms; ``modules_to_not_convert`` stay dense.  GGUF ``llama``
  (whose Q/K rows llama.cpp permutes for its interleaved RoPE; the loader undoes that).

A GGUF file's ``{arch}.feed_forward_activation`` (``"relu2"`` or ``"silu"``) overrides the default activation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from bitnet_actor.engine.errors import CorruptModelError, UnsupportedModelError

if TYPE_CHECKING:
    from collections.abc import Mapping

    import numpy.typing as npt

__all__ = ["MAX_CONTEXT", "SUPPORTED_ARCHITECTURES", "SUPPORTED_GGUF_ARCHITECTURES", "ModelConfig", "QuantConfig"]

MAX_CONTEXT = 1 << 24
"""The longest context a model may declare (16,777,216 tokens; BitNet b1.58 2B4T has 4,096, Llama 3.1 131,072):
its RoPE tables are made at load, so a header's absurd claim is refused before it allocates them."""

SUPPORTED_ARCHITECTURES = ("BitNetForCausalLM", "BitnetForCausalLM", "LlamaForCausalLM")
SUPPORTED_GGUF_ARCHITECTURES = ("bitnet-b1.58", "bitnet-25", "bitnet", "llama")

Family = Literal["bitnet-b1.58", "bitnet-1bitllm", "llama"]


@dataclass(frozen=True)
class QuantConfig:
    """The relevant part of an HF ``quantization_config`` with ``quant_method: bitnet``.

    Attributes:
        linear_class: ``"bitlinear"`` (``weight_scale`` is the reciprocal, output divided) or
            ``"autobitlinear"`` (``weight_scale`` is the multiplier).
        mode: ``"offline"`` (packed uint8 weights) or ``"online"`` (float masters, ternarized on load).
        modules_to_not_convert: module names (or prefixes) that stay dense.
        use_rms_norm: an RMSNorm (``<module>.rms_norm.weight``) runs before each ternary linear's quantization.
        rms_norm_eps: its epsilon.
    """

    linear_class: str = "bitlinear"
    mode: str = "offline"
    modules_to_not_convert: tuple[str, ...] = ()
    use_rms_norm: bool = False
    rms_norm_eps: float = 1e-6


@dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of a supported decoder-only model.

    Attributes:
        architecture: the name found in the file (HF class name or GGUF ``general.architecture``).
        family: ``"bitnet-b1.58"``, ``"bitnet-1bitllm"`` or ``"llama"``.
        hidden_size: model width.
        num_layers: decoder layers.
        num_heads: query heads.
        num_kv_heads: key/value heads (grouped-query attention when fewer than ``num_heads``).
        head_dim: width of one head.
        intermediate_size: FFN width.
        vocab_size: rows of the embedding.
        context_length: the longest sequence the model supports (``max_position_embeddings``).
        rms_norm_eps: RMSNorm epsilon.
        rope_theta: RoPE base.
        rope_scaling: the RoPE scaling parameters (``rope_type`` ``"linear"`` or ``"llama3"``), or None.
        hidden_act: ``"relu2"`` or ``"silu"``.
        sub_norms: the block has ``attn_sub_norm`` / ``ffn_sub_norm``.
        tie_word_embeddings: the output layer is the embedding.
        attention_bias: q/k/v/o have biases.
        mlp_bias: gate/up/down have biases.
        bos_token_id: from the config, if any.
        eos_token_ids: from the config (and generation config), possibly empty.
        quant: the bitnet quantization config; None where every linear is ternarized from float masters.
    """

    architecture: str
    family: Family
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    context_length: int
    rms_norm_eps: float
    rope_theta: float
    hidden_act: str
    sub_norms: bool
    tie_word_embeddings: bool
    rope_scaling: Mapping[str, Any] | None = None
    attention_bias: bool = False
    mlp_bias: bool = False
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    quant: QuantConfig | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Check the numbers for consistency.

        Raises:
            CorruptModelError: an inconsistent or non-positive size.
        """
        for name in ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim"):
            if getattr(self, name) < 1:
                raise CorruptModelError(f"config: {name} must be positive, got {getattr(self, name)}")
        for name in ("intermediate_size", "vocab_size", "context_length"):
            if getattr(self, name) < 1:
                raise CorruptModelError(f"config: {name} must be positive, got {getattr(self, name)}")
        if self.context_length > MAX_CONTEXT:  # its RoPE tables are made at load: an absurd claim must not
            raise UnsupportedModelError(  # allocate them
                f"config: context_length {self.context_length:,} is more than the {MAX_CONTEXT:,} tokens this "
                "engine supports"
            )
        if self.num_heads % self.num_kv_heads:
            raise CorruptModelError(
                f"config: num_attention_heads={self.num_heads} is not a multiple of "
                f"num_key_value_heads={self.num_kv_heads}"
            )
        if self.head_dim % 2:
            raise CorruptModelError(f"config: head_dim={self.head_dim} must be even for RoPE")
        if self.hidden_act not in ("relu2", "silu"):
            raise UnsupportedModelError(
                f"config: hidden_act {self.hidden_act!r} is not supported (supported: 'relu2', 'silu')"
            )

    # ------------------------------------------------------------------------------------------------------

    def rope_inv_freq(self) -> npt.NDArray[np.float32]:
        """RoPE inverse frequencies in float32, as transformers computes them.

        Returns:
            float32 (head_dim // 2,).
        """
        dim = self.head_dim
        exps = (np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)).astype(np.float32)
        inv = (np.float32(1.0) / np.power(np.float32(self.rope_theta), exps)).astype(np.float32)
        rs = self.rope_scaling
        if not rs:
            return inv
        kind = rs.get("rope_type", rs.get("type", "default"))
        if kind == "default":
            return inv
        if kind == "linear":
            return (inv / np.float32(rs["factor"])).astype(np.float32)
        if kind == "llama3":
            factor = float(rs["factor"])
            low, high = float(rs["low_freq_factor"]), float(rs["high_freq_factor"])
            old = float(rs["original_max_position_embeddings"])
            low_wl, high_wl = old / low, old / high
            wavelen = (np.float32(2 * math.pi) / inv).astype(np.float32)
            scaled = np.where(wavelen > low_wl, inv / np.float32(factor), inv).astype(np.float32)
            smooth = ((old / wavelen - low) / (high - low)).astype(np.float32)
            smoothed = ((1 - smooth) * scaled / np.float32(factor) + smooth * scaled).astype(np.float32)
            medium = ~(wavelen < high_wl) & ~(wavelen > low_wl)
            return np.where(medium, smoothed, scaled).astype(np.float32)
        raise UnsupportedModelError(
            f"config: rope scaling type {kind!r} is not supported (supported: default, linear, llama3)"
        )

    def parameter_count(self) -> int:
        """Parameters of the model (embedding counted once when tied; norms included).

        Returns:
            The count.
        """
        h, f = self.hidden_size, self.intermediate_size
        q = self.num_heads * self.head_dim
        kv = self.num_kv_heads * self.head_dim
        per_layer = h * (q + 2 * kv) + q * h + 3 * h * f + 2 * h
        if self.sub_norms:
            per_layer += q + f
        total = self.num_layers * per_layer + self.vocab_size * h + h
        if not self.tie_word_embeddings:
            total += self.vocab_size * h
        return total

    # ------------------------------------------------------------------------------------------------------

    @classmethod
    def from_hf(cls, cfg: Mapping[str, Any], where: str, generation: Mapping[str, Any] | None = None) -> ModelConfig:
        """Read an HF ``config.json``.

        Args:
            cfg: the parsed JSON.
            where: the file's path, for error messages.
            generation: the parsed ``generation_config.json``, if any (for eos ids).

        Returns:
            The config.

        Raises:
            UnsupportedModelError: an architecture or quantization method that is not supported.
            CorruptModelError: a missing or invalid key.
        """
        archs = cfg.get("architectures") or []
        if isinstance(archs, list) and archs:
            arch = str(archs[0])
        else:  # no "architectures": fall back on model_type
            mt = cfg.get("model_type")
            arch = {"bitnet": "BitNetForCausalLM", "llama": "LlamaForCausalLM"}.get(str(mt), f"model_type {mt!r}")
        qc_raw = cfg.get("quantization_config")
        quant: QuantConfig | None = None
        if qc_raw is not None:
            if not isinstance(qc_raw, dict):
                raise CorruptModelError(f"{where}: quantization_config must be an object")
            method = qc_raw.get("quant_method")
            if method != "bitnet":
                raise UnsupportedModelError(
                    f"{where}: quantization method {method!r} of {arch} is not supported "
                    f"(supported: 'bitnet' on {', '.join(SUPPORTED_ARCHITECTURES)})"
                )
            quant = _quant_config(qc_raw, where)
        if arch == "BitNetForCausalLM":
            family: Family = "bitnet-b1.58"
            act_default, sub = "relu2", True
        elif arch == "BitnetForCausalLM":
            family, act_default, sub = "bitnet-1bitllm", "silu", True
        elif arch == "LlamaForCausalLM":
            if quant is None:
                raise UnsupportedModelError(
                    f"{where}: LlamaForCausalLM without a bitnet quantization_config is not a ternary model "
                    f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)}; Llama only with quant_method 'bitnet')"
                )
            family, act_default, sub = "llama", "silu", False
        else:
            raise UnsupportedModelError(
                f"{where}: architecture {arch!r} is not supported "
                f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)}; Llama only with quant_method 'bitnet')"
            )

        def req(key: str) -> int:
            value = cfg.get(key)
            if not isinstance(value, int) or isinstance(value, bool):
                raise CorruptModelError(f"{where}: {key} is missing or not an integer ({value!r})")
            return value

        hidden = req("hidden_size")
        heads = req("num_attention_heads")
        kv = cfg.get("num_key_value_heads") or heads
        head_dim = cfg.get("head_dim") or hidden // heads
        rope = cfg.get("rope_parameters") or {}
        if not isinstance(rope, dict):
            raise CorruptModelError(f"{where}: rope_parameters must be an object")
        theta = rope.get("rope_theta", cfg.get("rope_theta"))
        if theta is None:
            theta = 500000.0 if family == "bitnet-b1.58" else 10000.0
        scaling = cfg.get("rope_scaling") or (rope if rope.get("rope_type", "default") != "default" else None)
        eos = _ids(cfg.get("eos_token_id"))
        if generation:
            eos = tuple(dict.fromkeys(eos + _ids(generation.get("eos_token_id"))))
        bos = cfg.get("bos_token_id")
        return cls(
            architecture=arch,
            family=family,
            hidden_size=hidden,
            num_layers=req("num_hidden_layers"),
            num_heads=heads,
            num_kv_heads=int(kv),
            head_dim=int(head_dim),
            intermediate_size=req("intermediate_size"),
            vocab_size=req("vocab_size"),
            context_length=int(cfg.get("max_position_embeddings") or 2048),
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6 if family == "llama" else 1e-5)),
            rope_theta=float(theta),
            rope_scaling=scaling,
            hidden_act=str(cfg.get("hidden_act", act_default)),
            sub_norms=sub,
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", family == "bitnet-1bitllm")),
            attention_bias=bool(cfg.get("attention_bias", False)),
            mlp_bias=bool(cfg.get("mlp_bias", False)),
            bos_token_id=bos if isinstance(bos, int) else None,
            eos_token_ids=eos,
            quant=quant,
        )

    @classmethod
    def from_gguf(cls, meta: Mapping[str, Any], where: str, vocab_rows: int, tied: bool) -> ModelConfig:
        """Read llama.cpp-style GGUF metadata.

        Args:
            meta: key -> plain Python value.
            where: the file's path, for error messages.
            vocab_rows: rows of ``token_embd.weight`` (the vocabulary size when the metadata lacks it).
            tied: whether the file lacks ``output.weight``.

        Returns:
            The config.

        Raises:
            UnsupportedModelError: an architecture that is not supported.
            CorruptModelError: a missing key.
        """
        arch = meta.get("general.architecture")
        if arch not in SUPPORTED_GGUF_ARCHITECTURES:
            raise UnsupportedModelError(
                f"{where}: GGUF architecture {arch!r} is not supported "
                f"(supported: {', '.join(SUPPORTED_GGUF_ARCHITECTURES)})"
            )
        family: Family
        if arch in ("bitnet-b1.58", "bitnet-25"):
            family, act, sub = "bitnet-b1.58", "relu2", True
        elif arch == "bitnet":
            family, act, sub = "bitnet-1bitllm", "silu", True
        else:
            family, act, sub = "llama", "silu", False
        act = str(meta.get(f"{arch}.feed_forward_activation", act))

        def req(key: str) -> int:
            value = meta.get(f"{arch}.{key}")
            if not isinstance(value, int) or isinstance(value, bool):
                raise CorruptModelError(f"{where}: metadata {arch}.{key} is missing or not an integer")
            return value

        hidden = req("embedding_length")
        heads = req("attention.head_count")
        kv = meta.get(f"{arch}.attention.head_count_kv", heads)
        head_dim = meta.get(f"{arch}.attention.key_length", hidden // heads)
        scaling: dict[str, Any] | None = None
        stype = meta.get(f"{arch}.rope.scaling.type")
        if stype == "linear":
            scaling = {"rope_type": "linear", "factor": float(meta[f"{arch}.rope.scaling.factor"])}
        elif stype not in (None, "none"):
            raise UnsupportedModelError(f"{where}: rope scaling type {stype!r} is not supported")
        bos = meta.get("tokenizer.ggml.bos_token_id")
        eos = _ids(meta.get("tokenizer.ggml.eos_token_id")) + _ids(meta.get("tokenizer.ggml.eot_token_id"))
        return cls(
            architecture=str(arch),
            family=family,
            hidden_size=hidden,
            num_layers=req("block_count"),
            num_heads=heads,
            num_kv_heads=int(kv),
            head_dim=int(head_dim),
            intermediate_size=req("feed_forward_length"),
            vocab_size=int(meta.get(f"{arch}.vocab_size", vocab_rows)),
            context_length=int(meta.get(f"{arch}.context_length", 2048)),
            rms_norm_eps=float(meta.get(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
            rope_theta=float(meta.get(f"{arch}.rope.freq_base", 10000.0)),
            rope_scaling=scaling,
            hidden_act=act,
            sub_norms=sub,
            tie_word_embeddings=tied,
            bos_token_id=bos if isinstance(bos, int) else None,
            eos_token_ids=tuple(dict.fromkeys(eos)),
        )

    def to_gguf_metadata(self) -> dict[str, Any]:
        """The llama.cpp metadata keys describing this config (for writing GGUF files).

        Returns:
            key -> value (``general.architecture`` included).
        """
        arch = {"bitnet-b1.58": "bitnet-b1.58", "bitnet-1bitllm": "bitnet", "llama": "llama"}[self.family]
        meta: dict[str, Any] = {
            "general.architecture": arch,
            f"{arch}.context_length": self.context_length,
            f"{arch}.embedding_length": self.hidden_size,
            f"{arch}.block_count": self.num_layers,
            f"{arch}.feed_forward_length": self.intermediate_size,
            f"{arch}.attention.head_count": self.num_heads,
            f"{arch}.attention.head_count_kv": self.num_kv_heads,
            f"{arch}.attention.key_length": self.head_dim,
            f"{arch}.attention.value_length": self.head_dim,
            f"{arch}.attention.layer_norm_rms_epsilon": self.rms_norm_eps,
            f"{arch}.rope.freq_base": self.rope_theta,
            f"{arch}.rope.dimension_count": self.head_dim,
            f"{arch}.vocab_size": self.vocab_size,
            f"{arch}.feed_forward_activation": self.hidden_act,
        }
        return meta


def _ids(value: Any) -> tuple[int, ...]:
    if isinstance(value, bool):
        return ()
    if isinstance(value, int):
        return (value,)
    if isinstance(value, (list, tuple)):
        return tuple(v for v in value if isinstance(v, int) and not isinstance(v, bool))
    return ()


def _quant_config(qc: Mapping[str, Any], where: str) -> QuantConfig:
    linear_class = qc.get("linear_class", "bitlinear")
    mode = qc.get("quantization_mode", "offline")
    if linear_class not in ("bitlinear", "autobitlinear"):
        raise UnsupportedModelError(
            f"{where}: bitnet linear_class {linear_class!r} is not supported (supported: bitlinear, autobitlinear)"
        )
    if mode not in ("offline", "online"):
        raise UnsupportedModelError(
            f"{where}: bitnet quantization_mode {mode!r} is not supported (supported: offline, online)"
        )
    skip = qc.get("modules_to_not_convert") or ()
    return QuantConfig(
        linear_class=str(linear_class),
        mode=str(mode),
        modules_to_not_convert=tuple(str(s) for s in skip),
        use_rms_norm=bool(qc.get("use_rms_norm", False)),
        rms_norm_eps=float(qc.get("rms_norm_eps") or 1e-6),
    )
