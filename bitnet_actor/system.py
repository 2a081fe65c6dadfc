"""The root of the process: one nursery that owns everything.

``run_system`` opens, in order and inside one another so they close in reverse: the trio-asyncio loop, the
stores (embedded or configured), the migrations, the actors under their supervisors, and finally Hypercorn
serving ``create_app(handles)`` in the same nursery. The web layer gets ``Handles`` (bitnet_actor.handles),
never this module's objects.

Supervision: the API-key invalidation listener, the tenants' eviction loop, the usage meter, the job worker
(``actors.jobs``) and, with a
Stripe key, the billing outbox (``actors.outbox``) run under ``Supervisor``s
(restarted on a crash, 10 in a minute at most); the model cache is not supervised: it owns the schedulers
(one per loaded model, started in its nursery), and a scheduler whose step fails fails its batch and goes on,
so neither is restarted behind its callers' backs. SIGTERM or SIGINT starts a graceful shutdown: ``/readyz``
turns 503, Hypercorn stops accepting and gives in-flight requests up to ``shutdown_grace`` seconds (one
second before its end, generations still running are ended with a clean last event), then
the actors are cancelled and the stores closed. A second signal cancels at once.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import signal
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import hypercorn.config
import hypercorn.trio
import psutil
import trio
import trio_asyncio

from actors import RestartPolicy, Supervisor
from actors.inference import Inference, Models
from actors.jobs import JobWorker
from actors.key_cache import KeyCache
from actors.meter import UsageMeter
from actors.model_cache import ModelCache
from actors.outbox import BillingOutbox
from actors.route_cache import RouteCache
from actors.scheduler import Scheduler
from actors.tenant import Tenants
from bitnet_actor.app import create_app
from bitnet_actor.config import parse_models, parse_size
from bitnet_actor.errors import StartupError
from bitnet_actor.handles import Handles, Readiness
from bitnet_actor.observability import Metrics
from bitnet_actor.services import platform_models
from bitnet_actor.services.authn import AuthServices
from bitnet_actor.services.billing.checkout import StripeCheckout
from bitnet_actor.services.billing.stripe import StripeBilling
from bitnet_actor.services.email import FileEmailSender
from bitnet_actor.services.jwt import JwtService
from bitnet_actor.services.limits import RequestLimits
from bitnet_actor.services.models import downloads
from bitnet_actor.services.models.encrypted import EncryptedObjects
from bitnet_actor.services.models.files import LocalFiles
from bitnet_actor.services.models.keys import LocalKeyProvider
from bitnet_actor.services.oidc import OidcClient, OidcSettings
from bitnet_actor.services.ratelimit import RateLimiter
from bitnet_actor.services.refresh import RefreshTokens
from bitnet_actor.services.saml import SamlService
from bitnet_actor.services.sessions import SessionStore
from bitnet_actor.services.throttle import LoginThrottle
from bitnet_actor.stores import Stores, open_stores, secret_key
from bitnet_actor.tracing import Tracing

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator

    from bitnet_actor.config import Settings
    from bitnet_actor.engine import Model
    from bitnet_actor.services.email import EmailSender

__all__ = ["build_handles", "check_data_dir", "run_system"]

log = logging.getLogger(__name__)

_MAINTENANCE_INTERVAL_S = 600
_METER_DRAIN_S = 5.0


def usage_meter(settings: Settings, stores: Stores, metrics: Metrics) -> UsageMeter:
    """The usage meter, spilling to ``<data dir>/usage-spill`` what the database does not take."""
    meter = UsageMeter(
        stores.db,
        settings.data_dir / "usage-spill",
        on_written=metrics.usage_events.inc,
        on_spilled=metrics.usage_spilled.inc,
    )
    metrics.usage_buffered.set_function(meter.buffered)
    return meter


def job_worker(settings: Settings, stores: Stores, handles: Handles) -> JobWorker:
    """A conversion-job worker over ``stores``, working in ``<data dir>/jobs-tmp``; it reads and writes model
    files through the same encrypted store and local copies (one download per blob) as inference."""
    return JobWorker(
        stores.db, stores.redis, handles.model_objects, handles.model_files, settings.data_dir / "jobs-tmp"
    )


def billing_outbox(settings: Settings, stores: Stores, metrics: Metrics, tenants: Tenants) -> BillingOutbox | None:
    """The Stripe outbox's sender when a Stripe key is configured (None: billing stays local, the outbox rows
    wait in the table)."""
    if not settings.stripe_api_key:
        return None
    client = StripeBilling(settings.stripe_api_key, api_base=settings.stripe_api_base)
    return BillingOutbox(stores.db, client, on_pending=metrics.outbox_pending.set, on_plan_changed=tenants.forget)


def request_limits(settings: Settings, stores: Stores, metrics: Metrics) -> RequestLimits:
    """Rate limits and quotas on the shared Redis, with the configured fail-open window."""
    return RequestLimits(
        RateLimiter(stores.redis),
        stores.db,
        fail_open_s=settings.ratelimit_fail_open,
        on_fallback=metrics.ratelimit_local.inc,
    )


def build_handles(
    settings: Settings,
    stores: Stores,
    *,
    metrics: Metrics,
    auth: AuthServices,
    cache: ModelCache,
    tenants: Tenants,
    meter: UsageMeter | None = None,
    limits: RequestLimits | None = None,
    readiness: Readiness | None = None,
    routes: RouteCache | None = None,
    tracing: Tracing | None = None,
) -> Handles:
    """The web layer's handles over the running parts (the caller starts the actors behind them; a meter
    made here is not running: its events wait in its buffer, or spill once it is full)."""
    model_objects = EncryptedObjects(
        stores.regions or stores.objects, stores.db, LocalKeyProvider.from_settings(settings)
    )
    model_files = LocalFiles(settings.data_dir / "model-files", model_objects, stores.db)
    return Handles(
        settings=settings,
        stores=stores,
        metrics=metrics,
        auth=auth,
        inference=Inference(cache, model_files),
        model_objects=model_objects,
        model_files=model_files,
        models=Models(cache),
        tenants=tenants,
        meter=meter or usage_meter(settings, stores, metrics),
        limits=limits or request_limits(settings, stores, metrics),
        routes=routes or RouteCache(stores.db, stores.redis),
        link_key=downloads.link_key(secret_key(settings)),
        tracing=tracing or Tracing(),
        readiness=readiness or Readiness(),
        checkout=stripe_checkout(settings, stores),
    )


def stripe_checkout(settings: Settings, stores: Stores) -> StripeCheckout | None:
    """Checkout and Billing Portal sessions when a Stripe key is configured (None: billing stays local)."""
    if not settings.stripe_api_key:
        return None
    return StripeCheckout(stores.db, StripeBilling(settings.stripe_api_key, api_base=settings.stripe_api_base))


DEMO_MODEL_DIR = Path(__file__).with_name("demo_model")
DEMO_MODEL_NAME = "bitnet-demo"


def served_models(settings: Settings) -> dict[str, str]:
    """Name -> path of the platform-wide models: ``--model`` ones, and the bundled demo model unless disabled."""
    models = {name: str(Path(path).expanduser().resolve()) for name, path in parse_models(settings.models).items()}
    if not settings.no_demo_model and (DEMO_MODEL_DIR / "config.json").exists():
        models.setdefault(DEMO_MODEL_NAME, str(DEMO_MODEL_DIR))
    return models


def build_model_cache(settings: Settings, metrics: Metrics, models: dict[str, str]) -> ModelCache:
    """The model cache with its schedulers' settings and metrics hooks; ``models`` registered and pinned."""
    from bitnet_actor.engine import load_model  # numpy-heavy: only when serving

    budget = parse_size(settings.model_memory) if settings.model_memory else psutil.virtual_memory().total // 2

    def scheduler(name: str, model: Model) -> Scheduler:
        def on_step(batch: int, seconds: float) -> None:
            metrics.batch_size.labels(name).observe(batch)
            metrics.step_seconds.labels(name).observe(seconds)

        return Scheduler(
            model,
            max_batch=settings.max_batch,
            max_queue=settings.max_queue,
            on_step=on_step,
            prefix_scope=settings.prefix_cache_scope,
        )

    load = partial(
        load_model,
        device=settings.device,
        opencl_device=settings.opencl_device,
        kv_cache=settings.kv_cache,
        output=settings.output_layer,
    )
    prefix_bytes = parse_size(settings.prefix_cache_memory, "BITNET_PREFIX_CACHE_MEMORY", zero=True)
    if settings.prefix_cache_scope == "off":
        prefix_bytes = 0

    def loader(path: str) -> Model:
        model = load(path)
        model.set_prefix_cache(prefix_bytes)  # 0: off
        return model

    cache = ModelCache(budget_bytes=budget, loader=loader, scheduler_factory=scheduler)
    for name, path in models.items():
        cache.register(name, path, pinned=True)
    metrics.live = lambda: {
        "schedulers": {n: s.statistics() for n, s in cache.schedulers().items()},
        "cache": cache.statistics(),
    }
    return cache


