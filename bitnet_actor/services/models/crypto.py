"""The encrypted-object format: streamed AES-256-GCM in authenticated chunks, with random access by chunk.

Every model object is encrypted with its own data key (DEK, 32 random bytes). The layout::

    header   magic "BNEO" | version 1 | alg 1 (AES-256-GCM) | chunk size u32 | nonce prefix 8 B | data key id 16 B
    chunk 0  AES-GCM(plaintext[0 : C]) + 16-byte tag
    chunk 1  ...
    chunk n-1 the final chunk: 1..C plaintext bytes (0 only for an empty object, which still has one chunk)

Chunk ``i`` is sealed with the nonce ``prefix || u32(i)`` and the associated data ``header || u64(i) ||
final``, where ``final`` is 1 for the last chunk only. So:

* **tampering** (any flipped bit, the header's too) fails that chunk's tag;
* **reordering** fails: chunk ``j`` at position ``i`` has the wrong nonce and index;
* **truncation** at a chunk boundary fails: the new last chunk was sealed with ``final = 0``; so does
  **appending** (the old final chunk is no longer last);
* **swapping** chunks between objects fails: another object has another DEK and another data key id in
  its header (the id names the row holding the wrapped DEK, so an object can't pose as another either).

Every chunk but the last holds exactly ``C`` bytes, so chunk ``i`` starts at ``HEADER_SIZE + i * (C + 16)``
and a byte range of the plaintext decrypts from the few chunks that cover it (:class:`RangeDecryptor`).

The streams here are plain classes with ``__anext__`` (no async generators to finalize) and hold at most
about two chunks at a time. Hashing and sealing a chunk of more than 64 KiB run in a worker thread (one hop
per chunk): SHA-256 of 1 MiB takes about a millisecond, too long to hold the event loop.
"""

from __future__ import annotations

import hashlib
import struct
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Self

import trio
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bitnet_actor.errors import BitnetError

if TYPE_CHECKING:
    from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "HEADER_SIZE",
    "MAX_CHUNK_SIZE",
    "MIN_CHUNK_SIZE",
    "TAG_SIZE",
    "DecryptingStream",
    "EncryptingStream",
    "Header",
    "ObjectIntegrityError",
    "RangeDecryptor",
    "ciphertext_size",
    "plaintext_size",
]

MAGIC: Final = b"BNEO"
VERSION: Final = 1
ALG_AES_256_GCM: Final = 1
_HEADER = struct.Struct(">4sBBI8s16s")
HEADER_SIZE: Final = _HEADER.size  # 34
TAG_SIZE: Final = 16
DEFAULT_CHUNK_SIZE: Final = 1024 * 1024
MIN_CHUNK_SIZE: Final = 4096
MAX_CHUNK_SIZE: Final = 64 * 1024 * 1024  # bounds what a reader buffers, even for a forged header
_MAX_CHUNKS: Final = 2**32  # the nonce's counter is 32 bits


class ObjectIntegrityError(BitnetError):
    """An encrypted object failed authentication: tampered, truncated, extended, reordered, or another
    object's data. ``str(err)`` says which check failed; nothing of the plaintext is released past it."""


@dataclass(frozen=True, slots=True)
class Header:
    """The header of an encrypted object.

    Attributes:
        chunk_size: Plaintext bytes per chunk (all but the last chunk hold exactly this many).
        nonce_prefix: 8 random bytes, the first part of every chunk's nonce.
        data_key_id: The id of the data key (and of the object) this ciphertext belongs to.
    """

    chunk_size: int
    nonce_prefix: bytes
    data_key_id: uuid.UUID

    def pack(self) -> bytes:
        """Return the header's bytes."""
        return _HEADER.pack(MAGIC, VERSION, ALG_AES_256_GCM, self.chunk_size, self.nonce_prefix, self.data_key_id.bytes)

    @classmethod
    def parse(cls, raw: bytes, *, expected_id: uuid.UUID) -> Header:
        """Parse and check a header.

        Args:
            raw: The first :data:`HEADER_SIZE` bytes of the object.
            expected_id: The data key id the caller looked the object up by.

        Returns:
            The header.

        Raises:
            ObjectIntegrityError: It is not a header of ours, or belongs to another object.
        """
        if len(raw) < HEADER_SIZE:
            raise ObjectIntegrityError(f"encrypted object too short for a header ({len(raw)} bytes)")
        magic, version, alg, chunk_size, prefix, key_id = _HEADER.unpack(raw[:HEADER_SIZE])
        if magic != MAGIC:
            raise ObjectIntegrityError("not an encrypted object (bad magic)")
        if version != VERSION or alg != ALG_AES_256_GCM:
            raise ObjectIntegrityError(f"unsupported encrypted-object version {version} / algorithm {alg}")
        if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
            raise ObjectIntegrityError(f"encrypted object has an impossible chunk size {chunk_size}")
        header = cls(chunk_size, prefix, uuid.UUID(bytes=key_id))
        if header.data_key_id != expected_id:
            raise ObjectIntegrityError(
                f"encrypted object belongs to data key {header.data_key_id}, not {expected_id} (wrong object)"
            )
        return header


