"""Uploaded archives: the format detected, a model directory unpacked, every unsafe or wrong archive refused with
its reason and nothing left in the temporary directory."""

from __future__ import annotations

import gzip
import io
import re
import stat
import tarfile
import warnings
import zipfile
from typing import TYPE_CHECKING, Any

import pytest

from bitnet_actor.services.errors import ValidationError
from bitnet_actor.services.models import archive
from bitnet_actor.services.models.archive import (
    ArchiveError,
    ArchiveLimits,
    detect_format,
    remove_unpacked,
    unpack_model_archive,
)
from tests.services.models.conftest import make_archive, make_tar, make_zip, model_files

if TYPE_CHECKING:
    from pathlib import Path

KINDS = ("tar", "tar.gz", "zip")
CONFIG = ("config.json", b"{}")


@pytest.fixture
def temp_root(tmp_path: Path) -> Path:
    root = tmp_path / "tmp"
    root.mkdir()
    return root


def refused(path: Path, temp_root: Path, match: str, **limits: Any) -> ArchiveError:
    """Unpacking ``path`` raises an ArchiveError matching ``match`` and leaves nothing in ``temp_root``."""
    with pytest.raises(ArchiveError, match=match) as info:
        unpack_model_archive(path, temp_root=temp_root, limits=ArchiveLimits(**limits))
    assert list(temp_root.iterdir()) == []
    return info.value


def tar_with(path: Path, ti: tarfile.TarInfo, *, gz: bool = False) -> Path:
    with tarfile.open(path, "w:gz" if gz else "w") as tf:
        tf.addfile(tarfile.TarInfo("config.json"), io.BytesIO(b""))
        tf.addfile(ti, io.BytesIO(b"x" * ti.size) if ti.isfile() else None)
    return path


# ---------------------------------------------------------------------------------------------------- format


def test_formats_are_detected(tmp_path: Path) -> None:
    assert detect_format(make_tar(tmp_path / "a", [CONFIG])) == "tar"
    assert detect_format(make_tar(tmp_path / "b", [CONFIG], gz=True)) == "tar.gz"
    assert detect_format(make_zip(tmp_path / "c", [CONFIG])) == "zip"
    (tmp_path / "d").write_bytes(b"GGUF\x03\x00\x00\x00" + bytes(16))
    assert detect_format(tmp_path / "d") == "gguf"


@pytest.mark.parametrize(
    ("data", "seen"),
    [
        (b"\x89PNG\r\n\x1a\n" + bytes(100), "a PNG image"),
        (b"BZh91AY&SY" + bytes(100), "a bzip2 stream"),
        (b"\x10\x00\x00\x00\x00\x00\x00\x00{}      " + bytes(16), "a bare safetensors file"),
        (b'{"architectures": []}', "JSON text"),
        (b"\x01\x02\x03\x04hello world", "a file starting with bytes 01 02 03 04 68 65 6c 6c"),
    ],
)
def test_an_unknown_format_names_what_it_saw(tmp_path: Path, temp_root: Path, data: bytes, seen: str) -> None:
    (tmp_path / "up").write_bytes(data)
    err = refused(tmp_path / "up", temp_root, "unknown format: the upload is " + re.escape(seen))
    assert isinstance(err, ValidationError)
    assert err.field == "file"


def test_an_empty_upload_and_a_gguf_are_not_archives(tmp_path: Path, temp_root: Path) -> None:
    (tmp_path / "empty").write_bytes(b"")
    refused(tmp_path / "empty", temp_root, "the upload is empty")
    (tmp_path / "m.gguf").write_bytes(b"GGUF" + bytes(20))
    refused(tmp_path / "m.gguf", temp_root, "a GGUF file is a model, not an archive")


# ---------------------------------------------------------------------------------------------------- unpacking


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("top", ["", "my-model/", "./"])
def test_a_model_directory_unpacks(model_dir: Path, tmp_path: Path, temp_root: Path, kind: str, top: str) -> None:
    files = model_files(model_dir)
    members = [(top + name, data) for name, data in files]
    if kind != "zip" and top == "my-model/":
        members.insert(0, ("my-model/", b""))  # a directory entry, as `tar -c my-model` writes it
    path = tmp_path / "up"
    if members[0][0].endswith("/"):
        with tarfile.open(path, "w:gz" if kind == "tar.gz" else "w") as tf:
            ti = tarfile.TarInfo("my-model")
            ti.type = tarfile.DIRTYPE
            tf.addfile(ti)
            for name, data in members[1:]:
                t = tarfile.TarInfo(name)
                t.size = len(data)
                tf.addfile(t, io.BytesIO(data))
    else:
        make_archive(path, kind, members)
    out = unpack_model_archive(path, temp_root=temp_root)
    assert out.parent.parent == temp_root
    assert out.parent.name.startswith("bitnet-upload-")
    assert model_files(out) == files
    assert sorted(p.name for p in out.iterdir()) == sorted(n for n, _ in files)
    remove_unpacked(out)
    assert list(temp_root.iterdir()) == []


