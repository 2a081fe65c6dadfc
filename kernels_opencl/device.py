"""OpenCL platform/device choice, program cache and work-group sizes.

A :class:`Context` owns one device, its OpenCL context and in-order command queue, and the kernels built
for it (each ``.cl`` file of :file:`kernels_opencl/cl` is compiled once per context, with the shared
prelude :file:`common.clh` prepended; pyopencl also keeps the binaries in its on-disk cache, so a second
process skips the compiler).

Device selectors (``BITNET_OPENCL_DEVICE``):

* ``"auto"`` (default): the first GPU, else the first accelerator, else the first CPU device, over all
  platforms in the order the ICD loader lists them;
* ``"P:D"``: platform index ``P``, device index ``D`` (as :func:`list_devices` prints them);
* anything else: a case-insensitive fragment of ``"<platform name> / <device name>"``; the first match.

Errors: :class:`OpenCLUnavailableError` (pyopencl missing, no platform, no device, a selector that matches
nothing: the message lists what exists) and :class:`KernelBuildError` (names the file, the device and the
compiler's log).
"""

from __future__ import annotations

import os
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "CL_DIR",
    "Context",
    "DeviceInfo",
    "KernelBuildError",
    "OpenCLError",
    "OpenCLUnavailableError",
    "default_context",
    "list_devices",
]

CL_DIR = Path(__file__).with_name("cl")
"""Where the ``.cl`` sources live (one kernel per file, named by op and types)."""

MT = 8
"""Activation rows per work-group of the matrix kernels (compile-time ``MT``)."""

_BUILD_OPTIONS = ("-cl-fp32-correctly-rounded-divide-sqrt",)


class OpenCLError(RuntimeError):
    """Base of this package's errors."""


class OpenCLUnavailableError(OpenCLError):
    """No usable OpenCL platform or device (or pyopencl is not installed)."""


class KernelBuildError(OpenCLError):
    """A kernel failed to compile; the message names the file and device and carries the build log.

    Attributes:
        source: the ``.cl`` file's name (or the name a program was built under).
        device: the device, as :class:`DeviceInfo` prints it.
        log: the compiler's log (or the OpenCL error when the log is empty).
    """

    def __init__(self, source: str, device: str, log: str) -> None:
        super().__init__(f"OpenCL kernel {source} failed to build on {device}; compiler log:\n{log}")
        self.source = source
        self.device = device
        self.log = log

    def one_line(self, limit: int = 400) -> str:
        """The error on one line, for a log: the device, the file and the compiler's first words.

        Args:
            limit: the most characters of the compiler log kept.
        """
        words = " ".join(self.log.split())
        if len(words) > limit:
            words = words[: limit - 3] + "..."
        return f"kernel {self.source} does not build on {self.device}: {words}"


@dataclass(frozen=True)
class DeviceInfo:
    """One OpenCL device as the ICD loader lists it.

    Attributes:
        index: ``"P:D"`` (platform index, device index).
        platform: the platform's name.
        name: the device's name.
        kind: ``"gpu"``, ``"cpu"``, ``"accelerator"`` or ``"other"``.
        global_mem: bytes of device memory.
        compute_units: compute units.
    """

    index: str
    platform: str
    name: str
    kind: str
    global_mem: int
    compute_units: int

    def __str__(self) -> str:
        return f"{self.index} {self.platform} / {self.name} ({self.kind}, {self.global_mem >> 20} MiB)"


def _cl() -> Any:
    try:
        import pyopencl
    except ImportError as exc:
        raise OpenCLUnavailableError(
            "pyopencl is not installed (pip install pyopencl, and an OpenCL driver: a GPU vendor's, or PoCL "
            "for the CPU via bash ops/pocl.sh install)"
        ) from exc
    return pyopencl


def _devices() -> list[tuple[DeviceInfo, Any]]:
    cl = _cl()
    try:
        platforms = cl.get_platforms()
    except cl.Error as exc:  # PLATFORM_NOT_FOUND_KHR when the ICD loader finds nothing
        raise OpenCLUnavailableError(f"no OpenCL platform found ({exc})") from exc
    out = []
    for pi, p in enumerate(platforms):
        try:
            devs = p.get_devices()
        except cl.Error:  # a platform with no devices
            continue
        for di, d in enumerate(devs):
            t = d.type
            kind = (
                "gpu"
                if t & cl.device_type.GPU
                else "cpu"
                if t & cl.device_type.CPU
                else "accelerator"
                if t & cl.device_type.ACCELERATOR
                else "other"
            )
            info = DeviceInfo(
                f"{pi}:{di}", p.name.strip(), d.name.strip(), kind, int(d.global_mem_size), int(d.max_compute_units)
            )
            out.append((info, d))
    return out


