"""A GGUF reader and writer of our own (the container is small and documented), plus dequantizers.

Why not ``gguf.GGUFReader``: it raises on tensor types it does not know, and microsoft/BitNet's ``I2_S``
(type 36) is one of them.  This reader parses the container itself (magic ``GGUF``, version 2 or 3, tensor
count, key/value count, key/value pairs, tensor infos ``(name, n_dims, dims, type, offset)``, padding to
``general.alignment`` (default 32), data) through a read-only memory map, and checks every offset and size
against the file before anything is read, so a truncated or lying file raises :class:`CorruptModelError`
naming the file and the tensor, and an unknown type raises :class:`UnsupportedModelError`.

GGUF lists dims innermost first (``ne0`` = K); :class:`RawTensor` shapes are numpy order (outermost first).

Tensor types: F32, F16, BF16, Q8_0, Q6_K (dequantized to float32 here), TQ1_0, TQ2_0 and I2_S (ternary,
converted by :mod:`kernels_cython`'s converters).  I2_S stores ``N*K/4`` code bytes then a 32-byte tail whose
first 4 bytes are the float32 scale.

:func:`write_gguf` writes a file with any of these types from raw bytes (the tests use it for I2_S, which
``gguf.GGUFWriter`` cannot name).
"""

from __future__ import annotations

import math
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bitnet_actor.engine.errors import CorruptModelError, UnsupportedModelError
from bitnet_actor.engine.tensors import RawTensor, open_mmap

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    import numpy.typing as npt

__all__ = [
    "GGML_TYPES",
    "GGUFFile",
    "dequantize",
    "gguf_header",
    "quantize_q8_0",
    "tensor_nbytes",
    "write_gguf",
]

# ggml type id -> (name, elements per block, bytes per block); I2_S is special-cased (a 32-byte tail)
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4),
    1: ("F16", 1, 2),
    8: ("Q8_0", 32, 34),
    14: ("Q6_K", 256, 210),
    30: ("BF16", 1, 2),
    34: ("TQ1_0", 256, 54),
    35: ("TQ2_0", 256, 66),
    36: ("I2_S", 4, 1),
}
_TYPE_IDS = {name: tid for tid, (name, _, _) in GGML_TYPES.items()}
_KNOWN_UNSUPPORTED = {
    2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 9: "Q8_1", 10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K",
    15: "Q8_K", 16: "IQ2_XXS", 17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S",
    22: "IQ2_S", 23: "IQ4_XS", 24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64", 29: "IQ1_M",
}  # fmt: skip
_I2S_TAIL = 32
_MAGIC = b"GGUF"

# value types of the key/value section
_VT_FMT = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_VT_STRING, _VT_ARRAY = 8, 9


def tensor_nbytes(type_name: str, shape: tuple[int, ...]) -> int:
    """Bytes a tensor of this type and shape occupies.

    Args:
        type_name: a name of :data:`GGML_TYPES`.
        shape: numpy order.

    Returns:
        The size in bytes.

    Raises:
        ValueError: the innermost dimension is not a multiple of the block size.
    """
    tid = _TYPE_IDS[type_name]
    _, blk, bb = GGML_TYPES[tid]
    n = math.prod(shape)  # Python ints: dims that multiply past 2**64 must not wrap
    if type_name == "I2_S":
        return n // 4 + _I2S_TAIL
    if shape and shape[-1] % blk:
        raise ValueError(f"{type_name} needs the innermost dimension a multiple of {blk}, got {shape}")
    return n // blk * bb


class _Cursor:
    def __init__(self, buf: memoryview, path: Path) -> None:
        self.buf = buf
        self.pos = 0
        self.path = path

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > len(self.buf):
            raise CorruptModelError(
                f"{self.path}: truncated GGUF header while reading {what} (at byte {self.pos} of {len(self.buf)})"
            )

    def unpack(self, fmt: str, what: str) -> Any:
        size = struct.calcsize(fmt)
        self.need(size, what)
        value = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += size
        return value

    def string(self, what: str) -> str:
        n = self.unpack("<Q", what)
        self.need(n, what)
        raw = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CorruptModelError(f"{self.path}: {what} is not valid UTF-8") from exc

    def value(self, vtype: int, what: str) -> Any:
        if vtype in _VT_FMT:
            return self.unpack(_VT_FMT[vtype], what)
        if vtype == _VT_STRING:
            return self.string(what)
        if vtype == _VT_ARRAY:
            itype = self.unpack("<I", what)
            count = self.unpack("<Q", what)
            if itype in _VT_FMT and itype != 7:
                fmt = _VT_FMT[itype]
                size = struct.calcsize(fmt)
                self.need(count * size, what)
                arr = np.frombuffer(self.buf, dtype=np.dtype(fmt), count=count, offset=self.pos)
                self.pos += count * size
                return arr.tolist()
            if count > len(self.buf):
                raise CorruptModelError(f"{self.path}: {what}: array length {count} exceeds the file")
            return [self.value(itype, what) for _ in range(count)]
        raise CorruptModelError(f"{self.path}: {what} has unknown value type {vtype}")


