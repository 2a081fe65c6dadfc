"""The web layer's handle on inference: model leases and generation requests, over the model cache.

``Inference`` is what ``bitnet_actor.handles.Handles.inference`` holds. It owns no task: the ``ModelCache``
actor owns the models and their ``Scheduler`` actors; this handle turns one API request into their messages.

- ``lease(name)`` is an async context manager: the loaded model, kept from eviction while the block runs
  (entering may wait for a load; leaving never blocks). ``lease_version(version)`` does the same for an
  organization's registry version (its files copied locally on first use, keyed by content hash).
- ``submit_nowait(lease, generate)`` queues one ``Generate`` (all its choices or none) with the model's
  scheduler and returns the receive end of a bounded reply channel the caller owns: ``Token`` / ``Finished``
  / ``Failed`` events, each tagged with its choice's index, ending when every choice is done. Closing it
  cancels the generation and frees the batch slots. ``trio.WouldBlock`` when the queue is full (HTTP 429).
"""

from __future__ import annotations

import dataclasses
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from actors.model_cache import ModelLoadFailedError, UnknownModelError
from actors.scheduler import Event, GenerationRequest
from bitnet_actor.errors import BitnetError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from uuid import UUID

    from actors.model_cache import Lease, ModelCache
    from bitnet_actor.engine import SamplingParams
    from bitnet_actor.services.models.files import LocalFiles
    from bitnet_actor.services.models.registry import ModelVersion

__all__ = ["REPLY_SLACK", "Generate", "Inference", "Models"]

REPLY_SLACK = 64
"""Events per choice a client may lag behind before it counts as not reading (its generation is cancelled)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Generate:
    """Generate ``len(params)`` choices from one prompt (a message: frozen).

    Attributes:
        org_id: the organization; the scheduler is fair across organizations.
        prompt_ids: the prompt's token ids.
        params: one ``SamplingParams`` per choice.
        deadline: ``trio.current_time()`` by which every choice must be done.
        weight: the plan's requests per round-robin turn.
        max_running: the plan's cap on running sequences.
    """

    org_id: UUID
    prompt_ids: tuple[int, ...]
    params: tuple[SamplingParams, ...]
    deadline: float
    weight: int = 1
    max_running: int = 1_000_000


class Models:
    """Which models exist and which are loaded, from the model cache (the registry of [H] goes here)."""

    def __init__(self, cache: ModelCache) -> None:
        self._cache = cache

    def model_names(self) -> list[str]:
        """The models that can be leased."""
        return self._cache.names()

    def loaded(self) -> set[str]:
        """The models loaded now."""
        return set(self._cache.statistics().loaded)


class Inference:
    """See the module docstring."""

    def __init__(self, cache: ModelCache, files: LocalFiles | None = None) -> None:
        self._cache = cache
        self._files = files

    @asynccontextmanager
    async def lease_version(self, version: ModelVersion) -> AsyncIterator[Lease]:
        """The loaded weights of a registry version for the block, named ``name:version``.

        The model cache keys them by content hash, so versions with the same bytes (one organization's or
        several) share one loaded copy; the file is copied from the object store on first use.

        Raises:
            UnknownModelError: no local files here. ModelCapacityError, ModelLoadFailedError: as :meth:`lease`.
        """
        if self._files is None:
            raise UnknownModelError(f"the model {version.ref!r} cannot be served here")
        key = self._files.cache_key(version)
        if key not in self._cache.names():
            try:
                path = await self._files.path_of(version)
            except BitnetError as exc:
                raise ModelLoadFailedError(f"the files of {version.ref!r} cannot be read now: {exc}") from exc
            self._cache.register(key, path)
        lease = await self._cache.acquire(key)
        try:
            yield dataclasses.replace(lease, name=version.ref)
        finally:
            self._cache.release(lease)

    @asynccontextmanager
    async def lease(self, name: str) -> AsyncIterator[Lease]:
        """The loaded model ``name`` for the block, kept from eviction until it ends.

        Raises:
            UnknownModelError, ModelCapacityError, ModelLoadFailedError: from the model cache, on entry.
        """
        lease = await self._cache.acquire(name)
        try:
            yield lease
        finally:
            self._cache.release(lease)

    def submit_nowait(self, lease: Lease, generate: Generate) -> trio.MemoryReceiveChannel[Event]:
        """Queue every choice of ``generate`` with the lease's scheduler, or none.

        Returns:
            The receive end of the reply channel (``REPLY_SLACK`` events per choice).

        Raises:
            trio.WouldBlock: the model's queue (or this organization's share of it) is full.
        """
        send, recv = trio.open_memory_channel[Event](REPLY_SLACK * len(generate.params))
        replies: list[trio.MemorySendChannel[Event]] = []
        prompt = list(generate.prompt_ids)
        try:
            for index, params in enumerate(generate.params):
                replies.append(send.clone())
                request = GenerationRequest(
                    org_id=generate.org_id,
                    prompt_ids=prompt,
                    params=params,
                    reply=replies[-1],
                    deadline=generate.deadline,
                    weight=generate.weight,
                    max_running=generate.max_running,
                    index=index,
                )
                lease.scheduler.submit_nowait(request)
        except BaseException:
            for reply in replies:  # the scheduler drops the queued ones: their reply channels are closed
                reply.close()
            recv.close()
            raise
        finally:
            send.close()
        return recv
