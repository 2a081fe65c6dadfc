"""Content-addressed object store: one async interface, a filesystem backend and an S3 backend.

Objects are immutable blobs (model weights, uploads, exports) addressed by the SHA-256 of their content.
The key of an object is always ``sha256/<64 lowercase hex digits>``; any other key is rejected with
:class:`ValueError` before it reaches a path or a request, so a key can never traverse out of the store.

Every method is a Trio coroutine (except :meth:`ObjectStore.presigned_url`, which needs no I/O); blocking
work (file I/O, hashing, boto3 calls) runs in worker threads via :func:`trio.to_thread.run_sync`. Foreign
errors are mapped at this boundary:

* a missing key raises :class:`~bitnet_actor.errors.ObjectNotFoundError`;
* a backend that cannot be reached or refuses us raises :class:`~bitnet_actor.errors.StoreUnavailableError`;
* anything else the backend reports raises :class:`~bitnet_actor.errors.StoreError`.

Typical use::

    async with FilesystemObjectStore(root, signing_key=k, base_url=url) as store:
        info = await store.put(chunks)               # bytes or any AsyncIterable[bytes]
        async with store.open_stream(info.key) as stream:
            async for chunk in stream:
                ...

Modules: :mod:`._keys` (keys, :class:`ObjectInfo`, presigned-URL signatures), :mod:`._base` (the interface and
the shared machinery), :mod:`.filesystem` and :mod:`.s3` (the backends), :mod:`.regions` (a store per region).
"""

from __future__ import annotations

from bitnet_actor.stores.objects._base import DEFAULT_CHUNK_SIZE, ObjectStore, ObjectStream
from bitnet_actor.stores.objects._keys import (
    ObjectInfo,
    key_for_digest,
    sign_presigned,
    validate_key,
    verify_presigned,
)
from bitnet_actor.stores.objects.filesystem import FilesystemObjectStore
from bitnet_actor.stores.objects.regions import RegionStores
from bitnet_actor.stores.objects.s3 import S3ObjectStore

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "FilesystemObjectStore",
    "ObjectInfo",
    "ObjectStore",
    "ObjectStream",
    "RegionStores",
    "S3ObjectStore",
    "key_for_digest",
    "sign_presigned",
    "validate_key",
    "verify_presigned",
]
