"""Uploaded model files: recognize the format, and unpack an HF model directory archive safely.

An upload arrives as one file on local disk (the request body spooled to a temporary file).
:func:`detect_format` names it from its first bytes: ``"gguf"``, ``"tar"``, ``"tar.gz"`` or ``"zip"``.  A GGUF
file is inspected as it is; an archive is unpacked with :func:`unpack_model_archive` into a fresh temporary
directory that holds only regular files with the names an HF model directory has (:data:`ALLOWED_FILES`).

What an archive may hold (anything else is refused, with the member's name, and nothing is left behind):

* regular files and directories only: no symbolic or hard links, devices, FIFOs or sparse/special members;
* relative names with no ``..``, no absolute or drive paths, no backslashes, each name once (also ignoring case);
* the model's files at the top, or all of them inside one top-level folder (stripped);
* at most :attr:`ArchiveLimits.max_members` members, :attr:`~ArchiveLimits.max_member_bytes` per member and
  :attr:`~ArchiveLimits.max_total_bytes` in all.  Sizes are checked as declared (tar and zip headers) *and*
  counted while writing, which stops at the limit; a compressed stream that expands more than
  :attr:`~ArchiveLimits.max_ratio` times is stopped as a bomb.  Members are copied in chunks, never whole.

Every refusal is an :class:`ArchiveError` (a :class:`~bitnet_actor.services.errors.ValidationError` on the field
``file``: the API answers 400) whose message says what was wrong and with which member.

Both functions block (disk I/O, decompression): call them from a worker thread (``trio.to_thread.run_sync``).
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Literal

from bitnet_actor.services.errors import ValidationError

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = [
    "ALLOWED_FILES",
    "DEFAULT_LIMITS",
    "ArchiveError",
    "ArchiveLimits",
    "Format",
    "detect_format",
    "remove_unpacked",
    "unpack_model_archive",
]

Format = Literal["gguf", "tar", "tar.gz", "zip"]

ALLOWED_FILES = frozenset(
    {
        # read by the loader (bitnet_actor.engine.loader)
        "config.json",
        "generation_config.json",
        "model.safetensors.index.json",
        # read by the tokenizer (bitnet_actor.engine.tokenizer: from_hf_dir)
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "chat_template.jinja",
        "chat_template.json",
        # shipped beside them by HF repositories; kept, not read
        "tokenizer.model",
        "added_tokens.json",
        "vocab.json",
        "merges.txt",
        "README.md",
        "LICENSE",
        "LICENSE.md",
        "LICENSE.txt",
        "NOTICE",
        "USE_POLICY.md",
        ".gitattributes",
    }
)
"""Exact file names an archive may hold at the model's top level; besides these, ``*.safetensors`` (the
weights, any shard name) and ``additional_chat_templates/*.jinja`` (named chat templates)."""

_SAFE_STEM = r"[A-Za-z0-9_][A-Za-z0-9._-]{0,200}"
_PATTERNS = (
    re.compile(rf"{_SAFE_STEM}\.safetensors"),
    re.compile(rf"additional_chat_templates/{_SAFE_STEM}\.jinja"),
)
_ALLOWED_DIRS = frozenset({"additional_chat_templates"})

_CHUNK = 1 << 20  # bytes copied at a time: a member is never read whole


@dataclass(frozen=True, slots=True, kw_only=True)
class ArchiveLimits:
    """What an archive may hold.

    Attributes:
        max_members: entries (files and directories).
        max_member_bytes: the largest file, uncompressed.
        max_total_bytes: all files together, uncompressed.
        max_ratio: the most a compressed stream (gzip, or a zip member) may expand; None: no check.
        ratio_floor_bytes: the ratio is checked once this much has come out (small files compress well).
    """

    max_members: int = 256
    max_member_bytes: int = 16 << 30
    max_total_bytes: int = 32 << 30
    max_ratio: float | None = 200.0
    ratio_floor_bytes: int = 64 << 20


DEFAULT_LIMITS = ArchiveLimits()
"""Room for the largest supported models (an 8B model's bf16 masters are 16 GB in a few shards)."""


class ArchiveError(ValidationError):
    """An upload is not a model file or archive this service accepts; the message says why."""

    def __init__(self, message: str) -> None:
        super().__init__(message, field="file")


# ----------------------------------------------------------------------------------------------------------
# format

_KNOWN_OTHERS: tuple[tuple[bytes, str], ...] = (
    (b"BZh", "a bzip2 stream"),
    (b"\xfd7zXZ\x00", "an xz stream"),
    (b"\x28\xb5\x2f\xfd", "a zstd stream"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"Rar!", "a RAR archive"),
    (b"PK\x07\x08", "a split zip archive"),
    (b"\x89PNG", "a PNG image"),
    (b"%PDF", "a PDF document"),
)


def detect_format(path: str | Path) -> Format:
    """Name an uploaded file's format from its first bytes.

    Args:
        path: the file.

    Returns:
        ``"gguf"``, ``"tar"``, ``"tar.gz"`` (any gzip stream: what is inside is checked while unpacking) or
        ``"zip"``.

    Raises:
        ArchiveError: an empty file, or any other format (the message names what the bytes look like).
    """
    with open(path, "rb") as fh:
        head = fh.read(512)
    if not head:
        raise ArchiveError("the upload is empty")
    if head[:4] == b"GGUF":
        return "gguf"
    if head[:2] == b"\x1f\x8b":
        return "tar.gz"
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    if len(head) == 512 and not any(head):
        return "tar"  # an end-of-archive block first: an empty tar, refused as empty when unpacked
    raise ArchiveError(
        f"unknown format: the upload is {_describe(head)}; expected a GGUF file or a tar, tar.gz or zip archive"
    )


def _describe(head: bytes) -> str:
    for magic, what in _KNOWN_OTHERS:
        if head.startswith(magic):
            return what
    if len(head) >= 9 and head[8:9] == b"{":
        return "a bare safetensors file (upload the model directory as an archive)"
    if head.lstrip()[:1] in (b"{", b"["):
        return "JSON text"
    shown = " ".join(f"{b:02x}" for b in head[:8])
    return f"a file starting with bytes {shown}"


# ----------------------------------------------------------------------------------------------------------
# names


def _parts(name: str) -> tuple[str, ...]:
    """A member name's components, checked: relative, no ``..``, no backslash or NUL."""
    if "\\" in name or "\x00" in name:
        raise ArchiveError(f"member {name!r}: backslashes and NUL bytes are not allowed in names")
    if name.startswith("/") or re.match(r"[A-Za-z]:", name):
        raise ArchiveError(f"member {name!r}: absolute paths are not allowed")
    parts = tuple(p for p in PurePosixPath(name).parts if p != ".")
    if ".." in parts:
        raise ArchiveError(f"member {name!r}: '..' is not allowed in names")
    return parts


def _allowed(rel: tuple[str, ...]) -> bool:
    joined = "/".join(rel)
    return (len(rel) == 1 and joined in ALLOWED_FILES) or any(p.fullmatch(joined) for p in _PATTERNS)


# ----------------------------------------------------------------------------------------------------------
# unpacking


class _Counter:
    """A read-only stream that counts what passes and enforces the totals."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.count += len(data)
        return data


class _Unpacker:
    def __init__(self, dest: Path, limits: ArchiveLimits) -> None:
        self.dest = dest
        self.limits = limits
        self.members = 0
        self.total = 0
        self.seen: dict[str, str] = {}  # casefolded path -> name as given
        self.files: list[tuple[str, tuple[str, ...]]] = []  # (name as given, parts)
        self.dirs: list[tuple[str, tuple[str, ...]]] = []
        self.compressed: _Counter | None = None  # the raw gzip input, for the ratio
        self.expanded: _Counter | None = None  # what gzip produced

    def entry(self, name: str, *, is_dir: bool, size: int | None) -> tuple[str, ...] | None:
        """Check one member's header; returns its parts when it is a file to write, None for a directory."""
        self.members += 1
        if self.members > self.limits.max_members:
            raise ArchiveError(f"too many members: more than {self.limits.max_members}")
        parts = _parts(name)
        if not parts:
            if is_dir:
                return None
            raise ArchiveError(f"member {name!r}: a file without a name")
        key = "/".join(parts).casefold()
        if key in self.seen:
            raise ArchiveError(f"member {name!r}: the name appears twice (also as {self.seen[key]!r})")
        self.seen[key] = name
        if is_dir:
            self.dirs.append((name, parts))
            return None
        if size is not None:
            self._check_size(name, size)
        self.files.append((name, parts))
        return parts

    def _check_size(self, name: str, size: int) -> None:
        if size > self.limits.max_member_bytes:
            raise ArchiveError(
                f"member {name!r}: {size:,} bytes, over the limit of {self.limits.max_member_bytes:,} per file"
            )
        if self.total + size > self.limits.max_total_bytes:
            raise ArchiveError(
                f"member {name!r}: the archive expands past the limit of {self.limits.max_total_bytes:,} bytes in all"
            )

    def check_ratio(self, what: str, out: int, compressed: int) -> None:
        lim = self.limits
        if lim.max_ratio is not None and out >= lim.ratio_floor_bytes and out > lim.max_ratio * max(compressed, 1):
            raise ArchiveError(
                f"{what}: expands more than {lim.max_ratio:g} times ({compressed:,} compressed bytes gave "
                f"{out:,} so far): refused as a decompression bomb"
            )

    def write(self, name: str, parts: tuple[str, ...], src: IO[bytes], *, compressed: int | None = None) -> None:
        """Copy one member in chunks, counting; ``compressed``: its compressed size (zip), for the ratio."""
        target = self.dest.joinpath(*parts)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            out = open(target, "xb")  # noqa: SIM115 -- closed below; "x": never through an existing path
        except OSError as exc:
            raise ArchiveError(
                f"member {name!r}: cannot be written ({exc.strerror}): its path clashes with another"
            ) from exc
        written = 0
        with out:
            while chunk := src.read(_CHUNK):
                written += len(chunk)
                self.total += len(chunk)
                if written > self.limits.max_member_bytes:
                    raise ArchiveError(
                        f"member {name!r}: more than {self.limits.max_member_bytes:,} bytes, over the limit per file"
                    )
                if self.total > self.limits.max_total_bytes:
                    raise ArchiveError(
                        f"member {name!r}: the archive expands past the limit of "
                        f"{self.limits.max_total_bytes:,} bytes in all"
                    )
                if compressed is not None:
                    self.check_ratio(f"member {name!r}", written, compressed)
                if self.compressed is not None and self.expanded is not None:
                    self.check_ratio("the gzip stream", self.expanded.count, self.compressed.count)
                out.write(chunk)

    def model_root(self) -> Path:
        """Where the model's files are: the destination, or its single top-level folder; checks the names."""
        if not self.files:
            raise ArchiveError("the archive is empty: it holds no files")
        tops = {parts[0] for _, parts in self.files if len(parts) > 1}
        nested = (
            len(tops) == 1 and all(len(parts) > 1 for _, parts in self.files) and next(iter(tops)) not in _ALLOWED_DIRS
        )
        top = next(iter(tops)) if nested else None
        strip = 1 if nested else 0

        def dir_ok(parts: tuple[str, ...]) -> bool:
            rel = parts[strip:]
            return (top is None or parts[0] == top) and (rel == () or (len(rel) == 1 and rel[0] in _ALLOWED_DIRS))

        bad = [name for name, parts in self.files if not _allowed(parts[strip:])]
        bad += [name for name, parts in self.dirs if not dir_ok(parts)]
        if bad:
            shown = ", ".join(repr(n) for n in sorted(bad)[:20])
            more = f" and {len(bad) - 20} more" if len(bad) > 20 else ""
            raise ArchiveError(
                f"unexpected files in the archive: {shown}{more}; a model archive holds config.json, "
                "*.safetensors, model.safetensors.index.json, generation_config.json and tokenizer files, at the "
                "top or inside one folder"
            )
        root = self.dest / top if top is not None else self.dest
        if not any(parts[strip:] == ("config.json",) for _, parts in self.files):
            raise ArchiveError("no config.json in the archive: an HF model directory needs one")
        return root


def _tar_members(tf: tarfile.TarFile, up: _Unpacker) -> Iterator[tuple[tarfile.TarInfo, tuple[str, ...]]]:
    for ti in tf:
        if ti.issym() or ti.islnk():
            kind = "symbolic link" if ti.issym() else "hard link"
            raise ArchiveError(f"member {ti.name!r}: a {kind} (to {ti.linkname!r}); links are not allowed")
        if ti.ischr() or ti.isblk() or ti.isfifo() or ti.isdev():
            raise ArchiveError(f"member {ti.name!r}: a device or FIFO; only regular files are allowed")
        if ti.issparse() or not (ti.isfile() or ti.isdir()):
            raise ArchiveError(f"member {ti.name!r}: not a regular file or directory")
        parts = up.entry(ti.name, is_dir=ti.isdir(), size=None if ti.isdir() else ti.size)
        if parts is not None:
            yield ti, parts


def _unpack_tar(path: Path, gz: bool, up: _Unpacker) -> None:
    with open(path, "rb") as raw:
        src: IO[bytes]
        if gz:
            up.compressed = _Counter(raw)
            gzf = gzip.GzipFile(fileobj=up.compressed, mode="rb")  # type: ignore[call-overload]
            up.expanded = _Counter(gzf)
            src = up.expanded  # type: ignore[assignment]
        else:
            src = raw
        # "r|": one pass in order, nothing read ahead or seeked, so every header is checked before its data
        with tarfile.open(fileobj=src, mode="r|") as tf:
            for ti, parts in _tar_members(tf, up):
                fh = tf.extractfile(ti)
                assert fh is not None  # a regular file
                up.write(ti.name, parts, fh)


def _unpack_zip(path: Path, up: _Unpacker) -> None:
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
        if len(infos) > up.limits.max_members:
            raise ArchiveError(f"too many members: {len(infos)}, more than {up.limits.max_members}")
        declared = 0
        for zi in infos:  # every header first: refuse before writing anything
            mode = zi.external_attr >> 16
            kind = stat.S_IFMT(mode)
            if stat.S_ISLNK(mode):
                raise ArchiveError(f"member {zi.filename!r}: a symbolic link; links are not allowed")
            if kind and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise ArchiveError(f"member {zi.filename!r}: a device or FIFO; only regular files are allowed")
            if zi.flag_bits & 0x1:
                raise ArchiveError(f"member {zi.filename!r}: encrypted members are not supported")
            if not zi.is_dir():
                declared += zi.file_size
                up.check_ratio(f"member {zi.filename!r}", zi.file_size, zi.compress_size)
        if declared > up.limits.max_total_bytes:
            raise ArchiveError(
                f"the archive declares {declared:,} bytes, over the limit of {up.limits.max_total_bytes:,} in all"
            )
        for zi in infos:
            parts = up.entry(zi.filename, is_dir=zi.is_dir(), size=None if zi.is_dir() else zi.file_size)
            if parts is None:
                continue
            with zf.open(zi) as fh:
                up.write(zi.filename, parts, fh, compressed=zi.compress_size)


def unpack_model_archive(
    path: str | Path, *, temp_root: str | Path | None = None, limits: ArchiveLimits = DEFAULT_LIMITS
) -> Path:
    """Unpack an HF model directory archive (tar, tar.gz or zip) into a fresh temporary directory.

    Args:
        path: the uploaded file.
        temp_root: where to make the directory (default: the system's temporary directory).
        limits: the sizes allowed.

    Returns:
        The model directory (``config.json`` and the rest at its top), inside a new ``bitnet-upload-*``
        directory of ``temp_root``; remove it with :func:`remove_unpacked` when done.

    Raises:
        ArchiveError: the file is not such an archive, or breaks a rule (see the module docstring); nothing
            is left in ``temp_root``.
    """
    path = Path(path)
    fmt = detect_format(path)
    if fmt == "gguf":
        raise ArchiveError("a GGUF file is a model, not an archive: inspect it as it is")
    work = Path(tempfile.mkdtemp(prefix="bitnet-upload-", dir=temp_root))
    try:
        staging = work / "staging"
        staging.mkdir()
        up = _Unpacker(staging, limits)
        try:
            if fmt == "zip":
                _unpack_zip(path, up)
            else:
                _unpack_tar(path, fmt == "tar.gz", up)
        except ArchiveError:
            raise
        except (tarfile.TarError, zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
            if isinstance(exc, OSError) and not isinstance(exc, tarfile.TarError) and exc.errno is not None:
                raise  # a local disk problem (ENOSPC, ...), not the upload's fault
            raise ArchiveError(f"the {fmt} archive is truncated or corrupt ({exc})") from exc
        root = up.model_root()
        model = work / "model"
        os.rename(root, model)
        if staging.exists():
            shutil.rmtree(staging)
        return model
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def remove_unpacked(model_dir: str | Path) -> None:
    """Remove what :func:`unpack_model_archive` made (the model directory and its ``bitnet-upload-*`` parent).

    Args:
        model_dir: the directory it returned.
    """
    parent = Path(model_dir).parent
    if not parent.name.startswith("bitnet-upload-"):
        raise ValueError(f"{model_dir}: not a directory made by unpack_model_archive")
    shutil.rmtree(parent, ignore_errors=True)