async def _preload(cache: ModelCache, name: str, warming: set[str]) -> None:
    try:
        await cache.pin(name)
    except Exception as exc:  # the server still serves the other models; requests for this one retry the load
        log.error("could not load model %s: %s", name, exc)
    finally:
        warming.discard(name)  # loaded or failed: readiness no longer waits for it


def build_auth(
    settings: Settings,
    stores: Stores,
    key: bytes,
    *,
    mailer: EmailSender | None = None,
    keys: KeyCache | None = None,
) -> AuthServices:
    """The authentication services over ``stores`` (``keys``: the API-key cache whose ``run`` the caller
    starts; a new one when not given)."""
    base = settings.base_url
    oidc = None
    if settings.oidc_issuer:
        oidc_settings = OidcSettings(
            issuer=settings.oidc_issuer,
            client_id=settings.oidc_client_id,
            client_secret=settings.oidc_client_secret,
            redirect_uri=f"{base}/api/v1/oidc/callback",
        )
        oidc = OidcClient(oidc_settings, stores.redis)
    return AuthServices(
        keys=keys or KeyCache(stores.db, stores.redis),
        sessions=SessionStore(stores.redis),
        throttle=LoginThrottle(redis=stores.redis),
        mailer=mailer or FileEmailSender(settings.data_dir / "mail"),
        jwt=JwtService(stores.db, encryption_key=key, issuer=base),
        refresh=RefreshTokens(stores.db),
        oidc=oidc,
        saml=SamlService(stores.db, stores.redis, base_url=base),
    )


