"""Comparison rules for float results against the numpy references (STYLE.md, "Comparison").

A reference is exact then rounded once to float32; a fast kernel sums in float32 in its own order.  Float
results are compared row by row by relative norm, ``|got - ref| <= tol * |ref|``, with ``tol`` from
:func:`sum_tol`: about ``2 sqrt(K)`` float32 epsilons for a row sum of ``K`` terms (random rounding errors grow
like ``sqrt(K)``; the kernels' lane-parallel sums stay well inside, observed at 1-7 epsilons) plus a few for the
elementwise roundings.  An element left out of a sum or counted twice moves a row by about ``1 / sqrt(K)`` of
its norm, far above that.
"""

from __future__ import annotations

import numpy as np

EPS32 = 2.0**-24  # float32's unit roundoff


def sum_tol(k: int) -> float:
    """Relative tolerance of a float32 result that sums ``k`` terms."""
    return float((2 * np.sqrt(k) + 8) * EPS32)


def assert_rows_close(got: np.ndarray, want: np.ndarray, tol: float) -> None:
    """Each row of ``got`` (float32) within ``tol`` of the norm of the same row of ``want``.

    A row of small values is held to its own scale; below 1e-30 absolute nothing counts (the compiled exp
    clamps its argument at -87, so SiLU of g < -88 is ~1e-37 * g instead of ~0).
    """
    assert got.shape == want.shape, (got.shape, want.shape)
    assert got.dtype == np.float32, got.dtype
    g = got.reshape(got.shape[0], -1).astype(np.float64)
    w = want.reshape(want.shape[0], -1).astype(np.float64)
    err = np.linalg.norm(g - w, axis=1)
    bound = tol * np.linalg.norm(w, axis=1) + 1e-30
    bad = np.flatnonzero(err > bound)
    assert bad.size == 0, f"rows {bad[:8].tolist()}: error / norm {(err[bad] / bound[bad] * tol)[:8].tolist()} > {tol}"


def mixed_rows(rng: np.random.Generator, m: int, k: int) -> np.ndarray:
    """float32 (m, k) rows of very different magnitudes (1e-4 .. 1e3): RMSNorm's epsilon dominates the smallest."""
    scale = 10.0 ** rng.uniform(-4, 3, size=(m, 1))
    return (rng.standard_normal((m, k)) * scale).astype(np.float32)
