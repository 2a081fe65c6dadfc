"""Build the Cython kernels.

Every ``kernels_cython/*.pyx`` and ``bitnet_actor/engine/*.pyx`` becomes an extension module built with
-O3 and OpenMP. By default the code is compiled for the build machine's CPU (``-march=native``). Set
``BITNET_PORTABLE_BUILD=1`` for a binary that runs on any x86-64 CPU (``-march=x86-64-v2``); the kernels
still pick AVX2 / AVX-512 paths at run time where the CPU has them, because those paths are compiled with
per-function target attributes.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

HERE = Path(__file__).parent


def _compile_args() -> list[str]:
    args = ["-O3", "-fopenmp", "-fno-math-errno", "-Wno-unused-function", "-Wno-unreachable-code"]
    portable = os.environ.get("BITNET_PORTABLE_BUILD", "").lower() in {"1", "true", "yes"}
    if sys.platform.startswith("linux") and os.uname().machine in {"x86_64", "AMD64"}:
        args.append("-march=x86-64-v2" if portable else "-march=native")
    elif not portable:
        args.append("-mcpu=native")
    return args


_PXDS = sorted((HERE / "kernels_cython").glob("*.pxd"))


def _extensions() -> list[Extension]:
    sources = sorted((HERE / "kernels_cython").glob("*.pyx")) + sorted((HERE / "bitnet_actor" / "engine").glob("*.pyx"))
    return [
        Extension(
            ".".join(pyx.relative_to(HERE).with_suffix("").parts),
            [str(pyx.relative_to(HERE))],
            include_dirs=[np.get_include()],
            extra_compile_args=_compile_args(),
            extra_link_args=["-fopenmp"],
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
            # the C headers beside the .pyx and the .pxd files (a change to one rebuilds the extension)
            depends=[
                str(h.relative_to(HERE))
                for h in sorted(pyx.parent.glob("*.h")) + sorted(pyx.parent.glob("*.inc")) + _PXDS
            ],
        )
        for pyx in sources
    ]


setup(
    ext_modules=cythonize(
        _extensions(),
        # the engine's extension cimports kernels_cython/_ternary.pxd
        include_path=[str(HERE)],
        compiler_directives={
            "language_level": "3",
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
    ),
)