def test_sharded_weights_and_named_templates_are_allowed(tmp_path: Path, temp_root: Path) -> None:
    members = [
        CONFIG,
        ("model-00001-of-00002.safetensors", b"a"),
        ("model-00002-of-00002.safetensors", b"b"),
        ("model.safetensors.index.json", b"{}"),
        ("additional_chat_templates/tool_use.jinja", b"{{ x }}"),
        ("README.md", b"# hi"),
    ]
    out = unpack_model_archive(make_zip(tmp_path / "up.zip", members), temp_root=temp_root)
    assert (out / "additional_chat_templates" / "tool_use.jinja").read_bytes() == b"{{ x }}"
    assert (out / "model-00002-of-00002.safetensors").read_bytes() == b"b"
    remove_unpacked(out)


# ---------------------------------------------------------------------------------------------------- names


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("../x.safetensors", r"member '../x.safetensors': '\.\.' is not allowed"),
        ("m/../../config.json", r"'\.\.' is not allowed"),
        ("/etc/config.json", "absolute paths are not allowed"),
        ("C:/config.json", "absolute paths are not allowed"),
        ("m\\config.json", "backslashes"),
    ],
)
def test_traversal_is_refused(tmp_path: Path, temp_root: Path, kind: str, name: str, match: str) -> None:
    refused(make_archive(tmp_path / "up", kind, [CONFIG, (name, b"x")]), temp_root, match)
    assert not (tmp_path / "x.safetensors").exists()


@pytest.mark.parametrize("kind", ["tar", "tar.gz"])
def test_links_devices_and_fifos_are_refused_in_tar(tmp_path: Path, temp_root: Path, kind: str) -> None:
    cases = [
        (tarfile.SYMTYPE, "/etc/passwd", r"member 'tokenizer.json': a symbolic link \(to '/etc/passwd'\)"),
        (tarfile.LNKTYPE, "config.json", r"member 'tokenizer.json': a hard link \(to 'config.json'\)"),
        (tarfile.CHRTYPE, "", "member 'tokenizer.json': a device or FIFO"),
        (tarfile.BLKTYPE, "", "a device or FIFO"),
        (tarfile.FIFOTYPE, "", "a device or FIFO"),
    ]
    for kind_byte, link, match in cases:
        ti = tarfile.TarInfo("tokenizer.json")
        ti.type = kind_byte
        ti.linkname = link
        refused(tar_with(tmp_path / "up", ti, gz=kind == "tar.gz"), temp_root, match)


def test_a_zip_symlink_is_refused(tmp_path: Path, temp_root: Path) -> None:
    path = tmp_path / "up.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(*CONFIG)
        zi = zipfile.ZipInfo("tokenizer.json")
        zi.create_system = 3
        zi.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(zi, "/etc/passwd")
        fifo = zipfile.ZipInfo("vocab.json")
        fifo.create_system = 3
        fifo.external_attr = (stat.S_IFIFO | 0o644) << 16
        zf.writestr(fifo, "")
    refused(path, temp_root, "member 'tokenizer.json': a symbolic link")


def test_a_zip_fifo_is_refused(tmp_path: Path, temp_root: Path) -> None:
    path = tmp_path / "up.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(*CONFIG)
        fifo = zipfile.ZipInfo("vocab.json")
        fifo.create_system = 3
        fifo.external_attr = (stat.S_IFIFO | 0o644) << 16
        zf.writestr(fifo, "")
    refused(path, temp_root, "member 'vocab.json': a device or FIFO")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("second", ["config.json", "./config.json", "CONFIG.json"])
