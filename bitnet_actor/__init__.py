"""bitnet-actor: self-hostable, multi-tenant serving of BitNet b1.58 (ternary) language models on Trio."""

from __future__ import annotations

import os
from importlib.metadata import PackageNotFoundError, version

# The ternary kernels run on OpenMP threads, one per core.  OpenBLAS (numpy's BLAS) keeps its idle workers
# spinning for about 2^28 cycles after each call; on the same cores that stalls the kernels (measured: a
# 2-thread GEMM right after a numpy matmul took 27.8 ms instead of 4.1 ms).  Let them sleep at once instead.
# Read by OpenBLAS when numpy loads: effective for the CLI and server (this package is imported first);
# an operator's own setting wins.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

try:
    __version__ = version("bitnet-actor")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without an install
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
