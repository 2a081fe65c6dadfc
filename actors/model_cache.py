"""Loaded models within a memory budget, each with its scheduler.

The ``ModelCache`` actor owns every loaded model and the ``Scheduler`` serving it (started in the cache's
nursery when the model is loaded, stopped when it is evicted).

- ``acquire(name)`` returns a ``Lease`` (model + scheduler) and counts it in flight; ``release`` ends it.
  The first request for a model loads it in a worker thread; concurrent requests wait for that one load; a
  failed load is reported to every waiter and not remembered (the next request tries again).
- The budget (``BITNET_MODEL_MEMORY``) counts the models' bytes and their prefix caches' (cached prompt blocks,
  ``Model.prefix_cache``). Before a load that does not fit, the prefix caches are dropped first (they are only
  a cache), then idle models (no lease, not pinned) are evicted least-recently-used first until the new one
  fits; if it can't fit even then, ``ModelCapacityError`` says why (the HTTP edge answers 503).
- ``pin(name)`` keeps a model loaded (the default models of ``serve --model``).
- Every lease names what was loaded (``Lease.identity``): a registry version's content hash (its cache
  name, ``sha256:...``), else the name with a fingerprint of the files it was loaded from (their paths,
  sizes and modification times), so that answers cached for one set of weights never serve another.

Restart policy: none needed; it does no work that can fail except loads, whose errors go to the waiters.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from actors.errors import ActorError
from actors.scheduler import Scheduler

if TYPE_CHECKING:
    from collections.abc import Callable

    from bitnet_actor.engine import Model

__all__ = [
    "Lease",
    "ModelCache",
    "ModelCacheStatistics",
    "ModelCapacityError",
    "ModelLoadFailedError",
    "UnknownModelError",
]

log = logging.getLogger(__name__)


class UnknownModelError(ActorError):
    """No model is registered under that name."""


class ModelCapacityError(ActorError):
    """The model cannot fit in the memory budget, even after evicting every idle model."""


class ModelLoadFailedError(ActorError):
    """Loading the model failed; the message says why."""


@dataclass(slots=True)
class _Entry:
    name: str
    path: str
    model: Model | None = None
    scheduler: Scheduler | None = None
    cancel: trio.CancelScope | None = None
    loading: trio.Event | None = None
    error: BaseException | None = None
    nbytes: int = 0
    leases: int = 0
    pinned: bool = False
    last_used: float = field(default_factory=time.monotonic)
    identity: str = ""  # what was loaded (see the module docstring), set by each load


@dataclass(frozen=True, slots=True)
class Lease:
    """A model in use: don't evict it until released."""

    name: str
    model: Model
    scheduler: Scheduler
    identity: str = ""
    """What was loaded: the same for the same weights, different for any other (see the module docstring)."""


@dataclass(frozen=True, slots=True)
class ModelCacheStatistics:
    """For metrics."""

    loaded: tuple[str, ...]
    bytes: int
    budget: int
    loads: int
    evictions: int
    hits: int  # acquires that found the model loaded
    misses: int  # acquires that had to load it or wait for a load (hits + misses = acquires of known models)
    failures: int
    prefix_cache_bytes: int = 0  # the loaded models' cached prompt blocks (counted in the budget too)


