"""Memory-mapped tensor files: safetensors (HF) and the tensor records shared with the GGUF reader.

A :class:`RawTensor` is a read-only view into a memory map (nothing is copied when a file is opened), with
the file and tensor name kept for error messages.  ``safetensors`` is read by this module itself (an 8-byte
little-endian header length, a JSON header ``name -> {dtype, shape, data_offsets}`` and the data); every
offset, size and dtype is checked against the file before a byte of data is touched, so a truncated or lying
file raises :class:`CorruptModelError` naming the file and the tensor.
"""

from __future__ import annotations

import json
import math
import mmap
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from bitnet_actor.engine.errors import CorruptModelError, ModelLoadError, UnsupportedModelError

if TYPE_CHECKING:
    from pathlib import Path

    import numpy.typing as npt

__all__ = ["RawTensor", "SafetensorsFile", "open_mmap", "to_float32"]

# safetensors dtype -> (numpy dtype of the view, logical name)
_ST_DTYPES: dict[str, tuple[Any, str]] = {
    "F32": (np.float32, "F32"),
    "F16": (np.float16, "F16"),
    "BF16": (np.uint16, "BF16"),
    "F64": (np.float64, "F64"),
    "U8": (np.uint8, "U8"),
    "I8": (np.int8, "I8"),
    "I16": (np.int16, "I16"),
    "I32": (np.int32, "I32"),
    "I64": (np.int64, "I64"),
    "BOOL": (np.bool_, "BOOL"),
}


@dataclass(frozen=True)
class RawTensor:
    """One tensor as stored.

    Attributes:
        name: the tensor's name in its file.
        file: the file it lives in.
        dtype: the stored type's name: F32, F16, BF16, U8, ... or a GGUF type name (Q8_0, TQ2_0, I2_S, ...).
        shape: the logical shape in numpy order (outermost first).
        data: a read-only view of the stored data: typed for plain dtypes (BF16 as uint16), raw uint8 bytes
            for block-quantized GGUF types.
    """

    name: str
    file: Path
    dtype: str
    shape: tuple[int, ...]
    data: npt.NDArray[Any]

    def where(self) -> str:
        """``file: tensor name`` for error messages."""
        return f"{self.file}: tensor {self.name!r}"


def open_mmap(path: Path) -> tuple[mmap.mmap, int]:
    """Map a file read-only.

    Args:
        path: the file.

    Returns:
        ``(map, size)``; an empty file gives an empty bytes-like stand-in is not possible, so it raises.

    Raises:
        ModelLoadError: the file cannot be opened.
        CorruptModelError: the file is empty.
    """
    try:
        with path.open("rb") as fh:
            size = path.stat().st_size
            if size == 0:
                raise CorruptModelError(f"{path}: the file is empty")
            return mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ), size
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read ({exc.strerror or exc})") from exc


def to_float32(t: RawTensor) -> npt.NDArray[np.float32]:
    """Convert a plain float tensor (F32, F16, BF16, F64) to a new float32 array.

    Args:
        t: the tensor.

    Returns:
        float32 with ``t.shape``.

    Raises:
        CorruptModelError: the dtype is not a float type.
    """
    if t.dtype == "F32":
        return np.array(t.data, dtype=np.float32)
    if t.dtype in ("F16", "F64"):
        return t.data.astype(np.float32)
    if t.dtype == "BF16":
        return (t.data.astype(np.uint32) << np.uint32(16)).view(np.float32)
    raise CorruptModelError(f"{t.where()}: expected a float tensor, found dtype {t.dtype}")


class SafetensorsFile:
    """A memory-mapped ``.safetensors`` file.

    Attributes:
        path: the file.
        tensors: name -> :class:`RawTensor`.
        metadata: the header's ``__metadata__``.
    """

    def __init__(self, path: Path) -> None:
        """Map the file and check its header.

        Args:
            path: the file.

        Raises:
            ModelLoadError: unreadable.
            CorruptModelError: a truncated file, a malformed header, an offset or size that does not fit.
            UnsupportedModelError: a dtype this engine does not know.
        """
        self.path = path
        self._map, size = open_mmap(path)
        if size < 8:
            raise CorruptModelError(f"{path}: truncated safetensors file ({size} bytes, no header)")
        hlen = int.from_bytes(self._map[:8], "little")
        if hlen <= 0 or 8 + hlen > size:
            raise CorruptModelError(
                f"{path}: safetensors header length {hlen} does not fit the file ({size} bytes): truncated?"
            )
        try:
            header = json.loads(bytes(self._map[8 : 8 + hlen]).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CorruptModelError(f"{path}: the safetensors header is not valid JSON ({exc})") from exc
        if not isinstance(header, dict):
            raise CorruptModelError(f"{path}: the safetensors header is not a JSON object")
        meta = header.pop("__metadata__", None)
        self.metadata: dict[str, str] = meta if isinstance(meta, dict) else {}
        base = 8 + hlen
        buf = np.frombuffer(self._map, dtype=np.uint8)  # (size,) read-only view of the map
        self.tensors: dict[str, RawTensor] = {}
        for name, info in header.items():
            self.tensors[name] = self._tensor(name, info, buf, base, size)

    def _tensor(self, name: str, info: Any, buf: npt.NDArray[np.uint8], base: int, size: int) -> RawTensor:
        where = f"{self.path}: tensor {name!r}"
        if not isinstance(info, dict):
            raise CorruptModelError(f"{where}: malformed header entry")
        dtype, shape, offs = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dtype not in _ST_DTYPES:
            raise UnsupportedModelError(f"{where}: dtype {dtype!r} is not supported")
        if (
            not isinstance(shape, list)
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
            or not isinstance(offs, list)
            or len(offs) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offs)
        ):
            raise CorruptModelError(f"{where}: malformed shape or data_offsets in the header")
        np_dtype, logical = _ST_DTYPES[dtype]
        begin, end = offs
        nbytes = math.prod(shape) * np.dtype(np_dtype).itemsize  # Python ints: [2**62, 4] must not wrap to 0
        if begin < 0 or end < begin or end - begin != nbytes:
            raise CorruptModelError(
                f"{where}: data_offsets {offs} do not match shape {shape} of {dtype} ({nbytes} bytes)"
            )
        if base + end > size:
            raise CorruptModelError(
                f"{where}: data ends at byte {base + end} but the file has {size} bytes (truncated file?)"
            )
        raw = buf[base + begin : base + end]
        if (base + begin) % np.dtype(np_dtype).itemsize:
            raw = raw.copy()  # misaligned: a copy is aligned
        try:
            data = raw.view(np_dtype).reshape(shape)
        except ValueError as exc:  # a dim past numpy's limit beside a zero dim
            raise CorruptModelError(f"{where}: shape {shape} cannot be represented ({exc})") from exc
        return RawTensor(name, self.path, logical, tuple(shape), data)
