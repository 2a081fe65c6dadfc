"""The OpenCL devices the tests run on: every device that builds our kernels, each a pytest parameter.

Each listed device is probed once per session by building every kernel of :file:`kernels_opencl/cl` on it
(the context is then reused by the tests, so nothing is built twice).  A device whose compiler fails is left
out of the parameters and reported once, by :func:`broken_report`, with the compiler's words: one broken
platform (a CPU driver whose LLVM does not know this CPU, say) costs one report instead of the same failure
in every OpenCL test, and the devices that work still run every test.

Where no device works (or pyopencl is missing) the one parameter skips with the reason; CI sets
``BITNET_TEST_REQUIRE_OPENCL=1`` so that :mod:`tests.kernels_opencl.test_devices` fails instead.
GPU and accelerator devices carry the ``gpu`` marker, so ``pytest -m gpu`` runs the tests on real GPUs only
(and ``-m "not gpu"`` on CPU devices such as the PoCL that ``ops/pocl.sh`` builds).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import pytest

import kernels_opencl


@dataclass
class Probe:
    """What the session found: devices that build our kernels, those that do not, and why none may."""

    working: list[kernels_opencl.DeviceInfo] = field(default_factory=list)
    broken: list[tuple[kernels_opencl.DeviceInfo, str]] = field(default_factory=list)
    why_none: str = ""


_contexts: dict[str, kernels_opencl.Context] = {}


@functools.cache
def probe() -> Probe:
    """List the devices and build every kernel on each (once per session)."""
    found = Probe()
    try:
        devs = kernels_opencl.list_devices()
    except kernels_opencl.OpenCLUnavailableError as exc:
        found.why_none = str(exc)
        return found
    for d in devs:
        try:
            ctx = kernels_opencl.Context(d.index)
            ctx.build_all()
        except kernels_opencl.KernelBuildError as exc:
            found.broken.append((d, exc.one_line(limit=600)))
            continue
        except kernels_opencl.OpenCLError as exc:
            found.broken.append((d, f"{d}: {exc}"))
            continue
        _contexts[d.index] = ctx
        found.working.append(d)
    if not found.working:
        found.why_none = (
            "no OpenCL device builds the kernels: " + "; ".join(why for _, why in found.broken)
            if found.broken
            else "no OpenCL platform lists a device (bash ops/pocl.sh install builds PoCL, a CPU driver)"
        )
    return found


def broken_report() -> str:
    """One line per listed device that cannot build our kernels (empty when there is none)."""
    return "\n".join(why for _, why in probe().broken)


def devices() -> list[kernels_opencl.DeviceInfo]:
    """The devices that build every kernel."""
    return probe().working


def device_params() -> list[Any]:
    """One pytest parameter per working device (its ``P:D`` selector), or one that skips with the reason."""
    found = probe()
    if not found.working:
        return [pytest.param(None, marks=pytest.mark.skip(reason=found.why_none), id="no-opencl")]
    return [
        pytest.param(
            d.index,
            marks=[pytest.mark.gpu] if d.kind in ("gpu", "accelerator") else [],
            id=f"{d.index}-{d.kind}",
        )
        for d in found.working
    ]


def context(selector: str) -> kernels_opencl.Context:
    """One context per device for the whole session (kernels are built once)."""
    if selector not in _contexts:
        _contexts[selector] = kernels_opencl.Context(selector)
    return _contexts[selector]
