"""Type stub for the compiled engine ops (bitnet_actor/engine/_ops.pyx)."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

def set_num_threads(n: int) -> None: ...
def get_num_threads() -> int: ...
def has_simd() -> bool: ...
def rmsnorm(x: npt.NDArray[np.float32], w: npt.NDArray[np.float32], eps: float) -> npt.NDArray[np.float32]: ...
def rope(x: npt.NDArray[np.float32], cos: npt.NDArray[np.float32], sin: npt.NDArray[np.float32]) -> None: ...
def glu(gu: npt.NDArray[np.float32], relu2: bool) -> npt.NDArray[np.float32]: ...
def attention(
    q: npt.NDArray[np.float32],
    k: npt.NDArray[np.float32],
    v: npt.NDArray[np.float32],
    start: int,
    out: npt.NDArray[np.float32],
) -> None: ...

DENSE_PATHS: tuple[str, ...]

def dense_matmul(
    x: npt.NDArray[np.float32],
    data: npt.NDArray[Any],
    kind: str,
    scales: Any,
    path: str | None = None,
    offsets: Any = None,
) -> npt.NDArray[np.float32]: ...
def add_rmsnorm(
    x: npt.NDArray[np.float32], y: npt.NDArray[np.float32], w: npt.NDArray[np.float32], eps: float
) -> npt.NDArray[np.float32]: ...
def glu_norm(
    gu: npt.NDArray[np.float32], relu2: bool, w: npt.NDArray[np.float32] | None, eps: float
) -> npt.NDArray[np.float32]: ...
def attn_block(
    qkv: npt.NDArray[np.float32],
    nh: int,
    nkv: int,
    hd: int,
    cos: npt.NDArray[np.float32],
    sin: npt.NDArray[np.float32],
    kcaches: list[npt.NDArray[np.float32]],
    vcaches: list[npt.NDArray[np.float32]],
    bounds: npt.NDArray[np.int64],
    starts: npt.NDArray[np.int64],
    out: npt.NDArray[np.float32],
    sub_w: npt.NDArray[np.float32] | None = None,
    eps: float = 1e-5,
) -> None: ...

class LayerStack:
    def __init__(self, specs: list[tuple[Any, ...]], nh: int, nkv: int, hd: int, relu2: bool, eps: float) -> None: ...
    @property
    def num_layers(self) -> int: ...
    def forward(
        self,
        x: npt.NDArray[np.float32],
        cos: npt.NDArray[np.float32],
        sin: npt.NDArray[np.float32],
        kcaches: list[npt.NDArray[Any]],
        vcaches: list[npt.NDArray[Any]],
        bounds: npt.NDArray[np.int64],
        starts: npt.NDArray[np.int64],
        timings: npt.NDArray[np.float64] | None = None,
    ) -> None: ...
