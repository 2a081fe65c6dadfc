"""The OpenCL devices the tests run on: every device found, each a pytest parameter.

Where there is no OpenCL platform (or pyopencl is missing) the one parameter skips with that reason.
GPU and accelerator devices carry the ``gpu`` marker, so ``pytest -m gpu`` runs the tests on real GPUs only
(and ``-m "not gpu"`` on CPU devices such as PoCL, which CI installs).
"""

from __future__ import annotations

from typing import Any

import pytest

import kernels_opencl


def _find() -> tuple[list[kernels_opencl.DeviceInfo], str]:
    try:
        devs = kernels_opencl.list_devices()
    except kernels_opencl.OpenCLUnavailableError as exc:
        return [], str(exc)
    return devs, "no OpenCL platform lists a device (CI installs PoCL: pip install pocl-binary-distribution)"


DEVICES, WHY_NONE = _find()


def device_params() -> list[Any]:
    """One pytest parameter per device (its ``P:D`` selector), or one that skips with the reason."""
    if not DEVICES:
        return [pytest.param(None, marks=pytest.mark.skip(reason=WHY_NONE), id="no-opencl")]
    return [
        pytest.param(
            d.index,
            marks=[pytest.mark.gpu] if d.kind in ("gpu", "accelerator") else [],
            id=f"{d.index}-{d.kind}",
        )
        for d in DEVICES
    ]


_contexts: dict[str, kernels_opencl.Context] = {}


def context(selector: str) -> kernels_opencl.Context:
    """One context per device for the whole session (kernels are built once)."""
    if selector not in _contexts:
        _contexts[selector] = kernels_opencl.Context(selector)
    return _contexts[selector]
