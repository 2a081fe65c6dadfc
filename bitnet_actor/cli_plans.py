"""The argument parsers of ``bitnet-actor admin plans | edit-plan | set-plan | set-limits`` (kept apart from
:mod:`bitnet_actor.admin_plans` so that building the parser imports no store or service)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bitnet_actor.config import Settings

__all__ = ["COMMANDS", "add_parsers", "run"]


# ---- the command line --------------------------------------------------------------------------------------

_PLAN_LIMITS = ("rpm", "tpm", "key_rpm", "key_tpm", "key_concurrency", "monthly_token_quota")
_PLAN_INTS = ("monthly_fee_cents", "weight", "max_running", "max_active_jobs")
COMMANDS = ("plans", "edit-plan", "set-plan", "set-limits")


def add_parsers(admin_sub: Any, settings_flags: Any) -> None:
    """Add the plan commands to ``bitnet-actor admin`` (``settings_flags(parser)`` adds the store flags)."""
    listing = admin_sub.add_parser("plans", help="list the plans")
    edit = admin_sub.add_parser(
        "edit-plan", help="create or change a plan (limits: a number or 'none' for unlimited; prices: cents per 1M)"
    )
    edit.add_argument("--name", required=True, help="plan name (lowercase letters, digits, '-', '_')")
    edit.add_argument("--display-name")
    for name in _PLAN_LIMITS:
        edit.add_argument(f"--{name.replace('_', '-')}", dest=f"limit_{name}", metavar="N|none")
    edit.add_argument("--quota-mode", choices=("hard", "overage"))
    edit.add_argument("--input-price", metavar="CENTS", help="default cents per 1M input tokens")
    edit.add_argument("--output-price", metavar="CENTS", help="default cents per 1M output tokens")
    edit.add_argument("--model-price", action="append", default=[], metavar="MODEL=IN,OUT",
                      help="a model's own price, cents per 1M input,output tokens (repeatable)")  # fmt: skip
    for name in _PLAN_INTS:
        edit.add_argument(f"--{name.replace('_', '-')}", dest=f"int_{name}", metavar="N")
    edit.add_argument("--stripe-price-id")
    set_plan_p = admin_sub.add_parser("set-plan", help="put an organization on a plan")
    set_plan_p.add_argument("--org", required=True, help="organization name")
    set_plan_p.add_argument("--plan", required=True, help="plan name")
    limits = admin_sub.add_parser(
        "set-limits", help="override an organization's plan limits ('none': back to the plan's value)"
    )
    limits.add_argument("--org", required=True, help="organization name")
    for name in _PLAN_LIMITS:
        limits.add_argument(f"--{name.replace('_', '-')}", dest=f"limit_{name}", metavar="N|none")
    limits.add_argument("--quota-mode", choices=("hard", "overage", "none"))
    limits.add_argument("--response-cache-ttl", metavar="SECONDS|none",
                        help="keep deterministic completions this long (1 .. 604800 s); 'none' or 0: off")  # fmt: skip
    for p in (listing, edit, set_plan_p, limits):
        settings_flags(p)


def _whole(name: str, raw: str) -> int:
    from bitnet_actor.services.errors import ValidationError

    try:
        return int(raw)
    except ValueError:
        raise ValidationError(f"--{name.replace('_', '-')} must be a whole number, not {raw!r}") from None


def _limit_values(args: Any) -> dict[str, Any]:
    from bitnet_actor.admin_plans import parse_limit

    values: dict[str, Any] = {}
    for name in _PLAN_LIMITS:
        raw = getattr(args, f"limit_{name}", None)
        if raw is not None:
            values[name] = parse_limit(name, raw)
    if getattr(args, "quota_mode", None) is not None:
        values["quota_mode"] = None if args.quota_mode == "none" else args.quota_mode
    ttl = getattr(args, "response_cache_ttl", None)
    if ttl is not None:
        values["response_cache_ttl_s"] = None if ttl == "none" else _whole("response_cache_ttl", ttl)
    return values


def run(args: Any, settings: Settings) -> str:
    """Run one of :data:`COMMANDS`; return the text to print."""
    import trio

    from bitnet_actor.admin_plans import edit_plan, list_plans, parse_model_prices, set_limits, set_plan

    command = args.admin_command
    if command == "plans":
        return trio.run(list_plans, settings)
    if command == "set-plan":
        return trio.run(lambda: set_plan(settings, org=args.org, plan=args.plan))
    values = _limit_values(args)
    if command == "set-limits":
        return trio.run(lambda: set_limits(settings, org=args.org, values=values))
    for name in _PLAN_INTS:
        raw = getattr(args, f"int_{name}", None)
        if raw is not None:
            values[name] = _whole(name, raw)
    if args.input_price is not None:
        values["input_price_per_m"] = args.input_price
    if args.output_price is not None:
        values["output_price_per_m"] = args.output_price
    if args.model_price:
        values["model_prices"] = parse_model_prices(args.model_price)
    if args.display_name is not None:
        values["display_name"] = args.display_name
    if args.stripe_price_id is not None:
        values["stripe_price_id"] = args.stripe_price_id
    return trio.run(lambda: edit_plan(settings, args.name, values))