def check_data_dir(data_dir: Path) -> None:
    """Create the data dir if needed and make sure we can write to it.

    Raises:
        StartupError: it cannot be created or written.
    """
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        probe = data_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise StartupError(f"data dir {data_dir} is not writable: {exc.strerror or exc}") from None


class _DataDirLock:
    """An exclusive lock on ``data_dir/serve.lock``: one ``serve`` per data dir. The kernel releases it when
    the process dies, so a crash never leaves a stale lock."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "serve.lock"
        self._fd: int | None = None

    def __enter__(self) -> _DataDirLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "another process"
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise StartupError(
                    f"data dir {self.path.parent} is in use by another bitnet-actor serve (pid {holder})"
                ) from None
            raise
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


async def _watch_signals(stop: trio.Event, draining: trio.Event, root: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            if not stop.is_set():
                log.info("received %s: shutting down gracefully", signal.Signals(signum).name)
                draining.set()
                stop.set()
            else:
                log.warning("received %s again: stopping now", signal.Signals(signum).name)
                root.cancel()


async def _close_at_exit(aclose: Callable[[], Awaitable[None]]) -> None:
    try:
        await trio.sleep_forever()
    finally:
        with trio.move_on_after(5, shield=True):
            await aclose()


async def _maintain(stores: Stores, auth: AuthServices) -> None:
    # Partitions for the coming months, created ahead of the rows that will need them; signing keys rotated
    # on schedule (the next key is published an access-token lifetime before it signs).
    while True:
        try:
            await stores.db.execute("SELECT bitnet_ensure_partitions('usage_events')")
            if auth.jwt is not None:
                await auth.jwt.ensure_keys()
            if auth.refresh is not None:
                await auth.refresh.purge()
        except Exception:
            log.exception("partition maintenance failed; retrying in an hour")
            await trio.sleep(3600)
            continue
        await trio.sleep(_MAINTENANCE_INTERVAL_S)


def _hypercorn_config(settings: Settings) -> hypercorn.config.Config:
    config = hypercorn.config.Config()
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    config.bind = [f"{host}:{settings.port}"]
    config.graceful_timeout = settings.shutdown_grace
    config.accesslog = None  # our own JSON access log covers it
    config.errorlog = logging.getLogger("hypercorn.error")
    # An idle connection, and one whose request head is still arriving (a slowloris), is cut off after this.
    config.keep_alive_timeout = 75  # above common load balancer idle timeouts
    config.h11_max_incomplete_size = 16 * 1024  # a request head past 16 KiB is refused (400)
    config.websocket_max_message_size = 16 * 1024 * 1024  # a bigger message closes the socket with 1009
    # No read_timeout: it limits every receive, and an SSE client is silent for the whole stream. A slow body
    # is bounded by the app's BODY_TIMEOUT instead.
    config.include_server_header = False
    return config


class _Started:
    """Forwards ``started`` to a task status and remembers it happened (bind errors come before it)."""

    def __init__(self, inner: trio.TaskStatus[list[str]]) -> None:
        self.inner = inner
        self.done = False

    def started(self, value: list[str]) -> None:
        self.done = True
        self.inner.started(value)


async def _serve_http(
    handles: Handles,
    meter: UsageMeter,
    stop: trio.Event,
    root: trio.CancelScope,
    *,
    task_status: trio.TaskStatus[list[str]],
) -> None:
    config = _hypercorn_config(handles.settings)
    listening = _Started(task_status)
    try:
        await hypercorn.trio.serve(
            create_app(handles),
            config,
            shutdown_trigger=stop.wait,
            task_status=listening,  # type: ignore[arg-type]
        )
    except* OSError as group:  # binding happens inside Hypercorn's nurseries
        if listening.done:
            raise
        exc = next(e for e in iter_leaves(group) if isinstance(e, OSError))
        where = f"{handles.settings.host}:{handles.settings.port}"
        reason = "address already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
        raise StartupError(f"cannot listen on {where}: {reason}") from None
    log.info("HTTP server stopped; writing buffered usage, then stopping actors and closing stores")
    await meter.drain(_METER_DRAIN_S)  # what is not written in time is spilled when the meter is cancelled
    root.cancel()


async def run_system(
    settings: Settings,
    *,
    stop: trio.Event | None = None,
    handle_signals: bool = True,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the whole service until ``stop`` is set or a signal arrives; return after a clean shutdown.

    Args:
        settings: validated settings.
        stop: set it to shut down gracefully (tests); signals set it too.
        handle_signals: install the SIGTERM/SIGINT receiver (only possible in the main thread).
        task_status: receives the list of bound URLs once the server accepts connections.

    Raises:
        StartupError: the data dir, a store or the listening socket could not be set up.
        StoreUnavailableError: a configured server is unreachable.
        MigrationError: the schema could not be brought up to date.
        DeviceError: ``device`` is ``opencl`` and no OpenCL device opens or its kernels do not build.
    """
    check_data_dir(settings.data_dir)
    if settings.device == "opencl":  # fail at start, naming the device and the compiler log, not at each load
        from bitnet_actor.engine.loading import open_opencl

        await trio.to_thread.run_sync(partial(open_opencl, settings.opencl_device, required=True))
    stop = stop if stop is not None else trio.Event()
    models = served_models(settings)
    with _DataDirLock(settings.data_dir):
        register_models = partial(platform_models.register, models=models)
        async with trio_asyncio.open_loop(), open_stores(settings, as_owner=register_models) as stores:
            key = secret_key(settings)
            keys = KeyCache(stores.db, stores.redis)
            auth = build_auth(settings, stores, key, keys=keys)
            metrics = Metrics()
            cache = build_model_cache(settings, metrics, models)
            tenants = Tenants(stores.db)
            meter = usage_meter(settings, stores, metrics)
            limits = request_limits(settings, stores, metrics)
            routes = RouteCache(stores.db, stores.redis)
            tracing = Tracing.from_settings(settings)
            handles = build_handles(
                settings,
                stores,
                metrics=metrics,
                auth=auth,
                cache=cache,
                tenants=tenants,
                meter=meter,
                limits=limits,
                routes=routes,
                tracing=tracing,
            )
            readiness = handles.readiness
            async with trio.open_nursery() as nursery:
                # Long-lived listeners restart on failure (a Redis hiccup must not take the server down);
                # the model cache owns the schedulers and is not restarted behind their callers' backs.
                policy = RestartPolicy(max_restarts=10, window_s=60.0, backoff_s=0.5, backoff_max_s=10.0)
                supervisors = [
                    Supervisor("api-key-invalidation", lambda: keys, policy),
                    Supervisor("route-invalidation", lambda: routes, policy),
                    Supervisor("tenants", lambda: tenants, policy),
                    Supervisor("usage-meter", lambda: meter, policy),
                    Supervisor("limits-settler", lambda: limits, policy),
                    Supervisor("job-worker", lambda: job_worker(settings, stores, handles), policy),
                ]
                outbox = billing_outbox(settings, stores, metrics, tenants)
                if outbox is not None:  # Stripe's calls run in threads, off every request's path
                    sender = outbox
                    supervisors.append(Supervisor("billing-outbox", lambda: sender, policy))
                else:
                    log.info("no Stripe key: billing stays local (the Stripe outbox is not sent)")
                for supervisor in supervisors:
                    await nursery.start(supervisor.run)
                cache_live = metrics.live
                metrics.live = lambda: {
                    **(cache_live() if cache_live else {}),
                    "supervisors": [s.statistics() for s in supervisors],
                    "tenants": tenants.statistics(),
                }
                await nursery.start(cache.run)
                readiness.warming.update(models)
                for name in models:
                    nursery.start_soon(_preload, cache, name, readiness.warming)
                if auth.oidc is not None:
                    nursery.start_soon(_close_at_exit, auth.oidc.aclose)
                if tracing.enabled:  # the last spans flushed to the collector at exit
                    nursery.start_soon(_close_at_exit, partial(trio.to_thread.run_sync, tracing.shutdown))
                if handle_signals:
                    nursery.start_soon(_watch_signals, stop, readiness.draining, nursery.cancel_scope)
                else:
                    nursery.start_soon(_drain_on, stop, readiness.draining)
                nursery.start_soon(_maintain, stores, auth)
                nursery.start_soon(_end_generations_in_time, stop, cache, settings.shutdown_grace)
                binds = await nursery.start(_serve_http, handles, meter, stop, nursery.cancel_scope)
                log.info("serving on %s", ", ".join(binds), extra={"embedded": list(stores.embedded)})
                task_status.started(binds)
    log.info("stopped")


_END_MARGIN_S = 1.0
"""How long before the end of the shutdown grace period generations still running are ended: the responses
then close with a clean last event (an SSE error chunk and ``[DONE]``, a websocket ``response.failed``)
before Hypercorn cuts what is left."""


async def _end_generations_in_time(stop: trio.Event, cache: ModelCache, grace: float) -> None:
    await stop.wait()
    await trio.sleep(max(0.0, grace - _END_MARGIN_S))
    schedulers = cache.schedulers()
    busy = [name for name, s in schedulers.items() if s.busy]
    if busy:
        log.warning("shutdown grace running out: ending the generations still running on %s", ", ".join(busy))
    for scheduler in schedulers.values():
        scheduler.end_all("the server is shutting down")


async def _drain_on(stop: trio.Event, draining: trio.Event) -> None:
    await stop.wait()
    draining.set()


def iter_leaves(exc: BaseException) -> Iterator[BaseException]:
    """Yield the non-group exceptions inside ``exc`` (itself if it is not a group)."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from iter_leaves(inner)
    else:
        yield exc
