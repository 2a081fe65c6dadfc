"""bitnet-actor: self-hostable, multi-tenant serving of BitNet b1.58 (ternary) language models on Trio."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("bitnet-actor")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without an install
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
