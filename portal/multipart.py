"""A ``multipart/form-data`` body read as it arrives: a model upload from a plain HTML form, never whole in
memory or on disk twice.

The upload form puts its text fields first (the CSRF token, then name, version, ...) and its one file last,
the order browsers send them in. :meth:`StreamedForm.read_fields` reads the text fields (each at most
``max_field_bytes``, at most ``max_fields`` of them) and stops where the file's part begins, so the view can
check the token before a byte of the file is read; the form is then an async iterator over the file's bytes
(as the request body delivers them, less the few bytes that might start the closing delimiter). Parts after
the file are not read. A malformed or truncated body is a :class:`ValidationError`.

The parser is RFC 7578's strict form (CRLF line ends, as browsers and HTTP clients send): it looks for the
whole delimiter ``CRLF--boundary`` and holds back one byte less than it, so the result never depends on where
the network cut the chunks. (werkzeug's sans-IO ``MultipartDecoder`` guesses at partial delimiters and, at
some chunk edges, adds a stray CR to a part: pallets/werkzeug#3285.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from werkzeug.http import parse_options_header

from bitnet_actor.services.errors import ValidationError

if TYPE_CHECKING:
    from collections.abc import AsyncIterable, AsyncIterator

__all__ = ["StreamedForm"]

_CRLF = b"\r\n"
_MAX_HEADERS = 8192  # a part's header block; browsers send two or three short lines
_MAX_PREAMBLE = 65536


def _malformed(why: str) -> ValidationError:
    return ValidationError(f"the form's body is malformed: {why}", field="file")


class StreamedForm:
    """The text fields before a multipart body's file, then the file's bytes (see the module docstring).

    Args:
        chunks: the request body.
        content_type: the request's ``Content-Type`` (``multipart/form-data; boundary=...``).
        max_field_bytes: the longest text field accepted.
        max_fields: the most text fields accepted before the file.

    Raises:
        ValidationError: not a multipart body (on creation).
    """

    def __init__(
        self, chunks: AsyncIterable[bytes], content_type: str, *, max_field_bytes: int = 4096, max_fields: int = 16
    ) -> None:
        kind, options = parse_options_header(content_type)
        boundary = options.get("boundary", "")
        if kind != "multipart/form-data" or not 1 <= len(boundary) <= 70:  # RFC 2046's bound
            raise ValidationError("the upload form must be sent as multipart/form-data", field="file")
        self._delimiter = _CRLF + b"--" + boundary.encode("latin-1")
        self._chunks: AsyncIterator[bytes] = aiter(chunks)
        self._buffer = bytearray(_CRLF)  # the body's first boundary then reads as a delimiter too
        self._closed = False  # the close delimiter was read
        self._in_file = False
        self._file_done = False
        self.max_field_bytes, self.max_fields = max_field_bytes, max_fields
        self.file_field: str | None = None
        """The name of the file's form field, once :meth:`read_fields` reached it."""
        self.filename: str | None = None
        """The file's name as the browser sent it (``""`` when no file was chosen), None when there is none."""

    async def _more(self) -> None:
        try:
            chunk: bytes = await anext(self._chunks)
        except StopAsyncIteration:
            raise ValidationError("the form's body ended before its last part", field="file") from None
        self._buffer += chunk

    async def _need(self, n: int) -> None:
        while len(self._buffer) < n:
            await self._more()

    async def _skip_preamble(self) -> None:
        while (at := self._buffer.find(self._delimiter)) < 0:
            if len(self._buffer) > _MAX_PREAMBLE:
                raise _malformed("no boundary where the body starts")
            await self._more()
        del self._buffer[:at]

    async def _after_delimiter(self) -> None:
        """Consume the delimiter at the buffer's start and the line end after it (or the close marker)."""
        await self._need(len(self._delimiter) + 2)
        del self._buffer[: len(self._delimiter)]
        if self._buffer.startswith(b"--"):
            self._closed = True
            return
        while True:  # transport padding, then CRLF
            await self._need(2)
            if self._buffer.startswith(_CRLF):
                del self._buffer[:2]
                return
            if self._buffer[0] not in b" \t":
                raise _malformed("a boundary is followed by more than a line end")
            del self._buffer[:1]

    async def _headers(self) -> dict[str, str]:
        while True:
            if self._buffer.startswith(_CRLF):  # a part without headers
                del self._buffer[:2]
                return {}
            end = self._buffer.find(_CRLF + _CRLF)
            if end >= 0:
                break
            if len(self._buffer) > _MAX_HEADERS:
                raise _malformed("a part's headers are too long")
            await self._more()
        block = bytes(self._buffer[:end])
        del self._buffer[: end + 4]
        headers = {}
        for line in block.decode("utf-8", "replace").split("\r\n"):
            name, sep, value = line.partition(":")
            if not sep:
                raise _malformed("a part's header has no ':'")
            headers[name.strip().lower()] = value.strip()
        return headers

    async def _data(self) -> tuple[bytes, bool]:
        """The current part's next bytes, and whether the part ended (its delimiter then starts the buffer)."""
        keep = len(self._delimiter) - 1  # what could be the start of the delimiter
        while True:
            at = self._buffer.find(self._delimiter)
            if at >= 0:
                data = bytes(self._buffer[:at])
                del self._buffer[:at]
                return data, True
            if len(self._buffer) > keep:
                data = bytes(self._buffer[:-keep])
                del self._buffer[:-keep]
                return data, False
            await self._more()

    async def read_fields(self) -> dict[str, str]:
        """The text fields before the file (the last value of a repeated name); stops at the file's part.

        Raises:
            ValidationError: a field too long or not UTF-8, too many fields, a malformed or truncated body.
        """
        fields: dict[str, str] = {}
        await self._skip_preamble()
        await self._after_delimiter()
        while not self._closed:
            kind, options = parse_options_header((await self._headers()).get("content-disposition", ""))
            name = options.get("name")
            if kind != "form-data" or name is None:
                raise _malformed("a part has no Content-Disposition: form-data; name=...")
            if "filename" in options:
                self.file_field, self.filename, self._in_file = name, options["filename"], True
                return fields
            if len(fields) >= self.max_fields:
                raise ValidationError("the form has too many fields", field=name)
            value, ended = bytearray(), False
            while not ended:
                data, ended = await self._data()
                value += data
                if len(value) > self.max_field_bytes:
                    raise ValidationError(f"{name} is too long", field=name)
            try:
                fields[name] = value.decode("utf-8")
            except UnicodeDecodeError:
                raise ValidationError(f"{name} is not UTF-8 text", field=name) from None
            await self._after_delimiter()
        return fields

    def __aiter__(self) -> StreamedForm:
        return self

    async def __anext__(self) -> bytes:
        """The file's next bytes (after :meth:`read_fields`).

        Raises:
            ValidationError: a malformed or truncated body.
        """
        while self._in_file and not self._file_done:
            data, self._file_done = await self._data()
            if data:
                return data
        raise StopAsyncIteration
