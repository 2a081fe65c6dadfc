"""The audit log: who did what to what, when, from where. Append-only and hash-chained per organization.

Rows are written inside the transaction of the change they describe (so a change and its record commit
together). The chain is computed by the database (trigger ``bitnet_audit_chain``); ``verify`` recomputes
it with the same SQL function and reports the first row that does not match.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from datetime import datetime
    from uuid import UUID

    from bitnet_actor.stores.postgres import Connection, Database

__all__ = ["Actor", "AuditEntry", "TamperReport", "list_actions", "list_entries", "record", "verify"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Actor:
    """Who is acting and from where."""

    user_id: UUID | None = None
    key_id: UUID | None = None
    ip: str = ""
    user_agent: str = ""


SYSTEM_ACTOR = Actor(user_agent="bitnet-actor")


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One row of the log, as the API shows it."""

    seq: int
    created_at: datetime
    action: str
    actor_user_id: UUID | None
    actor_key_id: UUID | None
    target_type: str
    target_id: str
    ip: str
    user_agent: str
    details: dict[str, Any]
    hash: str


async def record(
    conn: Connection,
    *,
    org_id: UUID,
    actor: Actor,
    action: str,
    target_type: str = "",
    target_id: object = "",
    details: dict[str, Any] | None = None,
) -> None:
    """Append one entry for ``org_id`` inside the caller's transaction."""
    await conn.execute(
        "INSERT INTO audit_log (org_id, actor_user_id, actor_key_id, action, target_type, target_id, ip,"
        " user_agent, details, seq, prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 0, '', '')",
        org_id,
        actor.user_id,
        actor.key_id,
        action,
        target_type,
        str(target_id),
        actor.ip[:64],
        actor.user_agent[:512],
        details or {},
    )


async def list_entries(
    db: Database,
    org_id: UUID,
    *,
    limit: int = 100,
    before_seq: int | None = None,
    action: str | None = None,
    actor_user_id: UUID | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[AuditEntry]:
    """The newest entries of ``org_id`` (before ``before_seq`` when paging), optionally only those of one
    ``action``, by one user, or created in [``since``, ``until``)."""
    async with db.transaction(org_id=org_id, readonly=True) as tx:
        rows = await tx.fetch(
            "SELECT seq, created_at, action, actor_user_id, actor_key_id, target_type, target_id, ip, user_agent,"
            " details, hash FROM audit_log WHERE org_id = $7 AND ($1::bigint IS NULL OR seq < $1)"
            " AND ($3::text IS NULL OR action = $3) AND ($4::uuid IS NULL OR actor_user_id = $4)"
            " AND ($5::timestamptz IS NULL OR created_at >= $5) AND ($6::timestamptz IS NULL OR created_at < $6)"
            " ORDER BY seq DESC LIMIT $2",
            before_seq,
            limit,
            action,
            actor_user_id,
            since,
            until,
            org_id,
        )
    return [AuditEntry(**{**dict(r), "hash": bytes(r["hash"]).hex()}) for r in rows]


async def list_actions(db: Database, org_id: UUID) -> list[str]:
    """The actions that occur in ``org_id``'s log, alphabetically (for a filter's choices)."""
    async with db.transaction(org_id=org_id, readonly=True) as tx:
        rows = await tx.fetch("SELECT DISTINCT action FROM audit_log WHERE org_id = $1 ORDER BY action", org_id)
    return [str(r["action"]) for r in rows]


@dataclass(frozen=True, slots=True)
class TamperReport:
    """The first row whose chain does not verify, and why."""

    row_id: int
    org_id: UUID
    seq: int
    reason: str


async def verify(db: Database) -> tuple[int, TamperReport | None]:
    """Recompute every organization's chain; return the rows checked and the first broken row, if any.

    Must run as the tables' owner (it reads every organization's rows).
    """
    checked = await db.fetchval("SELECT count(*) FROM audit_log")
    row = await db.fetchrow(
        """
        SELECT id, org_id, seq, prev_ok, hash_ok, seq_ok FROM (
            SELECT a.id, a.org_id, a.seq,
                   a.prev_hash = coalesce(lag(a.hash) OVER w, '\\x'::bytea) AS prev_ok,
                   a.hash = bitnet_audit_hash(a.prev_hash, a) AS hash_ok,
                   a.seq = row_number() OVER w AS seq_ok
            FROM audit_log a WINDOW w AS (PARTITION BY a.org_id ORDER BY a.seq)
        ) t
        WHERE NOT (prev_ok AND hash_ok AND seq_ok)
        ORDER BY id LIMIT 1
        """
    )
    if row is None:
        return int(checked), None
    if not row["hash_ok"]:
        reason = "its content does not match its hash (edited)"
    elif not row["seq_ok"]:
        reason = "a row before it is missing (deleted)"
    else:
        reason = "it does not link to the row before it"
    return int(checked), TamperReport(row["id"], row["org_id"], row["seq"], reason)
