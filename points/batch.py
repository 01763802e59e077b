"""Nightly set-based jobs: expiry, pending release, tier evaluation, ledger check.

Each works in batches of members, one transaction per batch, in SQL (never a
Python loop over lots). Each batch first locks the batch's points accounts in
member order (the same lock the till takes), so a job and a purchase never
interleave on one member, and a re-run finds nothing left to do.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import date, datetime, time
from typing import Any

from dateutil.relativedelta import relativedelta
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

logger = logging.getLogger(__name__)


def as_of_datetime(day: date | None) -> datetime:
    """Local midnight at the start of ``day`` (now when no day is given)."""
    if day is None:
        return timezone.now()
    return datetime.combine(day, time.min, tzinfo=timezone.get_current_timezone())


def _lock_accounts(cursor: Any, member_ids: list[int]) -> None:
    cursor.execute(
        "SELECT member_id FROM points_pointsaccount WHERE member_id = ANY(%s) ORDER BY member_id FOR NO KEY UPDATE",
        [member_ids],
    )
    cursor.fetchall()


@dataclass
class ExpiryResult:
    members: int = 0
    lots: int = 0
    points: int = 0
    batches: int = 0
    max_batch_seconds: float = 0.0
    # Where the longest batch's time went: waiting for the accounts' locks
    # (the till holds a member's for a few ms), the statement, the commit.
    longest_batch: dict[str, float] = field(default_factory=dict)


# Longer than this, a batch is logged with its phases (the target is 1 s).
SLOW_BATCH_SECONDS = 0.5


# No row locks on the lots: the caller holds the accounts' locks, which every
# writer of a member's lots takes first (points/locks.py); locking each lot too
# cost a write per lot.
_EXPIRE_SQL = """
WITH lots AS (
    SELECT ctid AS row, id, member_id, remaining, pending_until IS NOT NULL AS is_pending
    FROM points_pointslot
    WHERE member_id = ANY(%(ids)s) AND remaining > 0 AND expires_at <= %(as_of)s
), sums AS (
    SELECT member_id, SUM(remaining)::int AS total,
           COALESCE(SUM(remaining) FILTER (WHERE is_pending), 0)::int AS pend, COUNT(*) AS n
    FROM lots GROUP BY member_id
), acc AS (
    -- "member_id = ANY" too: the accounts by primary key, not the join the
    -- planner picks from the lots' estimate (a scan of every account, per batch).
    UPDATE points_pointsaccount a
    SET balance = a.balance - s.total, pending = a.pending - s.pend, updated_at = now()
    FROM sums s WHERE a.member_id = s.member_id AND a.member_id = ANY(%(ids)s)
    RETURNING a.member_id, a.balance
), entries AS (
    INSERT INTO points_pointsentry (member_id, kind, points, balance_after, source, reason, reference, created_at)
    SELECT acc.member_id, 'expire', -s.total, acc.balance, 'expiry', '', %(reference)s, %(at)s
    FROM acc JOIN sums s ON s.member_id = acc.member_id
    RETURNING id, member_id
), allocations AS (
    INSERT INTO points_pointsallocation (entry_id, lot_id, points)
    SELECT e.id, l.id, -l.remaining FROM lots l JOIN entries e ON e.member_id = l.member_id
), emptied AS (
    -- By the row's address read above (no index probe per lot): the accounts'
    -- locks keep every other writer off these lots until the commit.
    UPDATE points_pointslot p SET remaining = 0 FROM lots l WHERE p.ctid = l.row
)
SELECT (SELECT COUNT(*) FROM sums), COALESCE(SUM(n), 0)::bigint, COALESCE(SUM(total), 0)::bigint,
       (SELECT COALESCE(array_agg(id), '{}') FROM entries) FROM sums
