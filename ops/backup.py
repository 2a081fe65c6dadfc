"""Back up a bitnet-actor install, and restore a backup into an empty one.

    python ops/backup.py backup --to /backups/2026-12-01        # or --to s3://bucket/prefix
    python ops/backup.py backup --to DIR --include-secrets      # also the data dir's keys (see below)
    python ops/backup.py restore --from /backups/2026-12-01     # into an empty database and data dir
    python ops/backup.py restore --from DIR --force             # replace a database that is not empty

Settings are the service's: ``BITNET_DATABASE_URL`` (else the data dir's embedded PostgreSQL, started for
the run), ``BITNET_DATA_DIR`` (``--data-dir``), ``BITNET_S3_*`` (the default object store, and the endpoint and
credentials of every ``s3://`` URL, the backup's own included), ``BITNET_REGION_STORES``, ``BITNET_MASTER_KEYS``,
``BITNET_SECRET_KEY``. Redis is not backed up: it holds only what may be lost (sessions, rate limits, caches,
queued jobs).

A backup holds:

- ``database.dump``: ``pg_dump --format=custom`` of the service's database, taken as the tables' owner (the user
  of ``BITNET_DATABASE_URL``). It keeps the row-level security policies and the grants to the service role
  (``bitnet_app``); roles live outside a database, so restore creates ``bitnet_app`` where it is missing (as
  migration 0002 does), restores with ``--no-owner`` (the restoring user owns everything, as if it had run the
  migrations) and, when that user is not the one the backup was taken as, re-creates the owner's
  ``owner_all`` policies for it.
- ``objects/<store>/sha256/<hex>``: every object of the default store and of each region's store
  (``BITNET_REGION_STORES``); keys are the SHA-256 of the stored (encrypted) bytes, checked on the way in and out.
- ``secrets/<name>``: the data dir's keys (``secret.key``, ``master.key``, ``object-url-signing.key``) only with
  ``--include-secrets``. The backup then holds the master key that decrypts its own models: keep it like the
  keys themselves. Without it, the output names the keys the operator must keep.
- ``manifest.json``, written last (a backup without one is incomplete): the time, the schema version, the tables'
  row counts, every object with its size and SHA-256, the versions of pg_dump and of this tool.

Restore refuses a database that holds any table (unless ``--force``: its schemas are then dropped with all
they hold, in a transaction of their own, before the backup's are restored), checks the dump and every object
against the manifest before it changes anything, restores the database in one transaction and checks the row
counts, and copies secrets only where the target has none.

Progress goes to stderr, the summary to stdout. Exit status: 0 done; 1 the backup or restore failed (a damaged
backup, a database that is not empty, a server or tool missing); 2 bad arguments. Errors are one line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from bitnet_actor.config import Settings

__all__ = ["BackupError", "main"]

FORMAT = 1  # of manifest.json: restore refuses a newer one
APP_ROLE = "bitnet_app"  # the role migration 0002 creates and names in every policy and grant
SECRET_FILES = ("secret.key", "master.key", "object-url-signing.key")
_CHUNK = 1024 * 1024
_DIGEST = re.compile(r"[0-9a-f]{64}")


class BackupError(Exception):
    """A failure reported as one line; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MiB"


# ---- where the backup lives: a directory or s3://bucket/prefix ---------------------------------------------