class GGUFFile:
    """A memory-mapped GGUF file.

    Attributes:
        path: the file.
        version: the GGUF version.
        metadata: key -> plain Python value (str, int, float, bool or list thereof).
        tensors: name -> :class:`RawTensor` (shape in numpy order; ``data`` raw bytes for block types,
            typed for F32/F16/BF16 with BF16 as uint16).
        alignment: the data alignment.
    """

    def __init__(self, path: Path) -> None:
        """Parse the header and check every tensor's place in the file.

        Args:
            path: the file.

        Raises:
            ModelLoadError: unreadable.
            CorruptModelError: bad magic, truncated header, offsets or sizes outside the file, overlap.
            UnsupportedModelError: a tensor type this engine does not read.
        """
        self.path = path
        self._map, size = open_mmap(path)
        cur = _Cursor(memoryview(self._map), path)
        cur.need(4, "magic")
        if bytes(self._map[:4]) != _MAGIC:
            raise CorruptModelError(f"{path}: not a GGUF file (magic {bytes(self._map[:4])!r})")
        cur.pos = 4
        self.version = cur.unpack("<I", "version")
        if self.version not in (2, 3):
            raise UnsupportedModelError(f"{path}: GGUF version {self.version} is not supported (2 or 3)")
        n_tensors = cur.unpack("<Q", "tensor count")
        n_kv = cur.unpack("<Q", "key/value count")
        if n_tensors > size or n_kv > size:
            raise CorruptModelError(f"{path}: tensor count {n_tensors} / key count {n_kv} exceed the file")
        self.metadata: dict[str, Any] = {}
        for i in range(n_kv):
            key = cur.string(f"key #{i}")
            vtype = cur.unpack("<I", f"type of {key!r}")
            self.metadata[key] = cur.value(vtype, f"value of {key!r}")
        align = self.metadata.get("general.alignment", 32)
        if not isinstance(align, int) or align <= 0 or align % 8:
            raise CorruptModelError(f"{path}: general.alignment {align!r} is invalid")
        self.alignment = align
        infos = []
        for i in range(n_tensors):
            name = cur.string(f"name of tensor #{i}")
            n_dims = cur.unpack("<I", f"dims of tensor {name!r}")
            if n_dims > 8:
                raise CorruptModelError(f"{path}: tensor {name!r}: {n_dims} dimensions")
            dims = [cur.unpack("<Q", f"dims of tensor {name!r}") for _ in range(n_dims)]
            ttype = cur.unpack("<I", f"type of tensor {name!r}")
            offset = cur.unpack("<Q", f"offset of tensor {name!r}")
            infos.append((name, dims, ttype, offset))
        data_start = -(-cur.pos // align) * align
        buf = np.frombuffer(self._map, dtype=np.uint8)  # (size,)
        self.tensors: dict[str, RawTensor] = {}
        for name, dims, ttype, offset in infos:
            where = f"{path}: tensor {name!r}"
            if ttype not in GGML_TYPES:
                tname = _KNOWN_UNSUPPORTED.get(ttype, f"unknown type {ttype}")
                raise UnsupportedModelError(
                    f"{where}: GGUF tensor type {tname} (id {ttype}) is not supported "
                    f"(supported: {', '.join(n for n, _, _ in GGML_TYPES.values())})"
                )
            tname = GGML_TYPES[ttype][0]
            shape = tuple(int(d) for d in reversed(dims))
            try:
                nbytes = tensor_nbytes(tname, shape)
            except ValueError as exc:
                raise CorruptModelError(f"{where}: {exc}") from exc
            start = data_start + offset
            if offset % align:
                raise CorruptModelError(f"{where}: offset {offset} is not a multiple of the alignment {align}")
            if start + nbytes > size:
                raise CorruptModelError(
                    f"{where}: data [{start}, {start + nbytes}) lies past the end of the file ({size} bytes): "
                    f"truncated file or a header that lies about offsets"
                )
            raw = buf[start : start + nbytes]
            data: npt.NDArray[Any] = raw
            view = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}.get(tname)
            if view is not None:
                try:
                    data = raw.view(view).reshape(shape)
                except ValueError as exc:  # a dim past numpy's limit beside a zero dim
                    raise CorruptModelError(f"{where}: shape {shape} cannot be represented ({exc})") from exc
            self.tensors[name] = RawTensor(name, path, tname, shape, data)