"""


def points_expire_due(*, as_of: datetime | None = None, batch_size: int | None = None) -> ExpiryResult:
    """Expire every lot whose expiry is at or before ``as_of``: one ``expire``
    entry per member per run, with allocations to each lot. Safe to re-run."""
    import time as clock

    as_of = as_of or timezone.now()
    batch_size = batch_size or settings.LOYALTY_EXPIRY_BATCH_SIZE
    reference = f"expiry:{timezone.localtime(as_of):%Y-%m-%d}"
    result = ExpiryResult()
    after = 0
    while True:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT DISTINCT member_id FROM points_pointslot WHERE remaining > 0 AND expires_at <= %s "
                "AND member_id > %s ORDER BY member_id LIMIT %s",
                [as_of, after, batch_size],
            )
            ids = [row[0] for row in cursor.fetchall()]
        if not ids:
            break
        started = clock.monotonic()
        with transaction.atomic(), connection.cursor() as cursor:
            _lock_accounts(cursor, ids)
            locked = clock.monotonic()
            cursor.execute(_EXPIRE_SQL, {"ids": ids, "as_of": as_of, "reference": reference, "at": timezone.now()})
            members, lots, points, entry_ids = cursor.fetchone()
            from campaigns.services.webhooks import webhooks_points_changed_many

            webhooks_points_changed_many(entry_ids=entry_ids)
            executed = clock.monotonic()
        ended = clock.monotonic()
        phases = {
            "batch": result.batches + 1,
            "lots": lots,
            "locks": round(locked - started, 3),
            "statement": round(executed - locked, 3),
            "commit": round(ended - executed, 3),
        }
        if ended - started > SLOW_BATCH_SECONDS:
            logger.warning(
                "points expiry: batch %(batch)s (%(lots)s lots) took %(total).2f s: accounts' locks %(locks).3f s, "
                "statement %(statement).3f s, commit %(commit).3f s",
                {**phases, "total": ended - started},
            )
        if ended - started > result.max_batch_seconds:
            result.max_batch_seconds = ended - started
            result.longest_batch = phases
        result.members += members
        result.lots += lots
        result.points += int(points)
        result.batches += 1
        after = ids[-1]
    logger.info(
        "points expiry as of %s: %s points in %s lots of %s members", as_of, result.points, result.lots, result.members
    )
    return result


# As for expiry: the accounts' locks guard the lots.
_RELEASE_SQL = """
WITH lots AS (
    SELECT id, member_id, remaining FROM points_pointslot
    WHERE member_id = ANY(%(ids)s) AND pending_until IS NOT NULL AND pending_until <= %(now)s
), sums AS (
    SELECT member_id, SUM(remaining)::int AS total FROM lots GROUP BY member_id
), acc AS (
    UPDATE points_pointsaccount a SET pending = a.pending - s.total, updated_at = now()
    FROM sums s WHERE a.member_id = s.member_id
)
UPDATE points_pointslot p SET pending_until = NULL FROM lots l WHERE p.id = l.id
"""


def points_release_pending(*, now: datetime | None = None, batch_size: int | None = None) -> int:
    """Make pending points spendable once their pending period is over. Returns lots released."""
    now = now or timezone.now()
    batch_size = batch_size or settings.LOYALTY_EXPIRY_BATCH_SIZE
    released = 0
    after = 0
    while True:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT DISTINCT member_id FROM points_pointslot WHERE pending_until IS NOT NULL "
                "AND pending_until <= %s AND member_id > %s ORDER BY member_id LIMIT %s",
                [now, after, batch_size],
            )
            ids = [row[0] for row in cursor.fetchall()]
        if not ids:
            break
        with transaction.atomic(), connection.cursor() as cursor:
            _lock_accounts(cursor, ids)
            cursor.execute(_RELEASE_SQL, {"ids": ids, "now": now})
            released += cursor.rowcount
        after = ids[-1]
    return released


@dataclass
class TierEvaluation:
    upgraded: int = 0
    downgraded: int = 0
    batches: int = 0


_TIERS_SQL = """
WITH spend AS (
    SELECT member_id, SUM(amount - refunded_amount) AS total
    FROM points_purchase
    WHERE member_id BETWEEN %(lo)s AND %(hi)s AND paid_at > %(since)s AND paid_at <= %(as_of)s
    GROUP BY member_id
), current AS (
    SELECT m.id, m.tier_id, t.rank, COALESCE(s.total, 0) AS spend, m.tier_since, m.tier_override_until,
           t.validity_months
    FROM members_member m
    JOIN members_tier t ON t.id = m.tier_id
    LEFT JOIN spend s ON s.member_id = m.id
    WHERE m.id BETWEEN %(lo)s AND %(hi)s AND m.status <> 'closed'
), target AS (
    SELECT c.*,
           (SELECT t2.rank FROM members_tier t2 WHERE t2.is_active AND t2.threshold <= c.spend
            ORDER BY t2.rank DESC LIMIT 1) AS target_rank
    FROM current c
), decided AS (
    SELECT d.id, d.tier_id AS old_tier_id, d.spend,
           CASE
             WHEN d.target_rank > d.rank THEN (SELECT t3.id FROM members_tier t3 WHERE t3.rank = d.target_rank)
             WHEN d.target_rank < d.rank AND (
                    (d.tier_override_until IS NOT NULL AND d.tier_override_until <= %(as_of)s)
                 OR (d.tier_override_until IS NULL
                     AND d.tier_since + make_interval(months => d.validity_months) <= %(as_of)s))
               THEN (SELECT t4.id FROM members_tier t4 WHERE t4.is_active AND t4.rank < d.rank
                     ORDER BY t4.rank DESC LIMIT 1)
           END AS new_tier_id,
           CASE WHEN d.target_rank > d.rank THEN 'upgrade'
                WHEN d.tier_override_until IS NOT NULL THEN 'override_expired'
                ELSE 'downgrade' END AS reason
    FROM target d
), changed AS (
    UPDATE members_member m
    SET tier_id = d.new_tier_id, tier_since = %(as_of)s, tier_override_until = NULL, updated_at = now()
    FROM decided d
    -- The range again: the members by primary key, not a join with every member.
    WHERE m.id = d.id AND m.id BETWEEN %(lo)s AND %(hi)s AND d.new_tier_id IS NOT NULL AND d.new_tier_id <> m.tier_id
    RETURNING m.id, d.old_tier_id, d.new_tier_id, d.spend, d.reason
), history AS (
    INSERT INTO members_tierchange (member_id, from_tier_id, to_tier_id, reason, note, qualifying_spend, created_at)
    SELECT id, old_tier_id, new_tier_id, reason, %(note)s, spend, now() FROM changed
)
SELECT COUNT(*) FILTER (WHERE reason = 'upgrade'), COUNT(*) FILTER (WHERE reason <> 'upgrade'),
       COALESCE(array_agg(id) FILTER (WHERE reason = 'upgrade'), '{}'),
       COALESCE(json_agg(json_build_object('id', id, 'from', old_tier_id, 'to', new_tier_id, 'reason', reason)),
                '[]'::json)
