"""``cl_ctx``: an OpenCL context on each device found (see :mod:`tests.kernels_opencl.devices`)."""

from __future__ import annotations

import pytest

import kernels_opencl
from tests.kernels_opencl.devices import context, device_params


@pytest.fixture(params=device_params())
def cl_ctx(request: pytest.FixtureRequest) -> kernels_opencl.Context:
    """A context on one device."""
    return context(request.param)