def list_devices() -> list[DeviceInfo]:
    """Every OpenCL device on this machine.

    Returns:
        The devices (empty when there is no platform).

    Raises:
        OpenCLUnavailableError: pyopencl is not installed.
    """
    try:
        return [info for info, _ in _devices()]
    except OpenCLUnavailableError as exc:
        if "not installed" in str(exc):
            raise
        return []


def _select(selector: str) -> tuple[DeviceInfo, Any]:
    devs = _devices()
    if not devs:
        raise OpenCLUnavailableError("no OpenCL device found (no platform lists a device)")
    sel = selector.strip()
    listing = "; ".join(str(i) for i, _ in devs)
    if sel in ("", "auto"):
        for kind in ("gpu", "accelerator", "cpu", "other"):
            for info, d in devs:
                if info.kind == kind:
                    return info, d
    if ":" in sel and all(part.strip().isdigit() for part in sel.split(":", 1)):
        for info, d in devs:
            if info.index == ":".join(p.strip() for p in sel.split(":", 1)):
                return info, d
        raise OpenCLUnavailableError(f"OpenCL device {sel!r} does not exist; devices: {listing}")
    frag = sel.lower()
    for info, d in devs:
        if frag in f"{info.platform} / {info.name}".lower():
            return info, d
    raise OpenCLUnavailableError(f"no OpenCL device matches {sel!r}; devices: {listing}")


def _pow2_floor(n: int) -> int:
    return 1 << (max(1, n).bit_length() - 1)


