"""The OpenCL device list the tests run on, and how a kernel that does not build is reported."""

from __future__ import annotations

import os

import pytest

import kernels_opencl
from kernels_opencl.device import CL_DIR
from tests.kernels_opencl.devices import broken_report, context, probe


def test_listed_devices_build_our_kernels() -> None:
    """Every OpenCL device listed here builds every kernel; the tests run on each that does.

    A device that cannot build them (a driver whose compiler does not know this CPU, say) is left out of the
    OpenCL tests and this one check names it with the compiler's words: skipped, not failed, where another
    device works, since it is the machine's driver that is broken and the kernels are still tested on a
    device that works.  Where none works the check fails if ``BITNET_TEST_REQUIRE_OPENCL=1`` (CI sets it,
    having built PoCL: a CI run must not pass with its OpenCL tests silently skipped), else it skips.
    """
    found = probe()
    if not found.working:
        if os.environ.get("BITNET_TEST_REQUIRE_OPENCL") == "1":
            pytest.fail(f"BITNET_TEST_REQUIRE_OPENCL=1 but {found.why_none}")
        pytest.skip(found.why_none)
    names = sorted(p.stem for p in CL_DIR.glob("*.cl"))
    assert names, f"no kernels in {CL_DIR}"
    for d in found.working:
        ctx = context(d.index)
        assert all(ctx.kernel(n).function_name == n for n in names)
    if found.broken:
        pytest.skip(f"left out of the OpenCL tests, its kernels do not build: {broken_report()}")


def test_a_kernel_that_does_not_build_names_the_device_and_the_compilers_words(
    cl_ctx: kernels_opencl.Context,
) -> None:
    with pytest.raises(kernels_opencl.KernelBuildError) as caught:
        cl_ctx.build_program("broken.cl", "__kernel void k(__global int *a) { a[0] = no_such_name; }")
    exc = caught.value
    assert exc.source == "broken.cl"
    assert exc.device == str(cl_ctx.info)
    assert "no_such_name" in exc.log
    prefix = f"kernel broken.cl does not build on {cl_ctx.info}: "
    line = exc.one_line()
    assert "\n" not in line
    assert line.startswith(prefix)
    assert "no_such_name" in line
    short = exc.one_line(limit=40)
    assert short.endswith("...")
    assert len(short) == len(prefix) + 40