class ModelCache:
    """See the module docstring."""

    def __init__(
        self,
        *,
        budget_bytes: int,
        loader: Callable[[str], Model],
        scheduler_factory: Callable[[str, Model], Scheduler] | None = None,
    ) -> None:
        self.budget_bytes = budget_bytes
        self._loader = loader
        self._make_scheduler = scheduler_factory or (lambda name, m: Scheduler(m))
        self._entries: dict[str, _Entry] = {}
        self._nursery: trio.Nursery | None = None
        self._lock = trio.Lock()  # one load at a time: budget decisions need a stable view
        self.loads = self.evictions = self.hits = self.misses = self.failures = 0

    def register(self, name: str, path: str, *, pinned: bool = False) -> None:
        """Make ``name`` loadable from ``path`` (a local directory or file)."""
        entry = self._entries.get(name)
        if entry is None:
            self._entries[name] = _Entry(name, path, pinned=pinned)
        else:
            entry.path, entry.pinned = path, entry.pinned or pinned

    def names(self) -> list[str]:
        """Registered model names."""
        return sorted(self._entries)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the schedulers' nursery until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self._nursery = None
                for entry in self._entries.values():
                    if entry.scheduler is not None:
                        entry.scheduler.close()

    async def acquire(self, name: str) -> Lease:
        """The loaded model ``name`` and its scheduler, loading it if needed.

        Raises:
            UnknownModelError, ModelCapacityError, ModelLoadFailedError.
        """
        await trio.lowlevel.checkpoint()  # a cache hit is still a checkpoint (callers may rely on it)
        entry = self._entries.get(name)
        if entry is None:
            raise UnknownModelError(f"the model {name!r} does not exist")
        if entry.model is not None and entry.scheduler is not None:
            self.hits += 1
        else:
            self.misses += 1
        while True:
            if entry.model is not None and entry.scheduler is not None:
                entry.leases += 1
                entry.last_used = time.monotonic()
                return Lease(name, entry.model, entry.scheduler, entry.identity)
            if entry.loading is not None:
                done = entry.loading
                await done.wait()
                if entry.error is not None and entry.model is None:
                    raise ModelLoadFailedError(f"loading the model {name!r} failed: {entry.error}")
                continue
            await self._load(entry)

    def release(self, lease: Lease) -> None:
        """End a lease."""
        entry = self._entries[lease.name]
        entry.leases = max(0, entry.leases - 1)
        entry.last_used = time.monotonic()

    async def pin(self, name: str) -> None:
        """Load ``name`` now and keep it loaded."""
        entry = self._entries.get(name)
        if entry is None:
            raise UnknownModelError(f"the model {name!r} does not exist")
        entry.pinned = True
        lease = await self.acquire(name)
        self.release(lease)

    async def _load(self, entry: _Entry) -> None:
        entry.loading = trio.Event()
        entry.error = None
        try:
            async with self._lock:
                need = _estimate(entry.path)
                self._make_room(need, entry.name)
                log.info("loading model %s from %s", entry.name, entry.path)
                model = await trio.to_thread.run_sync(self._loader, entry.path)
                entry.identity = await trio.to_thread.run_sync(_identity, entry.name, entry.path)
                entry.nbytes = model.nbytes
                log.info("model %s loaded on %s (%d MiB)", entry.name, model.device, entry.nbytes >> 20)
                self._make_room(0, entry.name)  # the real size may differ from the file's
                await self._start_scheduler(entry, model)
                self.loads += 1
        except Exception as exc:
            self.failures += 1
            entry.error = exc
            log.warning("loading model %s failed: %s", entry.name, exc)
            if isinstance(exc, (ModelCapacityError, UnknownModelError)):
                raise
            raise ModelLoadFailedError(f"loading the model {entry.name!r} failed: {exc}") from exc
        finally:
            event, entry.loading = entry.loading, None
            event.set()

    def _loaded_bytes(self, exclude: str | None = None) -> int:
        return sum(e.nbytes for e in self._entries.values() if e.model is not None and e.name != exclude)

    def _prefix_bytes(self) -> int:
        caches = (e.model.prefix_cache for e in self._entries.values() if e.model is not None)
        return sum(c.nbytes for c in caches if c is not None)

    def _drop_prefix_caches(self) -> int:
        freed = 0
        for e in self._entries.values():
            cache = e.model.prefix_cache if e.model is not None else None
            if cache is not None:
                freed += cache.clear()  # thread-safe: a step may be running
        if freed:
            log.info("dropped the prefix caches (%d MiB) to make room for a model", freed >> 20)
        return freed

    def _make_room(self, need: int, for_name: str) -> None:
        if need > self.budget_bytes:
            raise ModelCapacityError(
                f"the model {for_name!r} needs {need / 2**20:.0f} MiB, more than the memory budget of "
                f"{self.budget_bytes / 2**20:.0f} MiB (BITNET_MODEL_MEMORY)"
            )
        # need: the file's estimate before a load; 0 after it, when the entry holds the real size
        entry_bytes = need or self._entries[for_name].nbytes
        while self._loaded_bytes(exclude=for_name) + self._prefix_bytes() + entry_bytes > self.budget_bytes:
            if self._drop_prefix_caches():
                continue
            idle = [
                e
                for e in self._entries.values()
                if e.model is not None
                and e.name != for_name
                and e.leases == 0
                and not e.pinned
                and (e.scheduler is None or not e.scheduler.busy)
            ]
            if not idle:
                raise ModelCapacityError(
                    f"the model {for_name!r} does not fit in the memory budget now: the loaded models are busy or "
                    "pinned; retry later"
                )
            self._evict(min(idle, key=lambda e: e.last_used))

    def _evict(self, entry: _Entry) -> None:
        log.info("evicting model %s (%d MiB)", entry.name, entry.nbytes >> 20)
        if entry.scheduler is not None:
            entry.scheduler.close()
        if entry.cancel is not None:
            entry.cancel.cancel()
        entry.model = entry.scheduler = entry.cancel = None
        entry.nbytes = 0
        self.evictions += 1

    async def _start_scheduler(self, entry: _Entry, model: Model) -> None:
        if self._nursery is None:
            raise ActorError("the model cache is not running")
        scheduler = self._make_scheduler(entry.name, model)

        async def serve(*, task_status: trio.TaskStatus[trio.CancelScope]) -> None:
            with trio.CancelScope() as scope:
                task_status.started(scope)
                await scheduler.run()

        entry.cancel = await self._nursery.start(serve)
        entry.model, entry.scheduler = model, scheduler

    def statistics(self) -> ModelCacheStatistics:
        """Loaded models, bytes, counters."""
        loaded = tuple(sorted(e.name for e in self._entries.values() if e.model is not None))
        return ModelCacheStatistics(
            loaded,
            self._loaded_bytes(),
            self.budget_bytes,
            self.loads,
            self.evictions,
            self.hits,
            self.misses,
            self.failures,
            self._prefix_bytes(),
        )

    def schedulers(self) -> dict[str, Scheduler]:
        """The running schedulers by model name."""
        return {e.name: e.scheduler for e in self._entries.values() if e.scheduler is not None}


def _identity(name: str, path: str) -> str:
    if name.startswith("sha256:"):  # a registry version: named by its content
        return name
    digest = hashlib.sha256(name.encode())
    try:
        files = sorted(os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs) if os.path.isdir(path) else [path]
        for file in files:
            st = os.stat(file)
            digest.update(f"\0{os.path.relpath(file, path)}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    except OSError:
        digest.update(f"\0{path}\0unreadable".encode())
    return f"{name}@{digest.hexdigest()[:32]}"


def _estimate(path: str) -> int:
    # Packed checkpoints load to about their size on disk; bf16 masters shrink ~8x when ternarized, but the
    # estimate only decides whether to evict before loading, and the real size is checked right after.
    try:
        if os.path.isdir(path):
            return sum(
                e.stat().st_size for e in os.scandir(path) if e.is_file() and e.name.endswith((".safetensors", ".gguf"))
            )
        return os.stat(path).st_size
    except OSError:
        return 0
