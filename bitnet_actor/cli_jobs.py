"""The argument parsers of ``bitnet-actor jobs list | show | cancel`` (kept apart from
:mod:`bitnet_actor.admin_jobs` so that building the parser imports no store or service)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bitnet_actor.config import Settings

__all__ = ["add_parsers", "run"]


def add_parsers(sub: Any, settings_flags: Any, parser_class: Any) -> None:
    """Add ``jobs`` and its actions to the CLI (``settings_flags(parser)`` adds the store flags)."""
    jobs = sub.add_parser("jobs", help="conversion jobs of an organization")
    actions = jobs.add_subparsers(dest="jobs_command", metavar="ACTION", parser_class=parser_class)
    actions.required = True
    listing = actions.add_parser("list", help="list the organization's jobs (newest first)")
    show = actions.add_parser("show", help="print a job as JSON")
    cancel = actions.add_parser("cancel", help="ask a job to stop")
    for p in (listing, show, cancel):
        p.add_argument("--org", required=True, help="organization name")
        settings_flags(p)
    for p in (show, cancel):
        p.add_argument("--id", required=True, dest="job_id", help="the job's id")


def run(args: Any, settings: Settings) -> str:
    """Run ``jobs <action>``; return the text to print."""
    import trio

    from bitnet_actor import admin_jobs

    if args.jobs_command == "list":
        return trio.run(lambda: admin_jobs.list_jobs(settings, org=args.org))
    if args.jobs_command == "show":
        return trio.run(lambda: admin_jobs.show_job(settings, org=args.org, job_id=args.job_id))
    return trio.run(lambda: admin_jobs.cancel_job(settings, org=args.org, job_id=args.job_id))
