"""Type stub for the compiled fast kernels (kernels_cython/_ternary.pyx)."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from kernels_cython.reference import TernaryMatrix

def available_isas() -> tuple[str, ...]: ...
def default_isa() -> str: ...
def set_num_threads(n: int) -> None: ...
def get_num_threads() -> int: ...
def quantize_activations(
    x: npt.NDArray[np.float32] | Any, *, isa: str | None = None, threads: int | None = None
) -> tuple[npt.NDArray[np.int8], npt.NDArray[np.float32]]: ...
def ternary_matmul_int32(
    xq: npt.NDArray[np.int8] | Any, w: TernaryMatrix, *, isa: str | None = None, threads: int | None = None
) -> npt.NDArray[np.int32]: ...
def ternary_linear(
    x: npt.NDArray[np.float32] | Any, w: TernaryMatrix, *, isa: str | None = None, threads: int | None = None
) -> npt.NDArray[np.float32]: ...
