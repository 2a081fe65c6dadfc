"""Local copies of stored model files, for the engine to load: ``<data dir>/model-files/<sha256>`` (a GGUF
file, or the HF directory an archive unpacks to).

The stored objects are encrypted (:mod:`.encrypted`); a local copy is the plaintext the engine maps, kept in
the data dir (mode 0700), one per content hash whichever organizations uploaded it (the model cache keys
loaded weights by the same hash, so identical uploads share one copy in memory too). A copy is written under
a temporary name and renamed when whole, so a crash or a cancelled download never leaves a half copy that
could be loaded; concurrent requests for the same hash wait for one download.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from bitnet_actor.services.models.encrypted import EncryptedObjects
    from bitnet_actor.services.models.registry import ModelVersion
    from bitnet_actor.stores.postgres import Database

__all__ = ["LocalFiles"]


class LocalFiles:
    """The local copies of one replica (see the module docstring)."""

    def __init__(self, root: Path, objects: EncryptedObjects, db: Database) -> None:
        self.root = root
        self._objects = objects
        self._db = db
        self._locks: dict[str, trio.Lock] = {}

    def cache_key(self, version: ModelVersion) -> str:
        """The model cache's key for a version's weights: its content hash."""
        assert version.sha256 is not None
        return f"sha256:{version.sha256}"

    async def path_of(self, version: ModelVersion) -> str:
        """A local path the engine can load ``version`` from (downloaded and unpacked on first use).

        Raises:
            StoreError: the object store failed. ArchiveError: the stored archive no longer unpacks.
        """
        if version.local_path is not None:
            return version.local_path
        assert version.sha256 is not None
        assert version.blob_id is not None
        final = self.root / version.sha256
        if await trio.Path(final).exists():
            return str(final)
        lock = self._locks.setdefault(version.sha256, trio.Lock())
        async with lock:
            if not await trio.Path(final).exists():
                await self._fetch(version, final)
        return str(final)

    async def _fetch(self, version: ModelVersion, final: Path) -> None:
        from bitnet_actor.services.models.archive import detect_format, unpack_model_archive

        async with self._db.transaction(org_id=version.org_id, readonly=True) as tx:
            key = await tx.fetchval("SELECT object_key FROM model_blobs WHERE id = $1", version.blob_id)
        await trio.Path(self.root).mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=".download-", dir=self.root)
        tmp = Path(tmp_name)
        try:
            fh = trio.wrap_file(os.fdopen(fd, "wb"))
            async with fh, self._objects.open(version.org_id, key) as stream:  # decrypted on the way
                async for chunk in stream:
                    await fh.write(chunk)
            fmt = await trio.to_thread.run_sync(detect_format, tmp)
            if fmt == "gguf":
                await trio.to_thread.run_sync(os.replace, tmp, final)
                return
            model_dir = await trio.to_thread.run_sync(lambda: unpack_model_archive(tmp, temp_root=self.root))
            await trio.to_thread.run_sync(os.replace, model_dir, final)
            await trio.to_thread.run_sync(lambda: shutil.rmtree(model_dir.parent, ignore_errors=True))
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(lambda: tmp.unlink(missing_ok=True))
