"""Model loading: ``load_model`` (weights, tokenizer, threads and device in one call) and ``open_opencl``."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bitnet_actor.engine import ops
from bitnet_actor.engine.errors import DeviceError, ModelLoadError, UnsupportedModelError
from bitnet_actor.engine.loader import load_weights
from bitnet_actor.engine.model import Model
from kernels_opencl.device import OpenCLError

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["DEVICES", "load_model", "load_tokenizer", "open_opencl"]

DEVICES = ("cpu", "opencl", "auto")
"""Where a model can run."""

log = logging.getLogger(__name__)


def load_model(
    path: str | Path,
    *,
    device: str = "cpu",
    output: str = "exact",
    threads: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    opencl_device: str | None = None,
    kv_cache: str = "f32",
) -> Model:
    """Load a model from an HF directory or a GGUF file.

    Args:
        path: the directory or file.
        device: ``"cpu"``; ``"opencl"`` (the forward pass on an OpenCL device: an error when there is
            none); or ``"auto"`` (an OpenCL GPU or accelerator when one opens and its kernels build, else the
            CPU, with a line in the log saying why: an OpenCL *CPU* device such as PoCL is never chosen by
            ``auto``, the Cython kernels are several times faster on the same cores).
        output: ``"exact"``, ``"q8"`` or ``"q6"`` output layer (see :meth:`Model.set_output_layer`).
        threads: kernel threads (default: the kernels' default, ``$BITNET_THREADS`` or all cores).
        progress: called as ``progress(done, total)`` while tensors load (and again while they upload to
            an OpenCL device).
        opencl_device: the OpenCL device selector (default ``$BITNET_OPENCL_DEVICE`` or ``"auto"``; see
            :mod:`kernels_opencl.device`).
        kv_cache: ``"f32"`` or ``"f16"`` KV caches (see :meth:`Model.set_kv_cache`).

    Returns:
        The model, with its tokenizer when one is found (HF ``tokenizer.json`` or GGUF metadata).

    Raises:
        ValueError: an unknown device, or a bad ``output`` or ``kv_cache``.
        DeviceError: ``device="opencl"`` and no such device, or its kernels do not build (the message names
            the device and carries the compiler log).
        ModelLoadError: see :mod:`bitnet_actor.engine.errors`.
    """
    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    if kv_cache not in ("f32", "f16"):
        raise ValueError(f"kv_cache must be 'f32' or 'f16', got {kv_cache!r}")
    if threads is not None:
        ops.set_num_threads(threads)
    ctx = None
    if device != "cpu":
        ctx = open_opencl(opencl_device, required=device == "opencl")
    weights = load_weights(Path(path), progress)
    tokenizer = load_tokenizer(weights.tokenizer_source, where=Path(path))
    if tokenizer is not None and tokenizer.vocab_size > weights.config.vocab_size:
        raise UnsupportedModelError(
            f"{path}: the tokenizer has {tokenizer.vocab_size} tokens but the model's embedding has only"
            f" {weights.config.vocab_size} rows: ids past it could not be fed to the model"
        )
    if ctx is None:
        return Model(weights, tokenizer, output=output, kv_cache=kv_cache)
    try:
        return Model(weights, tokenizer, output=output, opencl=ctx, progress=progress, kv_cache=kv_cache)
    except OpenCLError as exc:
        if device == "opencl":
            raise DeviceError(f"OpenCL: {exc}") from exc
        log.warning("device auto: OpenCL failed (%s); running on the CPU", exc)
        return Model(weights, tokenizer, output=output, kv_cache=kv_cache)


def open_opencl(selector: str | None, *, required: bool) -> Any | None:
    """Open an OpenCL device and build the kernels a forward pass needs.

    Args:
        selector: see :mod:`kernels_opencl.device` (None: ``$BITNET_OPENCL_DEVICE`` or ``"auto"``).
        required: raise when it fails.  Else (``device="auto"``) each candidate that fails is passed over
            with one log line naming it and the compiler's words, and None comes back when none works.  A
            CPU OpenCL device is passed over before any kernel is built (the Cython kernels run faster
            there); with the selector ``"auto"`` every GPU and accelerator is a candidate, in listed order.

    Returns:
        A :class:`kernels_opencl.Context`, or None.

    Raises:
        DeviceError: ``required`` and no device opens or a kernel does not build.
    """
    import kernels_opencl

    sel = selector if selector is not None else os.environ.get("BITNET_OPENCL_DEVICE", "auto")
    if required:
        try:
            ctx = kernels_opencl.Context(sel)
            ctx.build_all()  # all now: a broken compiler fails at start, not mid-request
        except kernels_opencl.KernelBuildError as exc:
            raise DeviceError(f"OpenCL: {exc.one_line()}") from exc
        except OpenCLError as exc:
            raise DeviceError(f"OpenCL: {exc}") from exc
        return ctx
    candidates: list[str] = [sel]
    if sel.strip() in ("", "auto"):
        try:
            candidates = [d.index for d in kernels_opencl.list_devices() if d.kind in ("gpu", "accelerator")]
        except OpenCLError as exc:
            log.warning("device auto: no usable OpenCL device (%s); running on the CPU", exc)
            return None
        if not candidates:
            log.info("device auto: no OpenCL GPU or accelerator; running on the CPU")
            return None
    for cand in candidates:
        try:
            ctx = kernels_opencl.Context(cand)
            if not ctx.is_gpu:
                log.info("device auto: %s is a CPU OpenCL device; the Cython kernels run faster there", ctx.info)
                continue
            ctx.build_all()
        except kernels_opencl.KernelBuildError as exc:
            log.warning("device auto: passing over OpenCL device %s", exc.one_line())
            continue
        except OpenCLError as exc:
            log.warning("device auto: passing over OpenCL device %s (%s)", cand, exc)
            continue
        return ctx
    log.info("device auto: no OpenCL device works; running on the CPU")
    return None


def load_tokenizer(source: tuple[str, Any], *, where: Path | None = None) -> Any | None:
    """The tokenizer of a model, or None when there is none.

    Args:
        source: ``("hf", directory)`` or ``("gguf", metadata)``.
        where: the model file, named in errors about GGUF metadata (default ``GGUF metadata``).

    Returns:
        A :class:`~bitnet_actor.engine.tokenizer.Tokenizer`, or None.

    Raises:
        ModelLoadError: tokenizer files exist but cannot be read.
    """
    kind, src = source
    if kind == "hf":
        root = Path(src)
        if not (root / "tokenizer.json").is_file() and not (root / "tokenizer.model").is_file():
            return None
    elif kind != "gguf" or "tokenizer.ggml.tokens" not in src:
        return None
    try:
        from bitnet_actor.engine.tokenizer import Tokenizer
    except ImportError:
        return None
    try:
        if kind == "hf":
            return Tokenizer.from_hf_dir(Path(src))
        return Tokenizer.from_gguf_metadata(src)
    except ModelLoadError:
        raise
    except Exception as exc:
        name = src if kind == "hf" else f"{where}: GGUF metadata" if where is not None else "GGUF metadata"
        raise ModelLoadError(f"{name}: cannot load the tokenizer ({exc})") from exc