def _s3_client(settings: Settings) -> Any:
    import boto3
    from botocore.config import Config

    config = Config(
        region_name=settings.s3_region,
        signature_version="s3v4",
        s3={"addressing_style": "path"},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    return boto3.session.Session(
        aws_access_key_id=settings.s3_access_key_id or None,
        aws_secret_access_key=settings.s3_secret_access_key or None,
        region_name=settings.s3_region,
    ).client("s3", endpoint_url=settings.s3_endpoint or None, config=config)


class _HashingReader:
    """A file-like reader that hashes and counts what passes through it."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw, self.sha256, self.size = raw, hashlib.sha256(), 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.sha256.update(data)
        self.size += len(data)
        return data


class Location:
    """Files under a directory, or under a prefix of an S3 bucket."""

    def __init__(self, url: str, settings: Settings) -> None:
        self.url = url
        if url.startswith("s3://"):
            self.bucket, _, prefix = url.removeprefix("s3://").partition("/")
            if not self.bucket:
                raise BackupError(f"{url!r} names no bucket: use s3://bucket/prefix", 2)
            self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
            self.client: Any = _s3_client(settings)
            self.root: Path | None = None
        else:
            self.root = Path(url.removeprefix("file://")).resolve()

    def _s3_key(self, name: str) -> str:
        return self.prefix + name

    def exists(self, name: str) -> bool:
        if self.root is not None:
            return (self.root / name).is_file()
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._s3_key(name))
        except Exception as exc:
            if _s3_missing(exc):
                return False
            raise
        return True

    def is_empty(self) -> bool:
        if self.root is not None:
            return not self.root.exists() or not any(self.root.iterdir())
        listed = self.client.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix, MaxKeys=1)
        return not listed.get("Contents")

    def write(self, name: str, source: BinaryIO) -> tuple[str, int]:
        """Copy ``source`` to ``name``; return the SHA-256 and size of what was written."""
        reader = _HashingReader(source)
        if self.root is None:
            self.client.upload_fileobj(reader, self.bucket, self._s3_key(name))
            return reader.sha256.hexdigest(), reader.size
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        part = path.with_name(path.name + ".part")
        with part.open("wb") as out:
            shutil.copyfileobj(reader, out, _CHUNK)
            out.flush()
            os.fsync(out.fileno())
        part.replace(path)
        return reader.sha256.hexdigest(), reader.size

    def write_bytes(self, name: str, data: bytes, *, private: bool = False) -> None:
        import io

        self.write(name, io.BytesIO(data))
        if private and self.root is not None:
            (self.root / name).chmod(0o600)

    @contextlib.contextmanager
    def open(self, name: str) -> Iterator[BinaryIO]:
        if self.root is not None:
            try:
                with (self.root / name).open("rb") as f:
                    yield f
            except FileNotFoundError:
                raise BackupError(f"the backup at {self.url} lacks {name}") from None
            return
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._s3_key(name))["Body"]
        except Exception as exc:
            if _s3_missing(exc):
                raise BackupError(f"the backup at {self.url} lacks {name}") from None
            raise
        try:
            yield body
        finally:
            body.close()


def _s3_missing(exc: BaseException) -> bool:
    code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
    return code in ("404", "NoSuchKey", "NotFound")


# ---- the install's object stores ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Store:
    """One object store of the install: ``label`` is ``default`` or the first region that uses it."""

    label: str
    url: str  # file:///path or s3://bucket[/prefix]
    regions: tuple[str, ...]


def install_stores(settings: Settings) -> list[Store]:
    """The default store and every distinct region store, as the service resolves them."""
    from bitnet_actor.config import parse_region_stores

    default = (
        f"s3://{settings.s3_bucket}" if settings.uses_s3 else f"file://{(settings.data_dir / 'objects').resolve()}"
    )
    stores: dict[str, Store] = {default: Store("default", default, ())}
    for region, url in parse_region_stores(settings.region_stores).items():
        known = stores.get(url)
        stores[url] = (
            Store(region, url, (region,)) if known is None else replace(known, regions=(*known.regions, region))
        )
    return list(stores.values())


def _object_location(url: str, settings: Settings) -> Location:
    # The service's layouts: the filesystem store keeps sha256/ab/cd/<hex> (FilesystemObjectStore), S3 keeps
    # {prefix}sha256/<hex> (S3ObjectStore); Location covers both.
    return Location(url, settings)


def _object_name(location: Location, digest: str) -> str:
    return f"sha256/{digest[:2]}/{digest[2:4]}/{digest}" if location.root is not None else f"sha256/{digest}"


def list_objects(location: Location) -> list[tuple[str, int]]:
    """``(digest, size)`` of every object in a store, sorted."""
    found: list[tuple[str, int]] = []
    if location.root is not None:
        base = location.root / "sha256"
        if base.is_dir():
            found = [(p.name, p.stat().st_size) for p in base.glob("*/*/*") if _DIGEST.fullmatch(p.name)]
    else:
        pages = location.client.get_paginator("list_objects_v2")
        for page in pages.paginate(Bucket=location.bucket, Prefix=location._s3_key("sha256/")):
            for item in page.get("Contents", []):
                digest = item["Key"].rpartition("/")[2]
                if _DIGEST.fullmatch(digest):
                    found.append((digest, int(item["Size"])))
    return sorted(found)


# ---- PostgreSQL ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def owner_dsn(settings: Settings) -> Iterator[str]:
    """The tables' owner's DSN: ``BITNET_DATABASE_URL``, else the data dir's embedded server (started here)."""
    if settings.database_url:
        yield settings.database_url
        return
    from bitnet_actor.stores.embedded import EmbeddedPostgres

    server = EmbeddedPostgres(settings.data_dir)
    try:
        dsn = server.start()
    except Exception as exc:
        raise BackupError(str(exc)) from exc
    try:
        yield dsn
    finally:
        server.stop()


def _sql(dsn: str, fn: Callable[[Any], Any]) -> Any:
    import asyncpg

    async def run() -> Any:
        conn = await asyncpg.connect(dsn)
        try:
            return await fn(conn)
        finally:
            await conn.close()

    try:
        return asyncio.run(run())
    except (OSError, asyncpg.PostgresError) as exc:
        from bitnet_actor.stores.postgres import redact_dsn

        raise BackupError(f"PostgreSQL at {redact_dsn(dsn)}: {exc}") from exc


async def _describe(conn: Any) -> dict[str, Any]:
    """What a backup records of the database, and what a restore checks."""
    # Leaf tables only: a partitioned table's rows are its partitions'.
    tables = await conn.fetch(
        "SELECT n.nspname || '.' || c.relname AS name FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
        " AND n.nspname NOT LIKE 'pg_toast%' ORDER BY 1"
    )
    role = await conn.fetchrow(
        "SELECT current_user AS name, rolsuper OR rolbypassrls AS sees_all FROM pg_roles WHERE rolname = current_user"
    )
    info: dict[str, Any] = {
        "server_version": await conn.fetchval("SHOW server_version"),
        "server_version_num": int(await conn.fetchval("SHOW server_version_num")),
        "owner": role["name"],
        "sees_all": bool(role["sees_all"]),
        "tables": {},
        "schema_version": None,
        "master_key_ids": [],
        "referenced_objects": [],
    }
    for row in tables:
        info["tables"][row["name"]] = await conn.fetchval(f"SELECT count(*) FROM {_quote(row['name'])}")
    names = set(info["tables"])
    if "public.schema_migrations" in names:
        info["schema_version"] = await conn.fetchval("SELECT max(version) FROM schema_migrations")
    if "public.model_data_keys" in names:
        info["master_key_ids"] = [
            r["key_id"]
            for r in await conn.fetch(
                "SELECT DISTINCT key_id FROM model_data_keys WHERE wrapped_key IS NOT NULL ORDER BY 1"
            )
        ]
        info["referenced_objects"] = [
            [r["object_key"], r["region"]]
            for r in await conn.fetch(
                "SELECT object_key, region FROM model_data_keys WHERE destroyed_at IS NULL ORDER BY 1"
            )
        ]
    return info


def _quote(qualified: str) -> str:
    schema, _, name = qualified.partition(".")
    return '"' + schema.replace('"', '""') + '"."' + name.replace('"', '""') + '"'


def _libpq(dsn: str) -> tuple[str, dict[str, str]]:
    """``dsn`` without its password, and an environment carrying it (not on a command line)."""
    env = dict(os.environ)
    parts = urlsplit(dsn)
    if parts.password:
        env["PGPASSWORD"] = parts.password
        userinfo, _, host = parts.netloc.rpartition("@")
        dsn = urlunsplit(parts._replace(netloc=f"{userinfo.partition(':')[0]}@{host}"))
    return dsn, env


def pg_tool(name: str, pg_bin: str | None, server_version_num: int) -> tuple[str, str]:
    """The path and version of ``pg_dump`` / ``pg_restore``: ``--pg-bin``, else the pgserver package's, else
    PATH's; the first one at least as new as the server (pg_dump refuses newer servers)."""
    candidates: list[Path] = []
    if pg_bin:
        candidates.append(Path(pg_bin) / name)
    else:
        with contextlib.suppress(ImportError):
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                import pgserver

            candidates.append(Path(pgserver.__file__).parent / "pginstall" / "bin" / name)
        found = shutil.which(name)
        if found:
            candidates.append(Path(found))
    seen: list[str] = []
    for path in candidates:
        if not (path.is_file() and os.access(path, os.X_OK)):
            continue
        out = subprocess.run([str(path), "--version"], capture_output=True, text=True, check=False).stdout.strip()
        match = re.search(r"(\d+)(?:\.(\d+))?", out)
        if match and int(match[1]) >= server_version_num // 10000:
            return str(path), out
        seen.append(f"{path} ({out or 'no version'})")
    where = ", ".join(seen) if seen else "none found (pass --pg-bin, or install the pgserver package)"
    raise BackupError(f"no {name} for PostgreSQL {server_version_num // 10000} or newer: {where}")


def _run_pg(argv: list[str], env: dict[str, str], *, label: str, rows: dict[str, int]) -> None:
    """Run pg_dump/pg_restore --verbose, turning its per-table lines into progress; one-line error on failure."""
    table_line = re.compile(r'(?:dumping contents of|processing data for) table "([^"]+)"')
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    errors: list[str] = []
    done = 0
    for line in proc.stderr:
        match = table_line.search(line)
        if match:
            done += 1
            count = rows.get(match[1])
            progress(f"{label}: table {match[1]}" + (f" ({count} rows)" if count is not None else ""))
        elif "error" in line.lower() or "fatal" in line.lower():
            errors.append(line.strip())
    if proc.wait() != 0:
        raise BackupError(f"{Path(argv[0]).name} failed: {errors[0] if errors else f'exit status {proc.returncode}'}")
    progress(f"{label}: {done} tables")


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


# ---- keys the data needs -------------------------------------------------------------------------------------


def needed_keys(settings: Settings) -> list[str]:
    """The keys without which the restored data cannot be read, and where this install keeps them."""
    from bitnet_actor.config import parse_master_keys

    secrets = settings.data_dir / "secrets"
    if settings.master_keys:
        ids = ", ".join(key_id for key_id, _ in parse_master_keys(settings.master_keys))
        master = f"BITNET_MASTER_KEYS (key ids {ids}): decrypts every model object"
    else:
        master = f"{secrets / 'master.key'} (master key id 'local'): decrypts every model object"
    if settings.secret_key:
        secret = "BITNET_SECRET_KEY: decrypts the stored JWT signing keys"
    else:
        secret = f"{secrets / 'secret.key'}: decrypts the stored JWT signing keys"
    return [master, secret]


# ---- backup ------------------------------------------------------------------------------------------------


def backup(settings: Settings, target: Location, *, include_secrets: bool, pg_bin: str | None) -> dict[str, Any]:
    """Write a backup of the install to ``target``; return its manifest."""
    from bitnet_actor import __version__

    if not target.is_empty():
        raise BackupError(f"{target.url} is not empty: back up into a new directory or prefix")
    started = datetime.now(UTC)
    manifest: dict[str, Any] = {"format": FORMAT, "created_at": started.isoformat(timespec="seconds")}
    manifest["tool"] = {"name": "ops/backup.py", "bitnet_actor_version": __version__}
    with owner_dsn(settings) as dsn:
        info = _sql(dsn, _describe)
        if info["schema_version"] is None:
            raise BackupError("the database has no schema_migrations table: nothing of bitnet-actor to back up")
        pg_dump, pg_dump_version = pg_tool("pg_dump", pg_bin, info["server_version_num"])
        progress(
            f"database: PostgreSQL {info['server_version']}, schema version {info['schema_version']},"
            f" {len(info['tables'])} tables, {sum(info['tables'].values())} rows; {pg_dump_version}"
        )
        with tempfile.TemporaryDirectory(prefix="bitnet-backup-") as tmp:
            dump = Path(tmp) / "database.dump"
            conn, env = _libpq(dsn)
            argv = [pg_dump, "--format=custom", "--verbose", f"--file={dump}", f"--dbname={conn}"]
            if not info["sees_all"]:
                argv.append("--enable-row-security")  # else FORCE'd row-level security refuses the owner's COPY
            _run_pg(argv, env, label="database", rows=info["tables"])
            with dump.open("rb") as f:
                digest, size = target.write("database.dump", f)
            progress(f"database: database.dump {_mib(size)}")
    manifest["database"] = {
        "file": "database.dump",
        "size": size,
        "sha256": digest,
        "server_version": info["server_version"],
        "pg_dump_version": pg_dump_version,
        "schema_version": info["schema_version"],
        "owner": info["owner"],
        "app_role": APP_ROLE,
        "tables": info["tables"],
    }
    manifest["master_key_ids"] = info["master_key_ids"]
    manifest["stores"], manifest["objects"] = _backup_objects(settings, target, info["referenced_objects"])
    manifest["secrets"] = _backup_secrets(settings, target, include_secrets=include_secrets)
    target.write_bytes("manifest.json", json.dumps(manifest, indent=2).encode() + b"\n")
    return manifest


def _backup_objects(
    settings: Settings, target: Location, referenced: list[list[Any]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    stores, objects = [], []
    by_region: dict[str | None, str] = {None: "default"}
    for store in install_stores(settings):
        source = _object_location(store.url, settings)
        listed = list_objects(source)
        total = sum(size for _, size in listed)
        stores.append({"label": store.label, "location": store.url, "regions": list(store.regions)})
        by_region.update(dict.fromkeys(store.regions, store.label))
        progress(f"objects[{store.label}]: {len(listed)} objects, {_mib(total)} in {store.url}")
        copied = 0
        for i, (digest, _) in enumerate(listed, 1):
            key = f"sha256/{digest}"
            with source.open(_object_name(source, digest)) as f:
                got, size = target.write(f"objects/{store.label}/{key}", f)
            if got != digest:
                raise BackupError(f"object {key} in the {store.label} store is damaged: its bytes hash to sha256/{got}")
            copied += size
            objects.append({"store": store.label, "key": key, "size": size, "sha256": got})
            progress(
                f"objects[{store.label}]: [{i}/{len(listed)}] {key} {_mib(size)} ({_mib(copied)} of {_mib(total)})"
            )
    present = {(o["store"], o["key"]) for o in objects}
    for key, region in referenced:
        label = by_region.get(region, "default")
        if (label, key) not in present:
            progress(
                f"warning: {key} (region {region or 'default'}) is recorded in the database but missing from its store"
            )
    return stores, objects


def _backup_secrets(settings: Settings, target: Location, *, include_secrets: bool) -> dict[str, Any]:
    directory = settings.data_dir / "secrets"
    present = [name for name in SECRET_FILES if (directory / name).is_file()]
    entry: dict[str, Any] = {"included": include_secrets, "files": [], "needed": needed_keys(settings)}
    if not include_secrets:
        return entry
    for name in present:
        data = (directory / name).read_bytes()
        target.write_bytes(f"secrets/{name}", data, private=True)
        entry["files"].append({"name": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    progress(
        f"WARNING: secrets included ({', '.join(present) or 'none in the data dir'}): this backup holds the keys"
        " that decrypt its own models; store it as you store those keys"
    )
    return entry


# ---- restore -----------------------------------------------------------------------------------------------


def restore(settings: Settings, source: Location, *, force: bool, pg_bin: str | None) -> dict[str, Any]:
    """Restore the backup at ``source`` into the install ``settings`` name; return a summary."""
    from bitnet_actor.stores.migrate import load_migrations

    with source.open("manifest.json") as f:
        try:
            manifest = json.loads(f.read())
        except ValueError as exc:
            raise BackupError(f"{source.url}/manifest.json is not JSON: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackupError(f"{source.url}/manifest.json is not a backup manifest of format {FORMAT}")
    db_entry = manifest["database"]
    known = len(load_migrations())
    if db_entry["schema_version"] > known:
        raise BackupError(
            f"the backup's schema version {db_entry['schema_version']} is newer than this bitnet-actor's ({known})"
        )
    targets = _restore_targets(settings, manifest)
    with owner_dsn(settings) as dsn:
        before = _sql(dsn, _describe)
        if before["tables"] and not force:
            raise BackupError(
                f"the database is not empty ({len(before['tables'])} tables, schema version"
                f" {before['schema_version']}): restore into an empty one, or pass --force to replace its contents"
            )
        pg_restore, version = pg_tool("pg_restore", pg_bin, before["server_version_num"])
        with tempfile.TemporaryDirectory(prefix="bitnet-restore-") as tmp:
            dump = Path(tmp) / "database.dump"
            with source.open(db_entry["file"]) as f, dump.open("wb") as out:
                shutil.copyfileobj(f, out, _CHUNK)
            if (got := _file_digest(dump)) != db_entry["sha256"]:
                raise BackupError(
                    f"database.dump is damaged: its SHA-256 is {got}, the manifest says {db_entry['sha256']}"
                )
            _restore_objects(settings, source, manifest, targets)
            _restore_database(dsn, dump, pg_restore, version, db_entry, before, force=force)
        after = _sql(dsn, _describe)
    differ = [t for t, n in db_entry["tables"].items() if after["tables"].get(t) != n]
    if differ:
        raise BackupError(f"restored row counts differ from the backup's in {', '.join(differ)}")
    secrets = _restore_secrets(settings, source, manifest)
    return {"schema_version": after["schema_version"], "rows": sum(after["tables"].values()), "secrets": secrets}


def _restore_targets(settings: Settings, manifest: dict[str, Any]) -> dict[str, Store]:
    """The target install's store for each of the backup's stores (by region; ``default`` to default)."""
    mine = install_stores(settings)
    by_region = {r: s for s in mine for r in s.regions}
    out: dict[str, Store] = {}
    for store in manifest["stores"]:
        if store["label"] == "default":
            out["default"] = mine[0]
            continue
        region = next((r for r in store["regions"] if r in by_region), None)
        if region is None:
            raise BackupError(
                f"the backup has the objects of region {store['regions'][0]}'s store; name a store for it in"
                " BITNET_REGION_STORES"
            )
        out[store["label"]] = by_region[region]
    return out


def _restore_objects(settings: Settings, source: Location, manifest: dict[str, Any], targets: dict[str, Store]) -> None:
    """Copy every object of the backup into its store, each checked against the manifest before it is placed."""
    objects = manifest["objects"]
    total = sum(o["size"] for o in objects)
    copied = 0
    for i, obj in enumerate(objects, 1):
        digest = obj["key"].removeprefix("sha256/")
        if not _DIGEST.fullmatch(digest) or obj["sha256"] != digest:
            raise BackupError(f"the manifest's object {obj['key']!r} is malformed")
        store = targets[obj["store"]]
        dest = _object_location(store.url, settings)
        name = _object_name(dest, digest)
        where = f"objects/{obj['store']}/{obj['key']}"
        with tempfile.TemporaryDirectory(prefix="bitnet-restore-") as tmp:
            staged = Path(tmp) / digest
            with source.open(where) as f, staged.open("wb") as out:
                shutil.copyfileobj(f, out, _CHUNK)
            got, size = _file_digest(staged), staged.stat().st_size
            if got != digest or size != obj["size"]:
                raise BackupError(
                    f"object {obj['key']} of the {obj['store']} store is damaged in the backup ({where}: SHA-256"
                    f" {got}, {size} bytes; the manifest says {obj['size']} bytes); the database was not restored"
                )
            if not dest.exists(name):
                with staged.open("rb") as f:
                    dest.write(name, f)
        copied += size
        progress(
            f"objects[{obj['store']}]: [{i}/{len(objects)}] {obj['key']} {_mib(size)}"
            f" ({_mib(copied)} of {_mib(total)}) -> {store.url}"
        )
    progress(f"objects: {len(objects)} objects, {_mib(total)} restored and verified")


def _restore_database(
    dsn: str, dump: Path, pg_restore: str, version: str, entry: dict[str, Any], before: dict[str, Any], *, force: bool
) -> None:
    owner = before["owner"]

    async def ensure_role(conn: Any) -> None:
        if await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", APP_ROLE):
            return
        try:
            await conn.execute(f"CREATE ROLE {APP_ROLE} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT")
        except Exception as exc:
            raise BackupError(
                f"the service role {APP_ROLE} is missing and {owner} may not create it ({exc}); create it as in"
                " migration 0002 (CREATE ROLE bitnet_app LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT)"
            ) from exc
        progress(f"database: created the service role {APP_ROLE}")

    _sql(dsn, ensure_role)
    conn, env = _libpq(dsn)
    argv = [pg_restore, "--verbose", "--no-owner", "--exit-on-error", "--single-transaction", f"--dbname={conn}"]
    if force and before["tables"]:
        _sql(dsn, _empty_database)  # not pg_restore --clean: it trips over partitioned indexes
        progress("database: --force: dropped the database's schemas and their contents")
    retarget: list[str] = []
    if entry["owner"] != owner:
        # The backup's owner_all policies name the role it was taken as; this install's owner is another.
        listing = subprocess.run([pg_restore, "--list", str(dump)], capture_output=True, text=True, check=True).stdout
        kept = []
        for line in listing.splitlines():
            match = re.search(r"\bPOLICY (\S+) (\S+) owner_all\b", line)
            if match and not line.startswith(";"):
                retarget.append(f"{match[1]}.{match[2]}")
                continue
            kept.append(line)
        (dump.parent / "list").write_text("\n".join(kept) + "\n")
        argv.append(f"--use-list={dump.parent / 'list'}")
    progress(
        f"database: restoring with {version}"
        + (f" (as {owner}; the backup was taken as {entry['owner']})" if retarget else "")
    )
    _run_pg([*argv, str(dump)], env, label="database", rows=entry["tables"])

    async def owner_policies(conn: Any) -> None:
        for table in retarget:
            await conn.execute(
                f"CREATE POLICY owner_all ON {_quote(table)} TO {_quote_ident(owner)} USING (true) WITH CHECK (true)"
            )

    if retarget:
        _sql(dsn, owner_policies)
        progress(f"database: owner_all policies of {len(retarget)} tables now name {owner}")


async def _empty_database(conn: Any) -> None:
    """Drop every schema of the database with its contents and re-create ``public`` as a new database has it."""
    schemas = await conn.fetch(
        "SELECT nspname FROM pg_namespace WHERE nspname NOT IN ('pg_catalog', 'information_schema')"
        " AND nspname NOT LIKE 'pg_toast%' AND nspname NOT LIKE 'pg_temp%'"
    )
    async with conn.transaction():
        for row in schemas:
            await conn.execute(f"DROP SCHEMA {_quote_ident(row['nspname'])} CASCADE")
        await conn.execute("CREATE SCHEMA public")
        await conn.execute("GRANT USAGE ON SCHEMA public TO PUBLIC")
        with contextlib.suppress(Exception):
            async with conn.transaction():
                await conn.execute("ALTER SCHEMA public OWNER TO pg_database_owner")


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _restore_secrets(settings: Settings, source: Location, manifest: dict[str, Any]) -> list[str]:
    secrets = manifest["secrets"]
    directory = settings.data_dir / "secrets"
    lines: list[str] = []
    for entry in secrets["files"]:
        path = directory / entry["name"]
        with source.open(f"secrets/{entry['name']}") as f:
            data = f.read()
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise BackupError(f"secrets/{entry['name']} is damaged in the backup")
        if path.exists():
            same = path.read_bytes() == data
            lines.append(f"{path}: kept ({'the same as' if same else 'DIFFERENT from'} the backup's)")
            continue
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        lines.append(f"{path}: restored")
    if not secrets["included"]:
        lines.append("the backup holds no keys: give this install the ones it was taken with:")
        lines += [f"  {need}" for need in secrets["needed"]]
    ids = manifest.get("master_key_ids") or []
    if ids:
        from bitnet_actor.config import parse_master_keys

        have = {k for k, _ in parse_master_keys(settings.master_keys)} if settings.master_keys else set()
        if not settings.master_keys and (directory / "master.key").exists():
            have.add("local")
        missing = [i for i in ids if i not in have]
        if missing:
            lines.append(
                f"WARNING: the models' data keys are wrapped by master key(s) {', '.join(missing)}, which this"
                " install lacks: set BITNET_MASTER_KEYS (or restore the data dir's master.key) before serving"
            )
    return lines


# ---- command line ------------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, exit status 2
        raise BackupError(message, 2)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ops/backup.py",
        description="Back up a bitnet-actor install (database, object stores, optionally the data dir's keys) "
        "and restore it into an empty one. Settings: the service's BITNET_* variables.",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    b = sub.add_parser("backup", help="write a backup to a new directory or s3://bucket/prefix")
    b.add_argument("--to", required=True, help="a directory (new or empty) or s3://bucket/prefix")
    b.add_argument(
        "--include-secrets",
        action="store_true",
        help="also copy the data dir's keys (the backup then holds the keys that decrypt it)",
    )
    r = sub.add_parser("restore", help="restore a backup into an empty install")
    r.add_argument("--from", dest="source", required=True, help="the backup's directory or s3://bucket/prefix")
    r.add_argument("--force", action="store_true", help="replace the contents of a database that is not empty")
    for p in (b, r):
        p.add_argument("--data-dir", type=Path, help="the install's data dir (default: BITNET_DATA_DIR)")
        p.add_argument("--database-url", help="the tables' owner's DSN (default: BITNET_DATABASE_URL)")
        p.add_argument("--pg-bin", help="the directory of pg_dump / pg_restore (default: pgserver's, else PATH)")
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
        from bitnet_actor.config import Settings
        from bitnet_actor.errors import ConfigError

        try:
            settings = Settings.from_env()
            if args.data_dir is not None:
                settings = replace(settings, data_dir=args.data_dir.resolve())
            if args.database_url:
                settings = replace(settings, database_url=args.database_url)
            settings = settings.validated()
        except ConfigError as exc:
            raise BackupError(str(exc), 2) from exc
        if args.command == "backup":
            target = Location(args.to, settings)
            manifest = backup(settings, target, include_secrets=args.include_secrets, pg_bin=args.pg_bin)
            db = manifest["database"]
            print(
                f"backed up schema version {db['schema_version']}, {sum(db['tables'].values())} rows in"
                f" {len(db['tables'])} tables, {len(manifest['objects'])} objects"
                f" ({_mib(sum(o['size'] for o in manifest['objects']))}) to {target.url}"
            )
            if not args.include_secrets:
                print("no keys in the backup; keep these yourself, or its models cannot be decrypted:")
                for need in manifest["secrets"]["needed"]:
                    print(f"  {need}")
        else:
            source = Location(args.source, settings)
            summary = restore(settings, source, force=args.force, pg_bin=args.pg_bin)
            print(f"restored schema version {summary['schema_version']}, {summary['rows']} rows from {source.url}")
            for line in summary["secrets"]:
                print(line)
    except BackupError as exc:
        print(f"ops/backup.py: error: {exc}", file=sys.stderr)
        return exc.code
    return 0


if __name__ == "__main__":
    sys.exit(main())
