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

from bitnet_actor import __version__
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
        kind = {"port": int, "shutdown_grace": float, "data_dir": Path}.get(dest, str)
        parser.add_argument(
            flag,
            dest=dest,
            type=kind,
            default=None,
            metavar=dest.split("_")[-1].upper(),
            help=f"{meaning} [{env}, default {default}]",
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
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    settings = Settings.from_env()
    overrides = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(Settings)
        if getattr(args, f.name, None) is not None
    }
    settings = dataclasses.replace(settings, **overrides)
    settings = dataclasses.replace(settings, data_dir=settings.data_dir.expanduser().absolute())
    return settings.validated()


async def _migrate(settings: Settings) -> list[int]:
    from bitnet_actor.stores import open_database_only
    from bitnet_actor.stores.migrate import migrate
    from bitnet_actor.system import check_data_dir

    if not settings.database_url:
        check_data_dir(settings.data_dir)
    async with trio_asyncio.open_loop(), open_database_only(settings) as db:
        return await migrate(db)


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
