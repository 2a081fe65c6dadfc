"""Benchmark of encryption at rest of model objects: correctness first, then throughput.

  (a) correctness: a round trip of the working set (plaintext SHA-256 equal), ranged reads equal slices, a
      flipped byte and a dropped final chunk are refused; nothing is timed unless all of this holds;
  (b) in memory, MB/s of plaintext through: a plain copy of each chunk (the baseline), SHA-256 alone (what
      the store computes anyway), encryption (EncryptingStream: AES-256-GCM per chunk + the plaintext's
      SHA-256), decryption (DecryptingStream);
  (c) through the filesystem object store (a temporary directory): a plain put and a plain read against an
      encrypted put and an encrypted read of the same data;
  (d) ranged reads: one random 4 KiB range of an encrypted object (one chunk decrypted), reads per second.

Each measure is the median of ``--repeats`` runs; ratios are against the baseline of the same table. No
database: the data keys' storage is a row per object (tests/services/models/test_crypto.py).

  python ops/bench_crypto.py [--quick] [--size-mib N] [--repeats N]
"""

from __future__ import annotations

import argparse
import hashlib
import platform
import random
import secrets
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from bitnet_actor.services.models.crypto import (
    DEFAULT_CHUNK_SIZE,
    DecryptingStream,
    EncryptingStream,
    ObjectIntegrityError,
    RangeDecryptor,
)
from bitnet_actor.stores.objects import FilesystemObjectStore

if TYPE_CHECKING:
    from collections.abc import AsyncIterable, Awaitable, Callable

MiB = 1024 * 1024


class Blocks:
    """The same ``block`` ``count`` times, as an async iterable (a fresh one per run); with ``unique``, the first
    block is random, so each run's object is new to the store (a put of known content skips its commit)."""

    def __init__(self, block: bytes, count: int, *, unique: bool = False) -> None:
        self.block, self.left = block, count
        self.first = secrets.token_bytes(len(block)) if unique and count else None

    def __aiter__(self) -> Blocks:
        return self

    async def __anext__(self) -> bytes:
        if self.left == 0:
            raise StopAsyncIteration
        self.left -= 1
        await trio.lowlevel.checkpoint()
        first, self.first = self.first, None
        return first or self.block


class Keyed:
    """One object's key material."""

    def __init__(self) -> None:
        self.dek = secrets.token_bytes(32)
        self.id = uuid.uuid4()
        self.prefix = secrets.token_bytes(8)

    def encrypt(self, source: AsyncIterable[bytes]) -> EncryptingStream:
        return EncryptingStream(source, dek=self.dek, data_key_id=self.id, nonce_prefix=self.prefix)

    def decrypt(self, source: AsyncIterable[bytes]) -> DecryptingStream:
        return DecryptingStream(source, dek=self.dek, data_key_id=self.id)


