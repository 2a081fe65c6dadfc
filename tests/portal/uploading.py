"""Multipart form posts for the portal tests (what a browser sends for a form with a file input), and the
models the models pages' tests upload."""

from __future__ import annotations

import io
import tarfile
import uuid
from pathlib import Path
from typing import Any

import bitnet_actor
from tests.api.conftest import Harness
from tests.portal.conftest import Browser, Page, check_page
from tests.portal.html import form_fields

DEMO_MODEL = Path(bitnet_actor.__file__).parent / "demo_model"
"""The bundled demo checkpoint: a real model that needs nothing built."""


def tar_of(model_dir: Path) -> bytes:
    """``model_dir``'s files as a tar (an HF directory upload)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for path in sorted(model_dir.iterdir()):
            if path.is_file() and path.name != "README.md":
                tf.add(path, arcname=f"model/{path.name}")
    return buf.getvalue()


def multipart(
    fields: list[tuple[str, str]], file: tuple[str, str, bytes] | None, *, file_first: bool = False
) -> tuple[bytes, str]:
    """The body and Content-Type of a ``multipart/form-data`` post of ``fields`` and one ``file`` (field
    name, file name, bytes), the file last as browsers send it (first with ``file_first``)."""
    boundary = f"----portal-test-{uuid.uuid4().hex}"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + value.encode() + b"\r\n"
        for name, value in fields
    ]
    if file is not None:
        name, filename, data = file
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        )
        part = head.encode() + data + b"\r\n"
        if file_first:
            parts.insert(0, part)
        else:
            parts.append(part)
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


async def post_multipart(
    b: Browser,
    path: str,
    fields: list[tuple[str, str]],
    file: tuple[str, str, bytes] | None,
    *,
    file_first: bool = False,
    check: bool = True,
) -> Page:
    """POST a multipart form as ``b`` (its cookies), checked like every other portal answer."""
    body, content_type = multipart(fields, file, file_first=file_first)
    headers = {"User-Agent": "portal-tests", "Content-Type": content_type}
    if b.cookies:
        headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in b.cookies.items())
    r = await b.h.client.open(path, method="POST", headers=headers, data=body)
    page = Page(r.status_code, r.headers, await r.get_data(as_text=True), path)
    if check:
        check_page(page)
    return page


async def submit_upload(b: Browser, form_page: Page, fields: dict[str, Any], data: bytes, **kw: Any) -> Page:
    """Fill the upload form of ``form_page`` (its defaults, then ``fields``) and send ``data`` as its file."""
    form = form_page.by_id("upload-form")
    assert form.attrs["enctype"] == "multipart/form-data" and form.attrs["method"] == "post"
    defaults = [(k, v) for k, v in form_fields(form) if k not in fields and k != "file"]  # the file goes last
    values = defaults + [(k, str(v)) for k, v in fields.items()]
    return await post_multipart(b, form.attrs["action"], values, ("file", "model.tar", data), **kw)


def spool_files(h: Harness) -> list[Path]:
    """What the uploads left in their spool directory (nothing, once each is done)."""
    spool = h.system.settings.data_dir / "uploads-tmp"
    return [p for p in spool.rglob("*") if p.is_file()] if spool.exists() else []
