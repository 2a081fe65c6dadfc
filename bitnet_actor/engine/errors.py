"""Errors raised by the model engine.

The tree (under :class:`bitnet_actor.errors.BitnetError`)::

    EngineError                      anything the engine raises on purpose
    ├── ModelLoadError               a model could not be loaded (path missing, unreadable, ...)
    │   ├── CorruptModelError        a file is truncated, corrupt or inconsistent: names the file and the tensor
    │   ├── UnsupportedModelError    the architecture, quantization method or tensor type is not supported
    │   └── DeviceError              the device asked for (OpenCL) cannot run it: none found, kernels do not build
    ├── ContextLengthError           (also a ValueError) prompt + max_tokens exceeds the context length
    └── ConversionCancelled          a conversion stopped on request (nothing left at the destination)

Argument errors (a bad sampling parameter, a token id out of range) are plain ``ValueError`` naming the field.
"""

from __future__ import annotations

from bitnet_actor.errors import BitnetError

__all__ = [
    "ContextLengthError",
    "ConversionCancelled",
    "CorruptModelError",
    "DeviceError",
    "EngineError",
    "ModelLoadError",
    "UnsupportedModelError",
]


class EngineError(BitnetError):
    """Base of the engine's errors."""


class ModelLoadError(EngineError):
    """A model could not be loaded."""


class CorruptModelError(ModelLoadError):
    """A model file is truncated, corrupt or inconsistent with itself or its config."""


class UnsupportedModelError(ModelLoadError):
    """The model's architecture, quantization method or a tensor type is not supported."""


class DeviceError(ModelLoadError):
    """The compute device asked for cannot be used (no OpenCL device matches, a kernel fails to build)."""


class ContextLengthError(EngineError, ValueError):
    """A sequence would not fit the model's context length."""


class ConversionCancelled(EngineError):
    """A model conversion was cancelled (``should_stop()`` said so); nothing was left at the destination."""
