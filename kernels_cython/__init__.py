"""CPU kernels for BitNet b1.58 ternary weights.

:mod:`kernels_cython.reference` is the numpy definition of every op (layout, rounding, packing) and imports
without a compiler.  This package re-exports the same names with the fast Cython/OpenMP kernels
(:mod:`kernels_cython._ternary`); the matrix type and the checkpoint converters are shared with the reference.
Importing a fast kernel before the extension is built raises ImportError with the build command.
"""

from __future__ import annotations

from typing import Any

from kernels_cython.reference import (
    TernaryMatrix,
    from_hf_packed,
    from_i2_s,
    from_tq1_0,
    from_tq2_0,
    to_hf_packed,
    to_i2_s,
    to_tq1_0,
    to_tq2_0,
)

__all__ = [
    "TernaryMatrix",
    "available_isas",
    "default_isa",
    "from_hf_packed",
    "from_i2_s",
    "from_tq1_0",
    "from_tq2_0",
    "get_num_threads",
    "quantize_activations",
    "set_num_threads",
    "ternary_linear",
    "ternary_matmul_int32",
    "to_hf_packed",
    "to_i2_s",
    "to_tq1_0",
    "to_tq2_0",
]

try:
    from kernels_cython._ternary import (
        available_isas,
        default_isa,
        get_num_threads,
        quantize_activations,
        set_num_threads,
        ternary_linear,
        ternary_matmul_int32,
    )
except ImportError as _exc:  # extension not built: keep the reference and converters importable
    _IMPORT_ERROR = _exc

    def __getattr__(name: str) -> Any:
        """Explain a missing fast kernel."""
        if name in __all__:
            raise ImportError(
                f"kernels_cython.{name} needs the compiled extension; build it with "
                f"`python setup.py build_ext --inplace` ({_IMPORT_ERROR})"
            ) from _IMPORT_ERROR
        raise AttributeError(f"module 'kernels_cython' has no attribute {name!r}")