# --------------------------------------------------------------------------------------------------------
# dequantization (numpy)


def dequantize(t: RawTensor) -> npt.NDArray[np.float32]:
    """Dequantize a non-ternary GGUF tensor to float32.

    Args:
        t: an F32, F16, BF16, Q8_0 or Q6_K tensor.

    Returns:
        float32 with ``t.shape``.

    Raises:
        CorruptModelError: a ternary or unknown type.
    """
    if t.dtype == "F32":
        return np.array(t.data, dtype=np.float32)
    if t.dtype == "F16":
        return t.data.astype(np.float32)
    if t.dtype == "BF16":
        return (t.data.astype(np.uint32) << np.uint32(16)).view(np.float32)
    if t.dtype == "Q8_0":
        blocks = t.data.reshape(-1, 34)
        d = np.ascontiguousarray(blocks[:, :2]).view(np.float16).astype(np.float32)  # (nb, 1)
        q = blocks[:, 2:].view(np.int8).astype(np.float32)  # (nb, 32)
        return (d * q).reshape(t.shape)
    if t.dtype == "Q6_K":
        return _dequant_q6_k(t.data).reshape(t.shape)
    raise CorruptModelError(f"{t.where()}: cannot dequantize type {t.dtype} to float")


def _dequant_q6_k(data: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    """Q6_K blocks of 256: ql[128], qh[64], int8 scales[16], fp16 d."""
    b = data.reshape(-1, 210)
    nb = b.shape[0]
    ql = b[:, :128].reshape(nb, 2, 64)  # (nb, half, 64)
    qh = b[:, 128:192].reshape(nb, 2, 32)  # (nb, half, 32)
    sc = b[:, 192:208].view(np.int8).astype(np.float32).reshape(nb, 2, 8)  # (nb, half, 8)
    d = np.ascontiguousarray(b[:, 208:210]).view(np.float16).astype(np.float32).reshape(nb, 1, 1)
    lo0, lo1 = ql[:, :, :32], ql[:, :, 32:]  # (nb, half, 32)
    q = np.empty((nb, 2, 4, 32), dtype=np.int16)  # (nb, half, quarter, l)
    q[:, :, 0] = (lo0 & 0xF) | (((qh >> 0) & 3) << 4)
    q[:, :, 1] = (lo1 & 0xF) | (((qh >> 2) & 3) << 4)
    q[:, :, 2] = (lo0 >> 4) | (((qh >> 4) & 3) << 4)
    q[:, :, 3] = (lo1 >> 4) | (((qh >> 6) & 3) << 4)
    q -= 32
    # scale index for element l of quarter j: sc[2*j + l // 16]
    s = sc.reshape(nb, 2, 4, 2, 1)  # (nb, half, quarter, l//16, 1)
    y = d[..., None, None] * s * q.reshape(nb, 2, 4, 2, 16).astype(np.float32)
    return y.reshape(nb * 256).astype(np.float32)


def quantize_q8_0(x: npt.NDArray[np.float32]) -> npt.NDArray[np.uint8]:
    """Quantize float32 to GGUF Q8_0 blocks (as ggml: ``d = amax / 127``, ``q = round(x / d)``).

    Args:
        x: float32 with the innermost dimension a multiple of 32.

    Returns:
        uint8 raw bytes (n / 32 * 34,).
    """
    blocks = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, 32)
    d = np.abs(blocks).max(axis=1) / np.float32(127)  # (nb,)
    inv = np.where(d > 0, np.float32(1) / np.where(d > 0, d, 1), 0).astype(np.float32)
    q = np.rint(blocks * inv[:, None]).astype(np.int8)  # (nb, 32)
    out = np.empty((blocks.shape[0], 34), dtype=np.uint8)
    out[:, :2] = d.astype(np.float16).reshape(-1, 1).view(np.uint8)
    out[:, 2:] = q.view(np.uint8)
    return out.reshape(-1)


# --------------------------------------------------------------------------------------------------------
# writing


