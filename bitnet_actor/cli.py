"""The ``bitnet-actor`` command: ``serve``, ``migrate``, ``version``.

Every setting comes from its ``BITNET_*`` environment variable and can be overridden by the matching flag.
Errors print one line, ``bitnet-actor: error: ...``, and exit non-zero (2 for usage, 1 otherwise); no
tracebacks for anything we expected could go wrong.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import trio_asyncio  # imported before anything that may capture asyncio

from bitnet_actor import __version__, cli_jobs, cli_models, cli_plans
from bitnet_actor.config import SETTINGS_DOC, Settings
from bitnet_actor.errors import BitnetError, ConfigError

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["main"]

PROG = "bitnet-actor"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """Print one line and exit 2 (argparse prints the whole usage)."""
        self.exit(2, f"{PROG}: error: {message} (see {self.prog} --help)\n")


def _add_settings_flags(parser: argparse.ArgumentParser, names: Sequence[str]) -> None:
    for env in names:
        flag, default, meaning = SETTINGS_DOC[env]
        dest = env.removeprefix("BITNET_").lower()
        help_text = f"{meaning} [{env}, default {default}]"
        if dest == "models":
            parser.add_argument(flag, dest=dest, action="append", default=None, metavar="NAME=PATH", help=help_text)
            continue
        if dest == "no_demo_model":
            parser.add_argument(flag, dest=dest, action="store_true", default=None, help=help_text)
            continue
        kind = {
            "port": int,
            "shutdown_grace": float,
            "data_dir": Path,
            "max_batch": int,
            "max_queue": int,
            "request_timeout": float,
        }.get(dest, str)
        parser.add_argument(
            flag, dest=dest, type=kind, default=None, metavar=dest.split("_")[-1].upper(), help=help_text
        )


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Serve BitNet b1.58 (ternary) language models.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    serve = sub.add_parser("serve", help="run the HTTP API (embedded stores unless configured)")
    _add_settings_flags(serve, list(SETTINGS_DOC))
    migrate = sub.add_parser("migrate", help="apply pending database migrations and exit")
    _add_settings_flags(migrate, ["BITNET_DATA_DIR", "BITNET_DATABASE_URL", "BITNET_LOG_LEVEL"])
    sub.add_parser("version", help="print the version")
    from bitnet_actor import cli_engine

    cli_engine.add_subcommands(sub)
    local = [
        "BITNET_DATA_DIR",
        "BITNET_DATABASE_URL",
        "BITNET_DATABASE_APP_USER",
        "BITNET_DATABASE_APP_PASSWORD",
        "BITNET_REDIS_URL",
        "BITNET_PUBLIC_URL",
        "BITNET_LOG_LEVEL",
    ]
    admin = sub.add_parser("admin", help="operator commands for organizations and API keys")
    admin_sub = admin.add_subparsers(dest="admin_command", metavar="ACTION", parser_class=_Parser)
    admin_sub.required = True
    create_org = admin_sub.add_parser("create-org", help="create an organization (and its owner's account)")
    create_org.add_argument("--name", required=True)
    create_org.add_argument("--owner-email", required=True)
    create_key = admin_sub.add_parser("create-key", help="create an API key and print it (once)")
    create_key.add_argument("--org", required=True, help="organization name")
    create_key.add_argument("--name", required=True, help="key name")
    create_key.add_argument("--scopes", required=True, help="comma-separated: inference,models:read,...")
    for flag, what in (("--rpm", "requests"), ("--tpm", "tokens"), ("--max-concurrency", "concurrent requests")):
        create_key.add_argument(flag, metavar="N", help=f"this key's own limit of {what} (default: the plan's)")
    revoke_key = admin_sub.add_parser("revoke-key", help="revoke the organization's active keys of that name")
    revoke_key.add_argument("--org", required=True, help="organization name")
    revoke_key.add_argument("--name", required=True, help="key name")
    set_region = admin_sub.add_parser("set-region", help="move an organization's home region")
    set_region.add_argument("--org", required=True, help="organization name")
    set_region.add_argument(
        "--region", dest="target_region", required=True, help="the new region (a BITNET_REGION of some replicas)"
    )
    set_region.add_argument(
        "--move-data", action="store_true", help="also move its stored objects to the new region's object store"
    )
    for p in (create_org, create_key, revoke_key):
        _add_settings_flags(p, local)
    _add_settings_flags(set_region, local + cli_models.STORE_SETTINGS)
    cli_plans.add_parsers(admin_sub, lambda p: _add_settings_flags(p, local))
    cli_models.add_admin_parsers(admin_sub, lambda p, extra: _add_settings_flags(p, local + extra))
    cli_models.add_models_parser(sub, lambda p, extra: _add_settings_flags(p, local + extra))
    _add_billing_commands(admin_sub, local)
    cli_jobs.add_parsers(sub, lambda p: _add_settings_flags(p, local), _Parser)
    audit = sub.add_parser("audit", help="audit log tools")
    audit_sub = audit.add_subparsers(dest="audit_command", metavar="ACTION", parser_class=_Parser)
    audit_sub.required = True
    verify = audit_sub.add_parser("verify", help="check the audit log's hash chains; exit 1 if tampered")
    _add_settings_flags(verify, local)
    return parser


def _add_billing_commands(admin_sub: argparse._SubParsersAction[_Parser], local: list[str]) -> None:
    """``admin usage`` and ``admin invoice``."""
    usage = admin_sub.add_parser("usage", help="print an organization's usage per time bucket and model")
    usage.add_argument("--org", required=True, help="organization name")
    usage.add_argument("--start", help="ISO 8601 date or time (UTC unless it says); default: one page back")
    usage.add_argument("--end", help="ISO 8601 date or time (UTC unless it says); default: now")
    usage.add_argument("--width", default="1d", choices=["1m", "1h", "1d"], help="bucket width (default 1d)")
    invoice = admin_sub.add_parser("invoice", help="print an organization's invoice of a month as JSON")
    invoice.add_argument("--org", required=True, help="organization name")
    invoice.add_argument("--period", required=True, help="the month, YYYY-MM")
    invoice.add_argument("--finalize", action="store_true", help="finalize it (a month that is over; idempotent)")
    for p in (usage, invoice):
        _add_settings_flags(p, local)


def _run_billing_admin(args: argparse.Namespace, settings: Settings) -> str:
    import trio

    from bitnet_actor import admin

    if args.admin_command == "usage":
        run = partial(admin.usage_table, settings, org=args.org, start=args.start, end=args.end, width=args.width)
    else:
        run = partial(admin.invoice_json, settings, org=args.org, period=args.period, finalize=args.finalize)
    return trio.run(run)


def _settings(args: argparse.Namespace) -> Settings:
    settings = Settings.from_env()
    overrides = {
        f.name: getattr(args, f.name) for f in dataclasses.fields(Settings) if getattr(args, f.name, None) is not None
    }
    if isinstance(overrides.get("models"), list):  # repeated --model flags
        overrides["models"] = ",".join(overrides["models"])
    settings = dataclasses.replace(settings, **overrides)
    settings = dataclasses.replace(settings, data_dir=settings.data_dir.expanduser().absolute())
    return settings.validated()


async def _migrate(settings: Settings) -> list[int]:
    from bitnet_actor.stores import open_database_only
    from bitnet_actor.stores.migrate import migrate
    from bitnet_actor.system import check_data_dir

    if not settings.database_url:
        check_data_dir(settings.data_dir)
    async with trio_asyncio.open_loop(), open_database_only(settings, as_owner=True) as db:
        return await migrate(db)


def _run_admin(args: argparse.Namespace, settings: Settings) -> int:
    import trio

    from bitnet_actor import admin, admin_plans

    if not settings.database_url:
        from bitnet_actor.system import check_data_dir

        check_data_dir(settings.data_dir)
    if args.command == "audit":
        intact, text = trio.run(admin.verify_audit, settings)
        print(text)
        return 0 if intact else 1
    if args.admin_command == "create-org":
        print(trio.run(partial(admin.create_org, settings, name=args.name, owner_email=args.owner_email)))
    elif args.admin_command == "set-region":
        run = partial(admin.set_region, settings, org=args.org, region=args.target_region, move_data=args.move_data)
        print(trio.run(run))
    elif args.admin_command in ("usage", "invoice"):
        print(_run_billing_admin(args, settings))
    elif args.admin_command == "create-key":
        limits = {k: admin_plans.parse_limit(n, v) for k, n, v in (
            ("rpm", "rpm", args.rpm), ("tpm", "tpm", args.tpm),
            ("max_concurrency", "key_concurrency", args.max_concurrency)) if v is not None}  # fmt: skip
        print(trio.run(partial(admin.create_key, settings, org=args.org, name=args.name, scopes=args.scopes, **limits)))
    elif args.admin_command in cli_models.ADMIN_COMMANDS:
        print(cli_models.run(args, settings))
    elif args.admin_command in cli_plans.COMMANDS:
        print(cli_plans.run(args, settings))
    else:
        print(trio.run(partial(admin.revoke_key, settings, org=args.org, name=args.name)))
    return 0


def _one_line(exc: BaseException) -> str | None:
    """The message to show for an expected failure inside ``exc`` (maybe a group), or None if unexpected."""
    from bitnet_actor.system import iter_leaves

    for leaf in iter_leaves(exc):
        if isinstance(leaf, BitnetError):
            return str(leaf)
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the process exit code."""
    import trio

    from bitnet_actor.observability import configure_logging

    args = _build_parser().parse_args(argv)
    if args.command == "version":
        print(f"{PROG} {__version__}")
        return 0
    from bitnet_actor import cli_engine

    if args.command in cli_engine.COMMANDS:
        return cli_engine.run(args)
    try:
        settings = _settings(args)
    except ConfigError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    try:
        if args.command == "migrate":
            applied = trio.run(_migrate, settings)
            print(
                f"applied migrations: {', '.join(f'{v:04d}' for v in applied)}"
                if applied
                else "database schema is up to date"
            )
            return 0
        if args.command == "jobs":
            if not settings.database_url:
                from bitnet_actor.system import check_data_dir

                check_data_dir(settings.data_dir)
            print(cli_jobs.run(args, settings))
            return 0
        if args.command in ("admin", "audit"):
            return _run_admin(args, settings)
        if args.command == "models":
            if not settings.database_url:
                from bitnet_actor.system import check_data_dir

                check_data_dir(settings.data_dir)
            print(cli_models.run(args, settings))
            return 0
        from bitnet_actor.system import run_system

        trio.run(partial(run_system, settings))
        return 0
    except BaseException as exc:
        message = _one_line(exc)
        if message is None:
            if isinstance(exc, KeyboardInterrupt):
                return 130
            raise
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 1
