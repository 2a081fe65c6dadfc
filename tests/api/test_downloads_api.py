"""Model downloads through signed links on real PostgreSQL and the filesystem store: the file comes back as
uploaded (decrypted), whole or by byte range; a forged, expired or foreign link is refused; another
organization gets 404; a deleted version's link stops working."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import trio

from tests.api.conftest import Caller
from tests.api.test_uploads_api import tar_of, upload

if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any

    from tests.api.conftest import Harness


async def link(h: Harness, org: str, who: Caller, ref: str = "tiny/versions/1", **body: Any) -> Any:
    return await h.call("POST", f"/api/v1/orgs/{org}/models/{ref}/download", who, json=body or None)


def path_of(url: str) -> str:
    return url[url.index("/api/v1/model-downloads/") :]


def assert_error(body: dict[str, Any], status_type: str) -> None:
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == status_type


async def test_download_whole_and_by_range(harness: Harness, model_dir: Path) -> None:
    h = harness
    owner = await h.signup()
    org = next(iter(owner.orgs.values()))
    data = tar_of(model_dir)
    assert (await upload(h, org, owner, data, "tiny", "1")).status_code == 201

    r = await link(h, org, owner)
    assert r.status_code == 200, await r.get_data()
    made = await r.get_json()
    assert made["object"] == "model.download" and made["model"] == "tiny:1"
    assert made["filename"] == "tiny-1.tar" and made["bytes"] == len(data)
    assert made["sha256"] == hashlib.sha256(data).hexdigest()
    assert made["url"].startswith(h.system.settings.base_url)

    r = await h.call("GET", path_of(made["url"]))  # no credentials: the link is the capability
    assert r.status_code == 200
    assert await r.get_data() == data  # decrypted on the way out: exactly the uploaded bytes
    assert r.headers["Content-Length"] == str(len(data))
    assert r.headers["ETag"] == f'"{made["sha256"]}"'
    assert r.headers["Content-Disposition"] == 'attachment; filename="tiny-1.tar"'
    assert r.headers["Accept-Ranges"] == "bytes"

    for header, want in [
        ("bytes=10-99", data[10:100]),
        ("bytes=-16", data[-16:]),
        (f"bytes={len(data) - 5}-", data[-5:]),
        (f"bytes=0-{len(data) + 1000}", data),
    ]:
        r = await h.call("GET", path_of(made["url"]), headers={"Range": header})
        assert r.status_code == 206, header
        assert await r.get_data() == want, header
        assert r.headers["Content-Range"].endswith(f"/{len(data)}")
    for bad in [f"bytes={len(data)}-", "bytes=0-1,5-9", "lines=1-2", "bytes=-"]:
        r = await h.call("GET", path_of(made["url"]), headers={"Range": bad})
        assert r.status_code == 416, bad
        assert r.headers["Content-Range"] == f"bytes */{len(data)}"
    r = await h.call("GET", path_of(made["url"]), headers={"Range": "bytes=0-9", "If-Range": '"other"'})
    assert r.status_code == 200 and await r.get_data() == data  # a changed file: the whole of it


async def test_links_are_checked(harness: Harness, model_dir: Path) -> None:
    h = harness
    owner = await h.signup()
    org = next(iter(owner.orgs.values()))
    assert (await upload(h, org, owner, tar_of(model_dir), "tiny", "1")).status_code == 201
    url = path_of((await (await link(h, org, owner)).get_json())["url"])

    forged = url[:-2] + ("AA" if not url.endswith("AA") else "BB")
    for bad in [forged, "/api/v1/model-downloads/nonsense", url.replace(".", "x", 1)]:
        r = await h.call("GET", bad)
        assert r.status_code == 403, bad
        assert_error(await r.get_json(), "permission_error")

    short = path_of((await (await link(h, org, owner, expires_in=1)).get_json())["url"])
    await trio.sleep(2.1)
    r = await h.call("GET", short)
    assert r.status_code == 403  # expired

    for value in [0, 86401, "soon", True]:
        r = await link(h, org, owner, expires_in=value)
        assert r.status_code == 400, value
        assert (await r.get_json())["error"]["param"] == "expires_in"
    r = await link(h, org, owner, "tiny/versions/9")
    assert r.status_code == 404
    assert_error(await r.get_json(), "invalid_request_error")

    # Who may ask: members and keys with models:write; not a key that may only read or infer, not a viewer;
    # never another org.
    key, _ = await h.key(owner, org, ["models:write"])
    assert (await link(h, "current", Caller(bearer=key))).status_code == 200
    for scope in ("inference", "models:read"):
        other, _ = await h.key(owner, org, [scope], name=scope)
        assert (await link(h, org, Caller(bearer=other))).status_code == 403, scope
    viewer = await h.invite(owner, org, "viewer")
    assert (await link(h, org, viewer)).status_code == 403
    stranger = await h.signup()
    assert (await link(h, org, stranger)).status_code == 404
    theirs = next(iter(stranger.orgs.values()))
    assert (await link(h, theirs, stranger)).status_code == 404  # no tiny:1 of theirs

    # A deleted version's link stops working.
    r = await h.call("DELETE", f"/api/v1/orgs/{org}/models/tiny/versions/1", owner)
    assert r.status_code in (200, 204), await r.get_data()
    r = await h.call("GET", url)
    assert r.status_code == 404
    assert_error(await r.get_json(), "invalid_request_error")