class Pieces:
    """A list of byte strings as an async iterable."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces, self.pos = pieces, 0

    def __aiter__(self) -> Pieces:
        return self

    async def __anext__(self) -> bytes:
        if self.pos == len(self.pieces):
            raise StopAsyncIteration
        self.pos += 1
        await trio.lowlevel.checkpoint()
        return self.pieces[self.pos - 1]


async def drain(stream: AsyncIterable[bytes]) -> tuple[int, str]:
    hasher = hashlib.sha256()
    size = 0
    async for piece in stream:
        hasher.update(piece)
        size += len(piece)
    return size, hasher.hexdigest()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def has_aes_ni() -> bool:
    try:
        return " aes " in Path("/proc/cpuinfo").read_text().replace("\n", " ")
    except OSError:
        return False


async def paired_medians_s(
    base: Callable[[], Awaitable[object]], other: Callable[[], Awaitable[object]], repeats: int
) -> tuple[float, float]:
    """Medians of ``base`` and ``other`` run alternately, so drift (page cache, writeback) hits both alike."""
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for fn, out in ((base, times[0]), (other, times[1])):
            start = time.perf_counter()
            await fn()
            out.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


async def median_s(fn: Callable[[], Awaitable[object]], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        await fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


async def correctness(block: bytes, count: int, expected: str) -> list[bytes]:
    keyed = Keyed()
    encrypting = keyed.encrypt(Blocks(block, count))
    ciphertext = [piece async for piece in encrypting]
    size, digest = await drain(keyed.decrypt(Pieces(ciphertext)))
    assert (size, digest) == (len(block) * count, expected) == (encrypting.size, encrypting.sha256), "round trip"
    blob = b"".join(ciphertext)

    async def read_at(offset: int, length: int) -> bytes:
        return blob[offset : offset + length]

    ranged = await RangeDecryptor.open(read_at, ciphertext_len=len(blob), dek=keyed.dek, data_key_id=keyed.id)
    rng = random.Random(0)
    total = len(block) * count
    for _ in range(50):
        start = rng.randrange(total)
        end = min(total, start + rng.randrange(3 * DEFAULT_CHUNK_SIZE))
        got = await ranged.read(start, end)
        want = (block * (end // len(block) + 2))[start:end]  # the plaintext is `block` repeated
        assert got == want, f"range [{start}, {end})"
    flipped = bytearray(blob)
    flipped[len(blob) // 2] ^= 1
    dropped = blob[: -(DEFAULT_CHUNK_SIZE + 16)]  # the plaintext is whole chunks: the final one is full size
    for bad in (bytes(flipped), dropped):
        try:
            await drain(keyed.decrypt(Pieces([bad])))
        except ObjectIntegrityError:
            continue
        raise AssertionError("a tampered or truncated object decrypted")
    return ciphertext


async def main_async(args: argparse.Namespace) -> None:
    block = random.Random(1).randbytes(DEFAULT_CHUNK_SIZE)
    count = args.size_mib
    total = len(block) * count
    expected = hashlib.sha256(block * count).hexdigest()
    ciphertext = await correctness(block, count, expected)
    print(f"(a) correctness: round trip of {count} MiB, 50 ranged reads, tamper + truncation refused: ok")

    rows: list[tuple[str, float, str]] = []

    def row(name: str, seconds: float, baseline: float | None) -> None:
        ratio = "1.00x (baseline)" if baseline is None else f"{baseline / seconds:.2f}x of baseline"
        rows.append((name, total / MiB / seconds, ratio))

    async def plain_copy() -> None:
        async for piece in Blocks(block, count):
            bytes(bytearray(piece))

    async def sha_only() -> None:
        await drain(Blocks(block, count))

    async def encrypt() -> None:
        async for _ in Keyed().encrypt(Blocks(block, count)):
            pass

    keyed = Keyed()
    sealed = [piece async for piece in keyed.encrypt(Blocks(block, count))]

    async def decrypt() -> None:
        async for _ in keyed.decrypt(Pieces(sealed)):
            pass

    base = await median_s(plain_copy, args.repeats)
    row("(b) plain copy, in memory", base, None)
    row("(b) SHA-256 only", await median_s(sha_only, args.repeats), base)
    row("(b) encrypt (AES-256-GCM + SHA-256)", await median_s(encrypt, args.repeats), base)
    row("(b) decrypt", await median_s(decrypt, args.repeats), base)
    sealed.clear()  # free the working set before the store runs
    del ciphertext

    with tempfile.TemporaryDirectory(prefix="bench-crypto-") as tmp:
        async with FilesystemObjectStore(Path(tmp), signing_key=b"bench", base_url="http://bench") as store:
            plain_keys: list[str] = []
            enc_keys: list[tuple[str, Keyed]] = []

            async def plain_put() -> None:
                plain_keys.append((await store.put(Blocks(block, count, unique=True))).key)

            async def enc_put() -> None:
                one = Keyed()
                enc_keys.append(((await store.put(one.encrypt(Blocks(block, count, unique=True)))).key, one))

            async def plain_get() -> None:
                async with store.open_stream(plain_keys[0]) as stream:
                    assert (await drain(stream))[0] == total

            async def enc_get() -> None:
                key, one = enc_keys[0]
                async with store.open_stream(key, chunk_size=DEFAULT_CHUNK_SIZE + 16) as stream:
                    assert (await drain(one.decrypt(stream)))[0] == total

            put_base, put_enc = await paired_medians_s(plain_put, enc_put, args.repeats)
            row("(c) store put (fsynced), plain", put_base, None)
            row("(c) store put (fsynced), encrypted", put_enc, put_base)
            get_base, get_enc = await paired_medians_s(plain_get, enc_get, args.repeats)
            row("(c) store read + SHA-256, plain", get_base, None)
            row("(c) store read + SHA-256, encrypted", get_enc, get_base)

            key, one = enc_keys[0]
            size = (await store.stat(key)).size

            async def read_at(offset: int, length: int) -> bytes:
                return await store.read_range(key, offset, length)

            ranged = await RangeDecryptor.open(read_at, ciphertext_len=size, dek=one.dek, data_key_id=one.id)
            rng = random.Random(2)
            reads = 200 if args.quick else 1000

            async def random_reads() -> None:
                for _ in range(reads):
                    start = rng.randrange(total - 4096)
                    await ranged.read(start, start + 4096)

            ranged_s = await median_s(random_reads, args.repeats)

    print(f"CPU: {cpu_model()} (AES-NI: {'yes' if has_aes_ni() else 'no'}), Python {platform.python_version()}")
    print(f"working set {count} MiB, chunk {DEFAULT_CHUNK_SIZE // 1024} KiB, median of {args.repeats} runs\n")
    print(f"| {'measure':<40} | {'MiB/s':>8} | {'vs baseline':<20} |")
    print(f"|{'-' * 42}|{'-' * 10}|{'-' * 22}|")
    for name, rate, ratio in rows:
        print(f"| {name:<40} | {rate:>8.0f} | {ratio:<20} |")
    print(f"\n(d) ranged 4 KiB reads (one 1 MiB chunk read + decrypted each): {reads / ranged_s:.0f} reads/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="32 MiB, 3 repeats")
    parser.add_argument("--size-mib", type=int, default=None, help="working set (default 256 MiB)")
    parser.add_argument("--repeats", type=int, default=None, help="runs per measure (default 5)")
    args = parser.parse_args()
    args.size_mib = args.size_mib or (32 if args.quick else 256)
    args.repeats = args.repeats or (3 if args.quick else 5)
    trio.run(main_async, args)


if __name__ == "__main__":
    main()