def _check_chunk_size(chunk_size: int) -> None:
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise ValueError(f"chunk_size must be between {MIN_CHUNK_SIZE} and {MAX_CHUNK_SIZE}, got {chunk_size}")


def ciphertext_size(plaintext_len: int, chunk_size: int = DEFAULT_CHUNK_SIZE) -> int:
    """Return the size of the encrypted object for ``plaintext_len`` bytes of plaintext."""
    chunks = max(1, -(-plaintext_len // chunk_size))
    return HEADER_SIZE + chunks * TAG_SIZE + plaintext_len


def _chunk_count(ciphertext_len: int, chunk_size: int) -> int:
    body = ciphertext_len - HEADER_SIZE
    record = chunk_size + TAG_SIZE
    chunks = -(-body // record)
    if body < TAG_SIZE or body - (chunks - 1) * record < TAG_SIZE:
        raise ObjectIntegrityError(f"encrypted object has an impossible size {ciphertext_len} (truncated?)")
    return chunks


def plaintext_size(ciphertext_len: int, chunk_size: int) -> int:
    """Return the plaintext size of an encrypted object of ``ciphertext_len`` bytes.

    Raises:
        ObjectIntegrityError: No plaintext encrypts to that size.
    """
    return ciphertext_len - HEADER_SIZE - _chunk_count(ciphertext_len, chunk_size) * TAG_SIZE


class _Sealer:
    """AES-GCM over one object's chunks: nonces and associated data per the module's layout."""

    def __init__(self, dek: bytes, header: Header) -> None:
        if len(dek) != 32:
            raise ValueError("a data key is 32 bytes (AES-256)")
        self._aead = AESGCM(dek)
        self._header = header
        self._header_bytes = header.pack()

    def _nonce_aad(self, index: int, final: bool) -> tuple[bytes, bytes]:
        if index >= _MAX_CHUNKS:
            raise ValueError("an encrypted object holds at most 2**32 chunks")
        return self._header.nonce_prefix + index.to_bytes(4, "big"), self._header_bytes + struct.pack(
            ">QB", index, final
        )

    def seal(self, index: int, plaintext: bytes | bytearray | memoryview, final: bool) -> bytes:
        nonce, aad = self._nonce_aad(index, final)
        return self._aead.encrypt(nonce, plaintext, aad)  # any buffer: no copy

    def open(self, index: int, record: bytes | bytearray | memoryview, final: bool) -> bytes:
        """Decrypt one chunk, naming the failure precisely when it does not authenticate."""
        nonce, aad = self._nonce_aad(index, final)
        data = record
        try:
            return self._aead.decrypt(nonce, data, aad)
        except InvalidTag:
            pass
        # Which check failed? Only on the error path, so the extra attempt costs nothing normally.
        other_nonce, other_aad = self._nonce_aad(index, final=not final)
        try:
            self._aead.decrypt(other_nonce, data, other_aad)
        except InvalidTag:
            raise ObjectIntegrityError(
                f"chunk {index} fails authentication (tampered, reordered, or from another object)"
            ) from None
        if final:
            raise ObjectIntegrityError(f"encrypted object is truncated: it ends after chunk {index}, not a final one")
        raise ObjectIntegrityError(f"encrypted object has data after its final chunk {index}")


class EncryptingStream:
    """Encrypt an async iterable of plaintext chunks; iterate to get the encrypted object's bytes.

    The first item is the header, then one sealed chunk per item. The plaintext's SHA-256 and size are
    computed on the way (:attr:`sha256` and :attr:`size`, valid once the stream is exhausted). Input chunks
    of any size are re-cut into ``chunk_size`` pieces; at most one piece plus one input chunk is held.
    """

    def __init__(
        self,
        source: AsyncIterable[bytes],
        *,
        dek: bytes,
        data_key_id: uuid.UUID,
        nonce_prefix: bytes,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> None:
        """Prepare the stream; nothing is read until it is iterated.

        Args:
            source: The plaintext.
            dek: The 32-byte data key, fresh for this object.
            data_key_id: The id the object is stored under (bound into every chunk).
            nonce_prefix: 8 random bytes, fresh for this object.
            chunk_size: Plaintext bytes per chunk.

        Raises:
            ValueError: A bad key, prefix or chunk size.
        """
        _check_chunk_size(chunk_size)
        if len(nonce_prefix) != 8:
            raise ValueError("nonce_prefix is 8 bytes")
        self.header = Header(chunk_size, bytes(nonce_prefix), data_key_id)
        self._sealer = _Sealer(dek, self.header)
        self._source: AsyncIterator[bytes] = aiter(source)
        self._chunk_size = chunk_size
        self._pending = bytearray()
        self._index = 0
        self._hasher = hashlib.sha256()
        self._size = 0
        self._header_sent = False
        self._eof = False
        self._done = False

    @property
    def sha256(self) -> str:
        """The lowercase hex SHA-256 of the plaintext.

        Raises:
            RuntimeError: The stream is not exhausted yet.
        """
        if not self._done:
            raise RuntimeError("the plaintext digest is known once the stream is exhausted")
        return self._hasher.hexdigest()

    @property
    def size(self) -> int:
        """The plaintext's size in bytes (once the stream is exhausted)."""
        if not self._done:
            raise RuntimeError("the plaintext size is known once the stream is exhausted")
        return self._size

    def __aiter__(self) -> Self:
        """Return this stream."""
        return self

    async def __anext__(self) -> bytes:
        """Return the header, then the next sealed chunk.

        Raises:
            StopAsyncIteration: After the final chunk.
        """
        if not self._header_sent:
            self._header_sent = True
            return self.header.pack()
        if self._done:
            raise StopAsyncIteration
        # A piece is final only when the source has ended behind it: read until more than one piece is held.
        while not self._eof and len(self._pending) <= self._chunk_size:
            try:
                chunk = await anext(self._source)
            except StopAsyncIteration:
                self._eof = True
                break
            self._size += len(chunk)
            self._pending += chunk
        final = self._eof and len(self._pending) <= self._chunk_size
        if final:
            piece, self._pending = self._pending, bytearray()
            self._done = True
        else:
            piece = self._pending[: self._chunk_size]
            del self._pending[: self._chunk_size]  # O(1): a bytearray drops its head in place
        sealed = await _offload(self._hash_and_seal, self._index, piece, final, size=len(piece))
        self._index += 1
        return sealed

    def _hash_and_seal(self, index: int, piece: bytearray, final: bool) -> bytes:
        self._hasher.update(piece)  # the pieces are the plaintext, in order
        return self._sealer.seal(index, piece, final=final)


_INLINE_MAX: Final = 64 * 1024  # below this, a worker-thread hop costs more than the work


async def _offload(fn: Callable[..., bytes], *args: object, size: int) -> bytes:
    """Run hashing / AES-GCM of a big piece in a worker thread (both release the GIL on big buffers), so a
    1 MiB chunk never stalls the event loop for a millisecond; small ones inline, with a checkpoint."""
    if size <= _INLINE_MAX:
        await trio.lowlevel.checkpoint()
        return fn(*args)
    return await trio.to_thread.run_sync(fn, *args)


class DecryptingStream:
    """Decrypt an encrypted object's bytes (an async iterable of chunks of any size) into plaintext chunks.

    Each item is one authenticated chunk's plaintext; nothing is released before its tag checks out, and the
    end of the stream is checked too (a final chunk, no data after it). At most about two chunks are held.
    """

    def __init__(
        self, source: AsyncIterable[bytes], *, dek: bytes, data_key_id: uuid.UUID, expected_size: int | None = None
    ) -> None:
        """Prepare the stream; nothing is read until it is iterated.

        Args:
            source: The encrypted object's bytes.
            dek: The object's data key.
            data_key_id: The id the object was looked up by; the header must name it.
            expected_size: The plaintext size on record, checked at the end when given.
        """
        self._source: AsyncIterator[bytes] = aiter(source)
        self._dek = dek
        self._data_key_id = data_key_id
        self._expected_size = expected_size
        self._buffer = bytearray()
        self._sealer: _Sealer | None = None
        self._record = 0
        self._index = 0
        self._size = 0
        self._eof = False
        self._done = False

    def __aiter__(self) -> Self:
        """Return this stream."""
        return self

    async def _fill(self, want: int) -> None:
        while not self._eof and len(self._buffer) < want:
            try:
                self._buffer += await anext(self._source)
            except StopAsyncIteration:
                self._eof = True

    async def __anext__(self) -> bytes:
        """Return the next chunk's plaintext (possibly empty for an empty object).

        Raises:
            StopAsyncIteration: After the final chunk.
            ObjectIntegrityError: The object fails authentication.
        """
        if self._done:
            raise StopAsyncIteration
        if self._sealer is None:
            await self._fill(HEADER_SIZE)
            header = Header.parse(bytes(self._buffer[:HEADER_SIZE]), expected_id=self._data_key_id)
            del self._buffer[:HEADER_SIZE]
            self._sealer = _Sealer(self._dek, header)
            self._record = header.chunk_size + TAG_SIZE
        # One byte past a record tells whether it is the last one.
        await self._fill(self._record + 1)
        if len(self._buffer) > self._record:
            record = self._buffer[: self._record]
            del self._buffer[: self._record]
            plaintext = await _offload(self._sealer.open, self._index, record, False, size=len(record))
            self._index += 1
        else:
            if len(self._buffer) < TAG_SIZE:
                raise ObjectIntegrityError(f"encrypted object is truncated inside chunk {self._index}")
            record, self._buffer = self._buffer, bytearray()
            plaintext = await _offload(self._sealer.open, self._index, record, True, size=len(record))
            self._done = True
        self._size += len(plaintext)
        if self._done and self._expected_size is not None and self._size != self._expected_size:
            raise ObjectIntegrityError(f"decrypted {self._size} bytes where {self._expected_size} were stored")
        return plaintext


class RangeDecryptor:
    """Random access into an encrypted object: decrypt plaintext bytes ``[start, end)`` from the few chunks
    that cover them, read with a ``read_at(offset, length)`` callable (e.g. :meth:`ObjectStore.read_range`).

    Create with :meth:`open`, which reads and checks the header.
    """

    def __init__(self, read_at: Callable[[int, int], Awaitable[bytes]], sealer: _Sealer, ciphertext_len: int) -> None:
        """Use :meth:`open`."""
        self._read_at = read_at
        self._sealer = sealer
        self._chunk_size = sealer._header.chunk_size
        self._chunks = _chunk_count(ciphertext_len, self._chunk_size)
        self.size = ciphertext_len - HEADER_SIZE - self._chunks * TAG_SIZE
        """The plaintext's size in bytes."""

    @classmethod
    async def open(
        cls,
        read_at: Callable[[int, int], Awaitable[bytes]],
        *,
        ciphertext_len: int,
        dek: bytes,
        data_key_id: uuid.UUID,
    ) -> RangeDecryptor:
        """Read the header and prepare to decrypt ranges.

        Args:
            read_at: ``await read_at(offset, length)`` returns up to ``length`` bytes of the encrypted object.
            ciphertext_len: The encrypted object's size (the store's), which fixes where its final chunk is.
            dek: The object's data key.
            data_key_id: The id the object was looked up by.

        Returns:
            The decryptor.

        Raises:
            ObjectIntegrityError: A bad header or an impossible size.
        """
        header = Header.parse(await read_at(0, HEADER_SIZE), expected_id=data_key_id)
        return cls(read_at, _Sealer(dek, header), ciphertext_len)

    async def read_chunk(self, index: int) -> bytes:
        """Return chunk ``index``'s plaintext, authenticated.

        Raises:
            IndexError: No such chunk.
            ObjectIntegrityError: It fails authentication.
        """
        if not 0 <= index < self._chunks:
            raise IndexError(f"chunk {index} of {self._chunks}")
        record = self._chunk_size + TAG_SIZE
        data = await self._read_at(HEADER_SIZE + index * record, record)
        final = index == self._chunks - 1
        if not final and len(data) != record:
            raise ObjectIntegrityError(f"encrypted object is truncated inside chunk {index}")
        return await _offload(self._sealer.open, index, data, final, size=len(data))

    async def read(self, start: int, end: int) -> bytes:
        """Return plaintext bytes ``[start, end)`` (clipped to the object), decrypting only the chunks they
        touch. Keep ranges to what a caller may hold in memory; :meth:`iter_range` streams big ones.

        Raises:
            ValueError: ``start`` or ``end`` is negative, or ``end < start``.
            ObjectIntegrityError: A chunk fails authentication.
        """
        return b"".join([piece async for piece in self.iter_range(start, end)])

    def iter_range(self, start: int, end: int) -> _RangeIterator:
        """Return an async iterator over plaintext bytes ``[start, end)``, one chunk's worth per item."""
        if start < 0 or end < start:
            raise ValueError(f"bad range [{start}, {end})")
        return _RangeIterator(self, start, min(end, self.size))


class _RangeIterator:
    def __init__(self, decryptor: RangeDecryptor, start: int, end: int) -> None:
        self._decryptor = decryptor
        self._pos = start
        self._end = end

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> bytes:
        if self._pos >= self._end:
            raise StopAsyncIteration
        chunk_size = self._decryptor._chunk_size
        index, skip = divmod(self._pos, chunk_size)
        plaintext = await self._decryptor.read_chunk(index)
        piece = plaintext[skip : skip + (self._end - self._pos)]
        self._pos += len(piece)
        return piece
