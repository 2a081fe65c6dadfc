"""The billing outbox: usage in the Stripe outbox (``billing_outbox``) sent to Stripe as Billing meter events.

``BillingOutbox`` owns no state that matters between rounds: the table is the queue, so any replica may run
one, and a restart loses nothing. Each round (every ``interval_s``, never on a request's path):

1. **freeze** the open rows of ended hours (``open`` -> ``sending``), giving each its identifier
   ``<org>:<meter>:<hour>:<row id>`` (usage for an hour arriving after its row froze opens a second row,
   hence the row id), chosen once and kept across every retry;
2. **skip** the rows older than Stripe's 35-day meter-event window (logged: they can no longer be billed
   through Stripe; the ledger and the invoices still count them);
3. **send** the due rows, one transaction per row holding it with ``SELECT ... FOR UPDATE SKIP LOCKED``, so
   two replicas never send the same row at once; the meter event carries the row's identifier and an
   ``Idempotency-Key`` made of it, so a retry after an answer was lost is counted once by Stripe. Accepted (or
   already known by its identifier): ``sent``. Retryable failure: the row waits ``backoff_s * 2**attempts``
   (at most ``backoff_max_s``, with jitter) and the round stops (Stripe is away: the next round probes it
   again with one row). Permanent refusal: ``skipped``, with the error logged and kept in ``last_error``;
4. **sweep** the organizations whose payment grace period is over (``bitnet_orgs_past_grace``) onto the free
   plan;
5. report the rows not yet accepted (``on_pending``: the ``bitnet_billing_outbox_pending`` gauge).

Started only when a Stripe key is configured (without one the outbox rows stay local). Restart policy: run
under a ``Supervisor`` (``bitnet_actor.system``); a round that fails because PostgreSQL is away is logged and
retried at the next interval, anything else crashes the actor and the supervisor restarts it.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio
import trio.lowlevel

from bitnet_actor.errors import StoreUnavailableError
from bitnet_actor.services.billing.plans import DEFAULT_PLAN, set_org_plan
from bitnet_actor.services.billing.stripe import METER_EVENT_NAMES, MeterEvent
from bitnet_actor.services.errors import PaymentProviderError

if TYPE_CHECKING:
    from collections.abc import Callable
    from uuid import UUID

    from bitnet_actor.services.billing.stripe import StripeBilling
    from bitnet_actor.stores.postgres import Connection, Database

__all__ = ["BillingOutbox", "OutboxRound", "OutboxStatistics"]

log = logging.getLogger(__name__)

_WINDOW = "35 days"  # Stripe takes meter events of the past 35 days
_MARGIN = "1 hour"  # a row this close to the window's edge could cross it in flight: skipped too

_FREEZE = """
WITH due AS (
    SELECT id FROM billing_outbox
    WHERE state = 'open' AND bucket_start < date_trunc('hour', now(), 'UTC')
    ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED
)
UPDATE billing_outbox b SET
    state = 'sending',
    identifier = b.org_id::text || ':' || b.meter || ':'
        || to_char(b.bucket_start AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24"Z"') || ':' || b.id::text,
    next_attempt_at = now()
FROM due WHERE b.id = due.id
"""

_SKIP_OLD = f"""
UPDATE billing_outbox SET state = 'skipped', last_error = 'older than Stripe''s {_WINDOW} meter-event window'
WHERE state = 'sending' AND bucket_start < now() - interval '{_WINDOW}' + interval '{_MARGIN}'
RETURNING identifier, value
"""

_NEXT = """
SELECT id, org_id, meter, bucket_start, value, identifier, attempts FROM billing_outbox
WHERE state = 'sending' AND next_attempt_at <= now()
ORDER BY next_attempt_at, id LIMIT 1 FOR UPDATE SKIP LOCKED
"""


@dataclass(frozen=True, slots=True)
class OutboxRound:
    """What one round did."""

    frozen: int = 0
    sent: int = 0
    known: int = 0
    retried: int = 0
    skipped: int = 0
    downgraded: int = 0
    pending: int = 0


@dataclass(frozen=True, slots=True)
class OutboxStatistics:
    """Totals since start, for metrics and tests."""

    rounds: int
    sent: int
    known: int
    retried: int
    skipped: int
    downgraded: int
    last_error: str | None


class BillingOutbox:
    """Sends the Stripe outbox's meter events and drops organizations past their payment grace to free."""

    def __init__(
        self,
        db: Database,
        stripe: StripeBilling,
        *,
        interval_s: float = 30.0,
        batch_size: int = 200,
        backoff_s: float = 5.0,
        backoff_max_s: float = 3600.0,
        send_timeout_s: float = 60.0,
        on_pending: Callable[[int], None] | None = None,
        on_plan_changed: Callable[[UUID], None] | None = None,
    ) -> None:
        """Args:
        db: the outbox's database. stripe: the Stripe client.
        interval_s: between rounds. batch_size: rows frozen and sent per round at most.
        backoff_s / backoff_max_s: a row's first retry delay, doubled per attempt, and its cap.
        send_timeout_s: one row's Stripe calls at most (then retried).
        on_pending: called with the rows not yet accepted after each round (the gauge).
        on_plan_changed: called with an organization the grace sweep moved to the free plan.
        """
        self.db = db
        self.stripe = stripe
        self.interval_s = interval_s
        self.batch_size = batch_size
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.send_timeout_s = send_timeout_s
        self._on_pending = on_pending
        self._on_plan_changed = on_plan_changed
        self._rounds = self._sent = self._known = self._retried = self._skipped = self._downgraded = 0
        self._last_error: str | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run a round every ``interval_s`` until cancelled."""
        task_status.started()
        while True:
            try:
                await self.run_once()
            except StoreUnavailableError as exc:  # the rows wait in the table; the next round takes them
                log.warning("billing outbox round skipped: %s", exc)
            await trio.sleep(self.interval_s)

    async def run_once(self) -> OutboxRound:
        """One round: freeze, skip, send, sweep, count (see the module docstring)."""
        frozen = await self.freeze()
        skipped = await self.skip_expired()
        sent, known, retried, refused = await self.send_due()
        downgraded = await self.sweep_grace()
        pending = await self.pending()
        if self._on_pending is not None:
            self._on_pending(pending)
        self._rounds += 1
        return OutboxRound(frozen, sent, known, retried, skipped + refused, downgraded, pending)

    async def freeze(self) -> int:
        """Freeze the open rows of ended hours; return how many."""
        status = await self.db.execute(_FREEZE, self.batch_size)
        return int(status.split()[-1])

    async def skip_expired(self) -> int:
        """Mark the rows past Stripe's meter-event window skipped (logged); return how many."""
        rows = await self.db.fetch(_SKIP_OLD)
        for row in rows:
            log.error(
                "meter event %s (%d) is older than Stripe's %s window: skipped, not billed through Stripe",
                row["identifier"],
                row["value"],
                _WINDOW,
            )
        self._skipped += len(rows)
        return len(rows)

    async def send_due(self) -> tuple[int, int, int, int]:
        """Send due rows until none is left, a batch is done, or Stripe fails retryably; return how many were
        (accepted, already known, to retry, refused)."""
        sent = known = retried = refused = 0
        await trio.lowlevel.checkpoint()  # a batch of none still yields
        for _ in range(self.batch_size):
            outcome = await self._send_one()
            if outcome is None:
                break
            if outcome == "sent":
                sent += 1
            elif outcome == "known":
                known += 1
            elif outcome == "refused":
                refused += 1
            else:
                retried += 1
                break  # Stripe is away or throttling us: the next round probes it with one row
        self._sent += sent
        self._known += known
        self._retried += retried
        self._skipped += refused
        return sent, known, retried, refused

    async def _send_one(self) -> str | None:
        async with self.db.transaction() as tx:
            row = await tx.fetchrow(_NEXT)
            if row is None:
                return None
            org_id: UUID = row["org_id"]
            # org_billing is tenant-scoped: act for the row's organization in this transaction only.
            await tx.execute("SELECT set_config('app.org_id', $1, true)", str(org_id))
            try:
                with trio.fail_after(self.send_timeout_s):
                    customer = await self.stripe.ensure_customer(tx, org_id)
                    await self._ensure_subscription(tx, org_id)
                    accepted = await self.stripe.send_meter_event(
                        MeterEvent(
                            event_name=METER_EVENT_NAMES[row["meter"]],
                            customer_id=customer,
                            value=row["value"],
                            identifier=row["identifier"],
                            timestamp=row["bucket_start"],
                        )
                    )
            except (PaymentProviderError, trio.TooSlowError) as exc:
                error = str(exc) or f"no answer within {self.send_timeout_s:g} s"
                self._last_error = error
                if isinstance(exc, PaymentProviderError) and not exc.retryable:
                    log.error("meter event %s refused by Stripe: %s; skipped", row["identifier"], error)
                    await tx.execute(
                        "UPDATE billing_outbox SET state = 'skipped', attempts = attempts + 1, last_error = $2"
                        " WHERE id = $1",
                        row["id"],
                        error[:1000],
                    )
                    return "refused"
                delay = self._backoff(row["attempts"])
                log.warning("meter event %s not sent (%s); retrying in %.0f s", row["identifier"], error, delay)
                await tx.execute(
                    "UPDATE billing_outbox SET attempts = attempts + 1, last_error = $2,"
                    " next_attempt_at = now() + make_interval(secs => $3) WHERE id = $1",
                    row["id"],
                    error[:1000],
                    delay,
                )
                return "retry"
            await tx.execute(
                "UPDATE billing_outbox SET state = 'sent', sent_at = now(), attempts = attempts + 1,"
                " last_error = NULL WHERE id = $1",
                row["id"],
            )
            return "sent" if accepted else "known"

    async def _ensure_subscription(self, tx: Connection, org_id: UUID) -> None:
        # A paid plan's subscription, best effort: a failure here must not hold the organization's usage back.
        try:
            await self.stripe.ensure_subscription(tx, org_id)
        except PaymentProviderError as exc:
            log.warning("Stripe subscription of organization %s not created: %s", org_id, exc)
            await trio.lowlevel.checkpoint()

    def _backoff(self, attempts: int) -> float:
        delay = min(self.backoff_s * 2.0 ** min(attempts, 30), self.backoff_max_s)
        return delay * random.uniform(0.5, 1.0)  # jitter: replicas retrying together drift apart

    async def sweep_grace(self) -> int:
        """Move every organization past its payment grace period to the free plan; return how many."""
        orgs = [r[0] for r in await self.db.fetch("SELECT org_id FROM bitnet_orgs_past_grace() AS org_id")]
        for org_id in orgs:
            await set_org_plan(self.db, org_id, DEFAULT_PLAN)
            log.warning("organization %s: payment grace period over; moved to the %s plan", org_id, DEFAULT_PLAN)
            if self._on_plan_changed is not None:
                self._on_plan_changed(org_id)
        self._downgraded += len(orgs)
        return len(orgs)

    async def pending(self) -> int:
        """Rows not yet accepted by Stripe (open or sending)."""
        count: int = await self.db.fetchval("SELECT count(*) FROM billing_outbox WHERE state IN ('open', 'sending')")
        return count

    def statistics(self) -> OutboxStatistics:
        """Totals since start."""
        return OutboxStatistics(
            rounds=self._rounds,
            sent=self._sent,
            known=self._known,
            retried=self._retried,
            skipped=self._skipped,
            downgraded=self._downgraded,
            last_error=self._last_error,
        )
