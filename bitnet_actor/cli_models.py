"""The argument parsers of ``bitnet-actor models push | list | quantize`` and ``bitnet-actor admin rotate-keys |
shred-org`` (kept apart from :mod:`bitnet_actor.admin_models` so that building the parser imports no store)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bitnet_actor.config import Settings

__all__ = ["ADMIN_COMMANDS", "add_admin_parsers", "add_models_parser", "run"]

ADMIN_COMMANDS = ("rotate-keys", "shred-org")
STORE_SETTINGS = [
    "BITNET_S3_ENDPOINT",
    "BITNET_S3_BUCKET",
    "BITNET_S3_ACCESS_KEY_ID",
    "BITNET_S3_SECRET_ACCESS_KEY",
    "BITNET_S3_REGION",
    "BITNET_REGION_STORES",
    "BITNET_MASTER_KEYS",
]


def add_models_parser(sub: Any, settings_flags: Any) -> None:
    """``bitnet-actor models ...`` (``settings_flags(parser, extra)`` adds the store flags)."""
    models = sub.add_parser("models", help="customers' models: push a model file or directory, list them")
    models_sub = models.add_subparsers(dest="models_command", metavar="ACTION", parser_class=sub._parser_class)
    models_sub.required = True
    push = models_sub.add_parser("push", help="inspect a GGUF file or HF model directory and publish it")
    push.add_argument("path", type=Path, help="a .gguf file, or an HF model directory")
    push.add_argument("--org", required=True, help="organization name")
    push.add_argument("--name", required=True, help="model name")
    push.add_argument("--version", required=True, help="version label (never reused)")
    listing = models_sub.add_parser("list", help="an organization's model versions (and the platform's)")
    listing.add_argument("--org", required=True, help="organization name")
    quantize = models_sub.add_parser(
        "quantize", help="queue a job converting a version (GGUF TQ1_0/TQ2_0/I2_S, or ternary HF) into a new one"
    )
    quantize.add_argument("source", help="the version to convert: name:version")
    quantize.add_argument("--org", required=True, help="organization name")
    quantize.add_argument("--target", required=True, choices=["tq1_0", "tq2_0", "i2_s", "hf-ternary"])
    quantize.add_argument("--name", required=True, help="the new version's model name")
    quantize.add_argument("--version", required=True, help="the new version's label")
    quantize.add_argument(
        "--wait", action="store_true", help="follow the job (a running server's worker does it) until it ends"
    )
    for p in (push, listing, quantize):
        settings_flags(p, STORE_SETTINGS)


def add_admin_parsers(admin_sub: Any, settings_flags: Any) -> None:
    """``admin rotate-keys`` and ``admin shred-org``."""
    rotate = admin_sub.add_parser("rotate-keys", help="re-wrap model data keys under the current master key")
    shred = admin_sub.add_parser("shred-org", help="crypto-shred an organization's models (irreversible)")
    shred.add_argument("--org", required=True, help="organization name")
    shred.add_argument("--yes", action="store_true", help="confirm: the models can never be read again")
    for p in (rotate, shred):
        settings_flags(p, STORE_SETTINGS)


def run(args: Any, settings: Settings) -> str:
    """Run a models or key command; return the text to print."""
    import trio

    from bitnet_actor import admin_models
    from bitnet_actor.services.errors import ValidationError

    if args.command == "models":
        if args.models_command == "push":
            return trio.run(
                lambda: admin_models.push(settings, args.path, org=args.org, name=args.name, version=args.version)
            )
        if args.models_command == "quantize":
            return trio.run(
                lambda: admin_models.quantize(
                    settings, args.source, org=args.org, target=args.target, name=args.name,
                    version=args.version, wait=args.wait,
                )
            )  # fmt: skip
        return trio.run(lambda: admin_models.list_models(settings, org=args.org))
    if args.admin_command == "rotate-keys":
        return trio.run(admin_models.rotate_keys, settings)
    if not args.yes:
        raise ValidationError("shred-org destroys the organization's model keys for good: add --yes")
    return trio.run(lambda: admin_models.shred_org(settings, org=args.org))