class Context:
    """One device, its context and queue, and the kernels built for it.

    Attributes:
        info: the device.
        device: the pyopencl device.
        ctx: the pyopencl context.
        queue: an in-order command queue.
        exact_divide: the device rounds float division correctly (activation scales bit for bit).
    """

    def __init__(self, selector: str | None = None) -> None:
        """Open a device.

        Args:
            selector: see the module docstring; default ``$BITNET_OPENCL_DEVICE`` or ``"auto"``.

        Raises:
            OpenCLUnavailableError: no such device.
        """
        cl = _cl()
        self.cl = cl
        sel = selector if selector is not None else os.environ.get("BITNET_OPENCL_DEVICE", "auto")
        self.info, self.device = _select(sel)
        if not self.device.endian_little:
            raise OpenCLUnavailableError(f"OpenCL device {self.info}: big-endian devices are not supported")
        self.ctx = cl.Context([self.device])
        self.queue = cl.CommandQueue(self.ctx)
        fp = int(self.device.single_fp_config)
        self.exact_divide = bool(fp & cl.device_fp_config.CORRECTLY_ROUNDED_DIVIDE_SQRT)
        self._options = [f"-DMT={MT}", *(_BUILD_OPTIONS if self.exact_divide else ())]
        self._kernels: dict[str, Any] = {}
        self._wg: dict[tuple[str, int], int] = {}
        self._lock = threading.Lock()
        self._fill_queue: Any = None
        self.lock = threading.RLock()
        """Held around a sequence of launches: kernels are shared, and setting arguments then enqueueing is not
        atomic, so two threads launching on one context must take turns."""
        self._prelude = (CL_DIR / "common.clh").read_text()

    def __repr__(self) -> str:
        return f"Context({self.info})"

    @property
    def is_gpu(self) -> bool:
        """Whether the device is a GPU or accelerator (not a CPU)."""
        return self.info.kind in ("gpu", "accelerator")

    def kernel(self, name: str) -> Any:
        """The kernel ``name`` (file ``cl/<name>.cl``), built on first use.

        Args:
            name: the kernel's (and file's) name.

        Returns:
            A ``pyopencl.Kernel``.  Not safe to set arguments on from two threads at once: callers that
            share a context serialize their launches (the engine holds its model lock).

        Raises:
            KernelBuildError: the compiler failed; its log is in the message.
        """
        k = self._kernels.get(name)
        if k is not None:
            return k
        with self._lock:
            k = self._kernels.get(name)
            if k is None:
                k = self._build(name)
                self._kernels[name] = k
        return k

    def build_all(self) -> None:
        """Build every kernel of :file:`kernels_opencl/cl` now, so a compiler that cannot fails here.

        Raises:
            KernelBuildError: the first kernel that does not build.
        """
        for src in sorted(CL_DIR.glob("*.cl")):
            self.kernel(src.stem)

    def build_program(self, name: str, source: str) -> Any:
        """Compile OpenCL C for this device, with the shared prelude and this context's options.

        Args:
            name: what the error names the program by (a file name).
            source: the program's OpenCL C, without the prelude.

        Returns:
            The built ``pyopencl.Program``.

        Raises:
            KernelBuildError: the compiler failed; its log is in the message.
        """
        cl = self.cl
        prg = cl.Program(self.ctx, self._prelude + "\n" + source)
        try:
            with warnings.catch_warnings():  # a compiler's remarks are not errors (pyopencl warns on any log)
                warnings.simplefilter("ignore", cl.CompilerWarning)
                prg.build(options=self._options)
        except cl.Error as exc:
            try:
                log = prg.get_build_info(self.device, cl.program_build_info.LOG)
            except cl.Error:
                log = ""
            raise KernelBuildError(name, str(self.info), (log or "").strip() or str(exc).strip()) from exc
        return prg

    def _build(self, name: str) -> Any:
        path = CL_DIR / f"{name}.cl"
        if not path.is_file():
            raise KernelBuildError(path.name, str(self.info), f"no OpenCL source {path}")
        return self.cl.Kernel(self.build_program(path.name, path.read_text()), name)

    def work_group(self, name: str, want: int) -> int:
        """A work-group size for kernel ``name``: a power of two <= ``want`` the device and kernel allow.

        Args:
            name: the kernel.
            want: the preferred size.

        Returns:
            The size (>= 1).
        """
        key = (name, want)
        wg = self._wg.get(key)
        if wg is None:
            k = self.kernel(name)
            try:
                limit = int(k.get_work_group_info(self.cl.kernel_work_group_info.WORK_GROUP_SIZE, self.device))
            except self.cl.Error:  # a driver that cannot say: the safe fallback
                limit = 1
            limit = min(limit, int(self.device.max_work_group_size), int(self.device.max_work_item_sizes[0]))
            wg = _pow2_floor(min(want, limit))
            self._wg[key] = wg
        return wg

    # ------------------------------------------------------------------------------------------ buffers

    def to_device(self, a: np.ndarray[Any, Any]) -> Any:
        """Copy a host array into a new read-only device buffer.

        Args:
            a: the array (made C-contiguous; an empty array gets a 1-byte buffer).

        Returns:
            The buffer.
        """
        cl = self.cl
        a = np.ascontiguousarray(a)
        if a.nbytes == 0:
            return cl.Buffer(self.ctx, cl.mem_flags.READ_ONLY, 1)
        self.check_alloc(a.nbytes)
        try:
            return cl.Buffer(self.ctx, cl.mem_flags.READ_ONLY | cl.mem_flags.COPY_HOST_PTR, hostbuf=a)
        except cl.Error as exc:
            raise OpenCLError(f"cannot allocate {a.nbytes} bytes on {self.info}: {exc}") from exc

    def empty(self, nbytes: int, *, touch: bool = False) -> Any:
        """A new read-write device buffer of ``nbytes`` (at least 1).

        Args:
            nbytes: its size.
            touch: fill it with zeros and wait, so that a driver that allocates lazily (most GPU drivers do)
                fails here rather than in a later launch.  The fill goes to a queue of its own: it never waits
                for work already queued (a step running in another thread).

        Raises:
            OpenCLError: larger than the device's largest allocation, or the device is out of memory.
        """
        cl = self.cl
        self.check_alloc(nbytes)
        try:
            buf = cl.Buffer(self.ctx, cl.mem_flags.READ_WRITE, max(1, int(nbytes)))
            if touch:
                with self._lock:
                    if self._fill_queue is None:
                        self._fill_queue = cl.CommandQueue(self.ctx)
                cl.enqueue_fill_buffer(self._fill_queue, buf, np.uint8(0), 0, max(1, int(nbytes))).wait()
        except cl.Error as exc:
            raise OpenCLError(f"cannot allocate {nbytes} bytes on {self.info}: {exc}") from exc
        return buf

    def check_alloc(self, nbytes: int) -> None:
        """Refuse a buffer larger than the device's largest allocation, naming both sizes.

        Raises:
            OpenCLError: too large.
        """
        limit = int(self.device.max_mem_alloc_size)
        if nbytes > limit:
            raise OpenCLError(
                f"a buffer of {nbytes >> 20} MiB is more than {self.info} allocates at once ({limit >> 20} MiB)"
            )

    def write(self, buf: Any, a: np.ndarray[Any, Any]) -> None:
        """Copy a host array into ``buf`` (queued; the host array is not reused until the queue runs it)."""
        if a.nbytes:
            self.cl.enqueue_copy(self.queue, buf, np.ascontiguousarray(a), is_blocking=True)

    def read(self, buf: Any, out: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """Copy ``buf``'s first ``out.nbytes`` bytes into ``out`` and wait.

        Returns:
            ``out``.
        """
        if out.nbytes:
            self.cl.enqueue_copy(self.queue, out, buf, is_blocking=True)
        return out

    def finish(self) -> None:
        """Wait for every queued command."""
        self.queue.finish()


_default: Context | None = None
_default_lock = threading.Lock()


def default_context() -> Context:
    """The process's default context (``$BITNET_OPENCL_DEVICE``), opened on first use.

    Raises:
        OpenCLUnavailableError: no such device.
    """
    global _default
    with _default_lock:
        if _default is None:
            _default = Context()
        return _default
