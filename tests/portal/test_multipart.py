"""portal/multipart.py: the upload form's body read as it arrives, whatever the chunks' boundaries; the text
fields before the file, then the file's bytes exactly; malformed bodies refused with a reason."""

from __future__ import annotations

import os

import pytest

from bitnet_actor.services.errors import ValidationError
from portal.multipart import StreamedForm
from tests.portal.uploading import multipart

FIELDS = [("csrf_token", "t0k3n"), ("name", "tiny"), ("version", "1"), ("description", "é, ünïcode ✓")]


class Chunks:
    """``data`` in pieces of ``size`` bytes (an async iterator, as a request body is)."""

    def __init__(self, data: bytes, size: int) -> None:
        self.data, self.size, self.at = data, size, 0

    def __aiter__(self) -> Chunks:
        return self

    async def __anext__(self) -> bytes:
        if self.at >= len(self.data):
            raise StopAsyncIteration
        piece = self.data[self.at : self.at + self.size]
        self.at += self.size
        return piece


async def read_all(form: StreamedForm) -> tuple[dict[str, str], bytes]:
    fields = await form.read_fields()
    return fields, b"".join([chunk async for chunk in form])


@pytest.mark.parametrize("size", [1, 7, 64, 1000, 1 << 20])
async def test_fields_then_the_file_at_any_chunk_size(size: int) -> None:
    # The file holds what looks like a boundary's start and CRLFs: only the real boundary ends it.
    data = os.urandom(3000) + b"\r\n--" + os.urandom(50) + b"\r\n\r\n" + bytes(range(256))
    body, content_type = multipart(FIELDS, ("file", "model.tar", data))
    form = StreamedForm(Chunks(body, size), content_type)
    fields, file = await read_all(form)
    assert fields == dict(FIELDS)
    assert form.file_field == "file" and form.filename == "model.tar"
    assert file == data


class Pieces:
    """``pieces`` one after the other."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = list(pieces)

    def __aiter__(self) -> Pieces:
        return self

    async def __anext__(self) -> bytes:
        if not self.pieces:
            raise StopAsyncIteration
        return self.pieces.pop(0)


@pytest.mark.parametrize("data", [b"", b"x", b"ends in CR\r", b"ends in CRLF\r\n", b"\r\n-", b"\r\n--", b"--\r\n"])
async def test_every_cut_of_the_body_reads_the_same(data: bytes) -> None:
    body, content_type = multipart([("name", "a\r"), ("version", "")], ("file", "f", data))
    for cut in range(len(body) + 1):
        form = StreamedForm(Pieces([body[:cut], body[cut:]]), content_type)
        assert await read_all(form) == ({"name": "a\r", "version": ""}, data), cut


async def test_no_file_and_an_empty_file() -> None:
    body, content_type = multipart(FIELDS, None)
    form = StreamedForm(Chunks(body, 10), content_type)
    assert await read_all(form) == (dict(FIELDS), b"")
    assert form.file_field is None and form.filename is None
    body, content_type = multipart(FIELDS, ("file", "", b""))  # a file input left empty
    form = StreamedForm(Chunks(body, 10), content_type)
    assert await read_all(form) == (dict(FIELDS), b"")
    assert form.file_field == "file" and form.filename == ""


async def test_the_fields_stop_at_the_file() -> None:
    body, content_type = multipart(FIELDS, ("file", "m.gguf", b"GGUF" * 10), file_first=True)
    form = StreamedForm(Chunks(body, 100), content_type)
    assert await form.read_fields() == {}  # the token comes after the file: the view refuses it unread


@pytest.mark.parametrize(
    ("content_type", "reason"),
    [("application/x-www-form-urlencoded", "multipart"), ("multipart/form-data", "multipart"), ("", "multipart")],
)
def test_not_multipart(content_type: str, reason: str) -> None:
    with pytest.raises(ValidationError, match=reason):
        StreamedForm(Chunks(b"", 1), content_type)


async def test_malformed_bodies_are_refused() -> None:
    body, content_type = multipart([("name", "x" * 5000)], ("file", "f", b"1"))
    with pytest.raises(ValidationError, match="name is too long"):
        await StreamedForm(Chunks(body, 512), content_type).read_fields()
    body, content_type = multipart([(f"f{i}", "v") for i in range(20)], ("file", "f", b"1"))
    with pytest.raises(ValidationError, match="too many fields"):
        await StreamedForm(Chunks(body, 512), content_type).read_fields()
    body, content_type = multipart([("name", "x")], ("file", "f", b"123456789" * 100))
    form = StreamedForm(Chunks(body[:-200], 64), content_type)  # the connection dropped mid-file
    with pytest.raises(ValidationError, match="ended before"):
        await read_all(form)
    boundary = content_type.split("boundary=")[1]
    bad = f"--{boundary}\r\nX-Nothing: here\r\n\r\nvalue\r\n--{boundary}--\r\n".encode()
    with pytest.raises(ValidationError, match="malformed"):
        await StreamedForm(Chunks(bad, 64), content_type).read_fields()
    latin = f'--{boundary}\r\nContent-Disposition: form-data; name="name"\r\n\r\n'.encode() + b"\xff\xfe\r\n"
    with pytest.raises(ValidationError, match="not UTF-8"):
        await StreamedForm(Chunks(latin + f"--{boundary}--\r\n".encode(), 64), content_type).read_fields()
