"""Random models of real shapes, built in memory (benchmarks and tests; nothing is read from disk).

:data:`SHAPES` holds the shapes of 1bitLLM bitnet_b1_58-large (the 700M class) and BitNet-b1.58-2B-4T.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

import numpy as np

from bitnet_actor.engine.config import ModelConfig
from bitnet_actor.engine.layers import DenseMatrix, Linear, fuse_rows
from bitnet_actor.engine.loader import LayerWeights, ModelWeights
from kernels_cython import reference as kref

if TYPE_CHECKING:
    import numpy.typing as npt

__all__ = ["SHAPES", "random_weights"]

SHAPES: dict[str, ModelConfig] = {
    "700m": ModelConfig(
        architecture="BitnetForCausalLM",
        family="bitnet-1bitllm",
        hidden_size=1536,
        num_layers=24,
        num_heads=16,
        num_kv_heads=16,
        head_dim=96,
        intermediate_size=4096,
        vocab_size=32002,
        context_length=2048,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        hidden_act="silu",
        sub_norms=True,
        tie_word_embeddings=True,
    ),
    "2b4t": ModelConfig(
        architecture="BitNetForCausalLM",
        family="bitnet-b1.58",
        hidden_size=2560,
        num_layers=30,
        num_heads=20,
        num_kv_heads=5,
        head_dim=128,
        intermediate_size=6912,
        vocab_size=128256,
        context_length=4096,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        hidden_act="relu2",
        sub_norms=True,
        tie_word_embeddings=True,
    ),
}

# every byte whose four 2-bit fields are codes 0..2 (81 of them)
_VALID = np.array(
    [a | (b << 2) | (c << 4) | (d << 6) for a, b, c, d in itertools.product(range(3), repeat=4)], dtype=np.uint8
)


def _ternary(rng: np.random.Generator, n: int, k: int) -> Linear:
    kp = -(-k // 256) * 256
    packed = _VALID[rng.integers(0, 81, size=(n, kp // 4), dtype=np.uint8)]  # (N, Kp/4)
    if kp != k:  # padding columns are code 1 (weight 0)
        codes = kref.TernaryMatrix(packed, kp, 1.0).to_codes()[:, :k]
        return Linear(ternary=kref.TernaryMatrix.from_codes(np.ascontiguousarray(codes), 0.03))
    scale = float(rng.uniform(0.02, 0.05))
    return Linear(ternary=kref.TernaryMatrix(np.ascontiguousarray(packed), k, scale))


def _bf16(rng: np.random.Generator, n: int, k: int, std: float) -> npt.NDArray[np.uint16]:
    out = np.empty((n, k), dtype=np.uint16)
    step = max(1, (8 << 20) // k)
    for r0 in range(0, n, step):
        r1 = min(n, r0 + step)
        x = (rng.standard_normal((r1 - r0, k), dtype=np.float32) * np.float32(std)).astype(np.float32)
        out[r0:r1] = (x.view(np.uint32) >> np.uint32(16)).astype(np.uint16)
    return out


def random_weights(cfg: ModelConfig, *, seed: int = 0) -> ModelWeights:
    """Random ternary weights (one absmean-like scale per matrix), bf16 embedding (tied), unit norms.

    Args:
        cfg: the shape.
        seed: the random seed.

    Returns:
        The weights.
    """
    rng = np.random.default_rng(seed)
    h, f, hd = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    qd, kvd = cfg.num_heads * hd, cfg.num_kv_heads * hd
    layers = []
    for _ in range(cfg.num_layers):
        qkv = [_ternary(rng, qd, h), _ternary(rng, kvd, h), _ternary(rng, kvd, h)]
        gu = [_ternary(rng, f, h), _ternary(rng, f, h)]
        fq, fg = fuse_rows(qkv), fuse_rows(gu)
        layers.append(
            LayerWeights(
                attn_norm=np.ones(h, np.float32),
                qkv=[fq] if fq is not None else qkv,
                o=_ternary(rng, h, qd),
                attn_sub_norm=np.ones(qd, np.float32) if cfg.sub_norms else None,
                ffn_norm=np.ones(h, np.float32),
                gate_up=[fg] if fg is not None else gu,
                down=_ternary(rng, h, f),
                ffn_sub_norm=np.ones(f, np.float32) if cfg.sub_norms else None,
            )
        )
    embed = DenseMatrix("bf16", _bf16(rng, cfg.vocab_size, h, 1.0))
    lm_head = embed if cfg.tie_word_embeddings else DenseMatrix("bf16", _bf16(rng, cfg.vocab_size, h, 0.05))
    return ModelWeights(
        config=cfg,
        embed=embed,
        lm_head=lm_head,
        final_norm=np.ones(h, np.float32),
        layers=layers,
        formats={"ternary (random)": 7 * cfg.num_layers, "embedding BF16": 1},
        source_format="synthetic",
        tokenizer_source=("none", None),
    )