FROM changed
"""


def tiers_evaluate(*, as_of: datetime | None = None, batch_size: int | None = None) -> TierEvaluation:
    """Re-evaluate every member's tier from qualifying spend: upgrades at once;
    downgrades only after the tier's validity (or a manual override) ended, at
    most one tier per run. Writes only changed rows, each with a TierChange."""
    as_of = as_of or timezone.now()
    batch_size = batch_size or settings.LOYALTY_TIER_BATCH_SIZE
    since = as_of - relativedelta(months=settings.LOYALTY_TIER_QUALIFICATION_MONTHS)
    note = f"evaluation as of {timezone.localtime(as_of):%Y-%m-%d}"
    result = TierEvaluation()
    with connection.cursor() as cursor:
        cursor.execute("SELECT COALESCE(MIN(id), 0), COALESCE(MAX(id), -1) FROM members_member")
        low, high = cursor.fetchone()
    for lo in range(low, high + 1, batch_size):
        hi = lo + batch_size - 1
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(_TIERS_SQL, {"lo": lo, "hi": hi, "since": since, "as_of": as_of, "note": note})
            up, down, upgraded_ids, changes = cursor.fetchone()
            _grant_tier_privileges(upgraded_ids, as_of)
            _announce_tier_changes(changes, as_of)
        result.upgraded += up
        result.downgraded += down
        result.batches += 1
    logger.info("tier evaluation as of %s: %s up, %s down", as_of, result.upgraded, result.downgraded)
    return result


def _grant_tier_privileges(member_ids: list[int], at: datetime) -> None:
    """Members upgraded by evaluation get their new tier's privileges (queued, once per period)."""
    if not member_ids:
        return
    from campaigns.services.issuing import tier_privileges_grant
    from members.models import Member

    for member in Member.objects.filter(pk__in=member_ids).select_related("tier"):
        tier_privileges_grant(member=member, at=at)


def _announce_tier_changes(changes: Any, at: datetime) -> None:
    """Member messages and webhooks for tier changes made by evaluation."""
    import json

    from campaigns.services.notifications import notify_tier_changed
    from campaigns.services.webhooks import webhook_tier_changed
    from members.models import Member, Tier

    rows = json.loads(changes) if isinstance(changes, str) else changes
    if not rows:
        return
    tiers = {tier.pk: tier for tier in Tier.objects.all()}
    members = Member.objects.in_bulk([row["id"] for row in rows])
    for row in rows:
        member = members[row["id"]]
        previous, target = tiers[row["from"]], tiers[row["to"]]
        notify_tier_changed(member, previous, target, at=at)
        webhook_tier_changed(member, previous, target, reason=row["reason"], at=at)


