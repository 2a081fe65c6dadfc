"""Ternary kernels and a BitNet forward pass in OpenCL (PyOpenCL), for CPUs and vendor-neutral GPUs.

The ``.cl`` sources live in :file:`kernels_opencl/cl`, one kernel per file named by op and types
(``ternary_linear_i8_f32.cl``, ``attention_f32.cl``, ...), with a shared prelude (:file:`common.clh`).
Weights keep :mod:`kernels_cython`'s internal layout byte for byte (see :mod:`kernels_cython.reference`),
uploaded once; results are defined by the same numpy reference.

* :mod:`kernels_opencl.device`: device choice (``BITNET_OPENCL_DEVICE`` = ``"auto"``, ``"P:D"`` or a name
  fragment), :class:`Context` (context, queue, program cache, per-device work-group sizes) and the errors.
* :mod:`kernels_opencl.ops`: :class:`DeviceTernaryMatrix` / :class:`DeviceDenseMatrix`, the public ops of
  :mod:`kernels_cython` (``quantize_activations``, ``ternary_matmul_int32``, ``ternary_linear``, taking an
  optional ``ctx``), and the buffer-level launches of a forward pass (RMSNorm, RoPE, KV-cache writes,
  attention with softmax, gated activations, residual adds, dense and int8 output projections).

Importing this package needs numpy only; pyopencl is imported when a context is opened, and its absence
is an :class:`OpenCLUnavailableError`.
"""

from __future__ import annotations

from kernels_cython.reference import TernaryMatrix
from kernels_opencl.device import (
    Context,
    DeviceInfo,
    KernelBuildError,
    OpenCLError,
    OpenCLUnavailableError,
    default_context,
    list_devices,
)
from kernels_opencl.ops import (
    DeviceDenseMatrix,
    DeviceTernaryMatrix,
    quantize_activations,
    ternary_linear,
    ternary_matmul_int32,
)

__all__ = [
    "Context",
    "DeviceDenseMatrix",
    "DeviceInfo",
    "DeviceTernaryMatrix",
    "KernelBuildError",
    "OpenCLError",
    "OpenCLUnavailableError",
    "TernaryMatrix",
    "default_context",
    "list_devices",
    "quantize_activations",
    "ternary_linear",
    "ternary_matmul_int32",
]