def _pack_value(value: Any) -> bytes:
    if isinstance(value, bool):
        return struct.pack("<I?", 7, value)
    if isinstance(value, int):
        if -(2**31) <= value < 2**31:
            return struct.pack("<Ii", 5, value) if value < 0 else struct.pack("<II", 4, value)
        return struct.pack("<Iq", 11, value)
    if isinstance(value, float):
        return struct.pack("<If", 6, value)
    if isinstance(value, str):
        raw = value.encode("utf-8")
        return struct.pack("<IQ", _VT_STRING, len(raw)) + raw
    if isinstance(value, (list, tuple)):
        items = list(value)
        if not items:
            return struct.pack("<IIQ", _VT_ARRAY, 4, 0)
        first = items[0]
        if isinstance(first, str):
            body = b"".join(struct.pack("<Q", len(s.encode())) + s.encode() for s in items)
            return struct.pack("<IIQ", _VT_ARRAY, _VT_STRING, len(items)) + body
        if isinstance(first, bool):
            return struct.pack("<IIQ", _VT_ARRAY, 7, len(items)) + bytes(bool(v) for v in items)
        if isinstance(first, int):
            return struct.pack("<IIQ", _VT_ARRAY, 5, len(items)) + np.asarray(items, dtype="<i4").tobytes()
        if isinstance(first, float):
            return struct.pack("<IIQ", _VT_ARRAY, 6, len(items)) + np.asarray(items, dtype="<f4").tobytes()
    raise TypeError(f"cannot write a GGUF value of type {type(value).__name__}")


def gguf_header(
    metadata: Mapping[str, Any], infos: Sequence[tuple[str, str, tuple[int, ...]]], *, alignment: int = 32
) -> tuple[bytes, list[int]]:
    """The header of a GGUF v3 file, for writers that stream the tensors' data after it.

    Args:
        metadata: key -> str, int, float, bool or a list of one of them.
        infos: ``(name, type name, shape in numpy order)`` per tensor, in data order.
        alignment: data alignment (written as ``general.alignment`` when not 32).

    Returns:
        ``(header padded to the alignment, each tensor's offset from the data start)``; tensor ``i``'s data
        is followed by zero bytes up to the next multiple of ``alignment``.

    Raises:
        ValueError: a shape that does not fit its type.
    """
    meta = dict(metadata)
    if alignment != 32:
        meta["general.alignment"] = alignment
    head = bytearray(_MAGIC + struct.pack("<IQQ", 3, len(infos), len(meta)))
    for key, value in meta.items():
        raw = key.encode("utf-8")
        head += struct.pack("<Q", len(raw)) + raw + _pack_value(value)
    offsets = []
    offset = 0
    for name, tname, shape in infos:
        nm = name.encode("utf-8")
        head += struct.pack("<Q", len(nm)) + nm + struct.pack("<I", len(shape))
        head += b"".join(struct.pack("<Q", d) for d in reversed(shape))
        head += struct.pack("<IQ", _TYPE_IDS[tname], offset)
        offsets.append(offset)
        nbytes = tensor_nbytes(tname, shape)
        offset += nbytes + (-nbytes % alignment)
    head += b"\0" * (-len(head) % alignment)
    return bytes(head), offsets


def write_gguf(
    path: Path,
    metadata: Mapping[str, Any],
    tensors: Mapping[str, tuple[str, tuple[int, ...], npt.NDArray[Any]]],
    *,
    alignment: int = 32,
) -> None:
    """Write a GGUF v3 file.

    Args:
        path: the file to create.
        metadata: key -> str, int, float, bool or a list of one of them.
        tensors: name -> ``(type name, shape in numpy order, data)``; ``data`` is the raw bytes (uint8) for
            block types or an array of the plain type (F32/F16; BF16 as uint16).
        alignment: data alignment (written as ``general.alignment`` when not 32).

    Raises:
        ValueError: data of the wrong size for its type and shape.
    """
    blobs = []
    for name, (tname, shape, data) in tensors.items():
        raw_bytes = np.ascontiguousarray(data).view(np.uint8).reshape(-1).tobytes()
        if len(raw_bytes) != tensor_nbytes(tname, shape):
            raise ValueError(f"tensor {name!r}: {len(raw_bytes)} bytes for {tname} {shape}")
        blobs.append(raw_bytes + b"\0" * (-len(raw_bytes) % alignment))
    head, _ = gguf_header(
        metadata, [(name, tname, shape) for name, (tname, shape, _) in tensors.items()], alignment=alignment
    )
    with Path(path).open("wb") as fh:
        fh.write(head)
        for blob in blobs:
            fh.write(blob)