# -----------------------------------------------------------------------------
# Ledger check
# -----------------------------------------------------------------------------
LEDGER_CHECKS: dict[str, str] = {
    "balance_differs_from_entries": """
        SELECT a.member_id, a.balance, COALESCE(e.total, 0) FROM points_pointsaccount a
        LEFT JOIN (SELECT member_id, SUM(points) AS total FROM points_pointsentry GROUP BY member_id) e
          ON e.member_id = a.member_id
        WHERE a.balance <> COALESCE(e.total, 0)""",
    "entries_without_account": """
        SELECT e.member_id, SUM(e.points), NULL FROM points_pointsentry e
        LEFT JOIN points_pointsaccount a ON a.member_id = e.member_id
        WHERE a.member_id IS NULL GROUP BY e.member_id""",
    "balance_differs_from_lots": """
        SELECT a.member_id, a.balance + a.debt, COALESCE(l.total, 0) FROM points_pointsaccount a
        LEFT JOIN (SELECT member_id, SUM(remaining) AS total FROM points_pointslot GROUP BY member_id) l
          ON l.member_id = a.member_id
        WHERE a.balance + a.debt <> COALESCE(l.total, 0)""",
    "pending_differs_from_lots": """
        SELECT a.member_id, a.pending, COALESCE(l.total, 0) FROM points_pointsaccount a
        LEFT JOIN (SELECT member_id, SUM(remaining) AS total FROM points_pointslot
                   WHERE pending_until IS NOT NULL GROUP BY member_id) l ON l.member_id = a.member_id
        WHERE a.pending <> COALESCE(l.total, 0)""",
    "last_entry_balance_differs": """
        SELECT a.member_id, a.balance, e.balance_after FROM points_pointsaccount a
        JOIN LATERAL (SELECT balance_after FROM points_pointsentry WHERE member_id = a.member_id
                      ORDER BY id DESC LIMIT 1) e ON true
        WHERE e.balance_after <> a.balance""",
    "negative_balance_without_debt": """
        SELECT member_id, balance, debt FROM points_pointsaccount WHERE balance < 0 AND balance <> -debt""",
    "debt_with_open_lots": """
        SELECT a.member_id, a.debt, SUM(l.remaining) FROM points_pointsaccount a
        JOIN points_pointslot l ON l.member_id = a.member_id AND l.remaining > 0
        WHERE a.debt > 0 GROUP BY a.member_id, a.debt""",
    "lot_out_of_range": """
        SELECT id, remaining, original FROM points_pointslot WHERE remaining < 0 OR remaining > original""",
    "lot_differs_from_allocations": """
        SELECT l.id, l.remaining, l.original + COALESCE(x.total, 0) FROM points_pointslot l
        LEFT JOIN (SELECT lot_id, SUM(points) AS total FROM points_pointsallocation GROUP BY lot_id) x
          ON x.lot_id = l.id
        WHERE l.remaining <> l.original + COALESCE(x.total, 0)""",
    "allocation_without_entry_or_lot": """
        SELECT x.id, x.entry_id, x.lot_id FROM points_pointsallocation x
        WHERE NOT EXISTS (SELECT 1 FROM points_pointsentry e WHERE e.id = x.entry_id)
           OR NOT EXISTS (SELECT 1 FROM points_pointslot l WHERE l.id = x.lot_id)""",
    "debit_differs_from_allocations": """
        SELECT e.id, e.points, COALESCE(x.total, 0) FROM points_pointsentry e
        JOIN (SELECT entry_id, SUM(points) AS total FROM points_pointsallocation GROUP BY entry_id) x
          ON x.entry_id = e.id
        WHERE e.points < 0 AND x.total < e.points""",
}


@dataclass
class LedgerReport:
    violations: dict[str, list[tuple[Any, ...]]] = field(default_factory=dict)
    checked_accounts: int = 0

    @property
    def count(self) -> int:
        return sum(len(rows) for rows in self.violations.values())

    @property
    def ok(self) -> bool:
        return self.count == 0


def ledger_check(*, limit: int = 100) -> LedgerReport:
    """Verify every ledger invariant of DESIGN.md for every member, in SQL, and
    record the result (shown by /healthz and admin)."""
    from loyalty.models import Heartbeat

    report = LedgerReport()
    outermost = not connection.in_atomic_block
    with transaction.atomic(), connection.cursor() as cursor:
        if outermost:  # one consistent snapshot for all checks
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        cursor.execute("SELECT COUNT(*) FROM points_pointsaccount")
        report.checked_accounts = cursor.fetchone()[0]
        for name, sql in LEDGER_CHECKS.items():
            cursor.execute(f"{sql} LIMIT {int(limit)}")  # noqa: S608 - constant SQL, integer limit
            rows = cursor.fetchall()
            if rows:
                report.violations[name] = rows
    Heartbeat.objects.update_or_create(
        name="check_ledger",
        defaults={
            "at": timezone.now(),
            "detail": {
                "ok": report.ok,
                "violations": report.count,
                "checks": {name: len(rows) for name, rows in report.violations.items()},
                "accounts": report.checked_accounts,
            },
        },
    )
    return report
