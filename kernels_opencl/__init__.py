"""Ternary kernels in OpenCL (PyOpenCL) for CPUs and vendor-neutral GPUs.

Planned by issue [C]: one kernel per ``.cl`` file and a thin host module sharing the internal weight layout
and the numpy reference of ``kernels_cython``. Nothing is implemented yet; importing this package gives no
kernels.
"""

from __future__ import annotations

__all__: list[str] = []