def test_duplicate_names_are_refused(tmp_path: Path, temp_root: Path, kind: str, second: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns of the duplicate it is asked to write
        path = make_archive(tmp_path / "up", kind, [CONFIG, (second, b"{}")])
    refused(path, temp_root, f"member '{re.escape(second)}': the name appears twice")


@pytest.mark.parametrize("kind", KINDS)
def test_unexpected_names_are_listed(tmp_path: Path, temp_root: Path, kind: str) -> None:
    members = [CONFIG, ("model.bin", b"x"), ("pickle.pkl", b"x"), ("sub/tokenizer.json", b"x")]
    refused(
        make_archive(tmp_path / "up", kind, members),
        temp_root,
        r"unexpected files in the archive: 'model.bin', 'pickle.pkl', 'sub/tokenizer.json'; a model archive holds",
    )


def test_two_top_folders_are_refused(tmp_path: Path, temp_root: Path) -> None:
    members = [("a/config.json", b"{}"), ("b/model.safetensors", b"x")]
    refused(make_tar(tmp_path / "up", members), temp_root, "unexpected files in the archive: 'a/config.json', 'b/m")


@pytest.mark.parametrize("kind", KINDS)
def test_no_config_json_is_refused(tmp_path: Path, temp_root: Path, kind: str) -> None:
    path = make_archive(tmp_path / "up", kind, [("m/model.safetensors", b"x"), ("m/tokenizer.json", b"{}")])
    refused(path, temp_root, "no config.json in the archive: an HF model directory needs one")


@pytest.mark.parametrize("kind", KINDS)
def test_an_empty_archive_is_refused(tmp_path: Path, temp_root: Path, kind: str) -> None:
    refused(make_archive(tmp_path / "up", kind, []), temp_root, "the archive is empty: it holds no files")


# ---------------------------------------------------------------------------------------------------- limits


@pytest.mark.parametrize("kind", KINDS)
def test_too_many_members(tmp_path: Path, temp_root: Path, kind: str) -> None:
    members = [CONFIG] + [(f"model-{i}.safetensors", b"x") for i in range(5)]
    refused(make_archive(tmp_path / "up", kind, members), temp_root, "too many members: .*5", max_members=5)


@pytest.mark.parametrize("kind", KINDS)
def test_an_oversize_member(tmp_path: Path, temp_root: Path, kind: str) -> None:
    members = [CONFIG, ("model.safetensors", b"x" * 1001)]
    refused(
        make_archive(tmp_path / "up", kind, members),
        temp_root,
        "member 'model.safetensors': 1,001 bytes, over the limit of 1,000 per file",
        max_member_bytes=1000,
    )


@pytest.mark.parametrize("kind", KINDS)
def test_the_total_size(tmp_path: Path, temp_root: Path, kind: str) -> None:
    members = [CONFIG, ("model-1.safetensors", b"x" * 600), ("model-2.safetensors", b"x" * 600)]
    refused(
        make_archive(tmp_path / "up", kind, members),
        temp_root,
        "past the limit of 1,000 bytes|declares 1,202 bytes",
        max_total_bytes=1000,
    )


def _gz_bomb(path: Path, size: int) -> Path:
    """A tar.gz of config.json and a member of ``size`` zero bytes, written without holding it in memory."""
    with gzip.open(path, "wb") as gz, tarfile.open(fileobj=gz, mode="w|") as tf:
        tf.addfile(tarfile.TarInfo("config.json"), io.BytesIO(b""))
        ti = tarfile.TarInfo("model.safetensors")
        ti.size = size

        class Zeros(io.RawIOBase):
            def readinto(self, b: Any) -> int:
                b[:] = bytes(len(b))
                return len(b)

        tf.addfile(ti, Zeros())  # type: ignore[arg-type]
    return path


def test_a_gzip_bomb_is_stopped_by_the_total_before_its_data(tmp_path: Path, temp_root: Path) -> None:
    path = _gz_bomb(tmp_path / "bomb.tar.gz", 64 << 20)
    assert path.stat().st_size < 200_000  # 64 MiB of zeros
    refused(
        path,
        temp_root,
        "member 'model.safetensors': the archive expands past the limit of 1,048,576 bytes",
        max_total_bytes=1 << 20,
    )


def test_a_gzip_bomb_is_stopped_by_its_ratio_early(tmp_path: Path, temp_root: Path) -> None:
    path = _gz_bomb(tmp_path / "bomb.tar.gz", 64 << 20)
    err = refused(
        path,
        temp_root,
        r"the gzip stream: expands more than 50 times .*decompression bomb",
        max_ratio=50,
        ratio_floor_bytes=1 << 20,
    )
    expanded = int(re.search(r"gave ([\d,]+) so far", str(err)).group(1).replace(",", ""))  # type: ignore[union-attr]
    assert expanded < 4 << 20  # stopped within a few chunks of the floor, not after 64 MiB


def test_a_zip_bomb_is_refused_from_its_headers(tmp_path: Path, temp_root: Path) -> None:
    path = make_zip(tmp_path / "bomb.zip", [CONFIG, ("model.safetensors", bytes(8 << 20))])
    refused(path, temp_root, r"member 'model.safetensors': expands more than 200 times", ratio_floor_bytes=1 << 20)


def test_bytes_are_counted_while_copying_and_stop_at_the_limit(tmp_path: Path) -> None:
    class Endless(io.RawIOBase):
        """A member whose header lied: data without end."""

        read_bytes = 0

        def read(self, n: int = -1) -> bytes:
            self.read_bytes += n
            return bytes(n)

    src = Endless()
    up = archive._Unpacker(tmp_path, ArchiveLimits(max_member_bytes=10 << 20))
    with pytest.raises(ArchiveError, match=r"member 'model\.safetensors': more than 10,485,760 bytes"):
        up.write("model.safetensors", ("model.safetensors",), src)  # type: ignore[arg-type]
    assert src.read_bytes <= (10 << 20) + archive._CHUNK


# ---------------------------------------------------------------------------------------------------- corrupt


@pytest.mark.parametrize("kind", KINDS)
def test_a_truncated_archive(model_dir: Path, tmp_path: Path, temp_root: Path, kind: str) -> None:
    path = make_archive(tmp_path / "up", kind, model_files(model_dir))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    refused(path, temp_root, f"the {re.escape(kind)} archive is truncated or corrupt")


def test_a_gzip_of_something_else(tmp_path: Path, temp_root: Path) -> None:
    (tmp_path / "up").write_bytes(gzip.compress(b"not a tar at all" * 100))
    refused(tmp_path / "up", temp_root, "the tar.gz archive is truncated or corrupt")
