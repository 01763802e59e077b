# ruff: noqa: S608 - SQL here is composed of constant fragments only; every value is a bound parameter.
"""Builds the report rollups and the monthly snapshots.

``rollups_build`` is the nightly job (beat ``reports-rollups``, 00:50 local):
set-based SQL in the style of ``points.batch``, one transaction per run of
consecutive days within a month, and one per month. It builds

* the local days not built yet, a safety re-build of the last two days, and
  the "dirty" days: days on which rows that arrived since the previous run
  are dated (every source table's highest id is recorded by each run), such
  as a purchase queued offline or imported with an old ``paid_at`` and its
  ledger entries, or a member imported with their registration date; and the
  paid days of receipts claimed since. A day is rebuilt by delete + insert,
  so a re-run changes nothing and leaves no duplicates;
* for those days, ``DailyRollup`` (additive figures by day, store and tier),
  ``ExpiryCohortRollup`` (expired points by earning month) and the
  ``MonthlyMemberActivity`` rows of the members who bought on them;
* then ``MonthlyRollup`` and ``CohortActivity`` for the months from the
  earliest rebuilt day's to the current one: distinct and month-end figures
  as of the month's end (for the current month, the end of the last built
  day), computed from the current state minus what happened since then, so
  that a recent month costs the same whatever the length of the history.
  Every month from the first new or dirty day's on is recomputed (month-end
  figures carry over); a month rebuilt only for the safety window is skipped
  when it was computed as of the same moment and no row dated before that
  moment has arrived since (``RollupMonth``).

Only whole days are built (``until`` is at most today, exclusive). Rows of a
transaction still in flight while a run reads its watermarks are seen by the
next run only if dated within its safety window; ``manage.py build_rollups
--since`` rebuilds anything else, e.g. after an operator edits a member's
registration store (figures by store use the current one).

The month-end points read ``PointsAccount.balance`` and ``PointsLot.remaining``:
they rely on the ledger invariants ``check_ledger`` verifies every night
(balance = sum of entries, remaining = original + allocations).
"""

from __future__ import annotations

import logging
import time as clock
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any

from dateutil.relativedelta import relativedelta
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connection, transaction
from django.utils import timezone

from loyalty.models import Heartbeat
from reports.models import MonthlyKpiSnapshot, RollupDay, RollupMonth

logger = logging.getLogger(__name__)

HEARTBEAT_NAME = "reports_rollups"
# Days always rebuilt before ``until``, whether built already or not.
SAFETY_DAYS = 2
# Memory for the sorts and hashes of one build transaction (over the whole
# membership: hashing beats spilling to disk by a wide margin).
BUILD_WORK_MEM = "256MB"
# Rows recorded this long before the previous run started count as seen by it
# only if they were committed then; anything younger is looked at again.
WATERMARK_MARGIN = timedelta(minutes=10)

DAILY_COLUMNS = (
    "purchases",
    "sales_amount",
    "refunds_amount",
    "points_issued",
    "points_redeemed",
    "points_expired",
    "points_reversed",
    "points_adjusted_out",
    "coupons_issued",
    "coupons_written_off",
    "coupons_expired",
    "upgrades",
    "downgrades",
)


# -----------------------------------------------------------------------------
# Calendar helpers (local days and months)
# -----------------------------------------------------------------------------
def local_midnight(day: date) -> datetime:
    """The aware instant at which local ``day`` begins."""
    return datetime.combine(day, time.min, tzinfo=timezone.get_default_timezone())


def month_first(day: date) -> date:
    return day.replace(day=1)


def month_next(month: date) -> date:
    return month_first(month) + relativedelta(months=1)


def month_bounds(month: date) -> tuple[datetime, datetime]:
    """[start, end) of a local calendar month, as aware instants."""
    return local_midnight(month_first(month)), local_midnight(month_next(month))


def months_between(first: date, last: date) -> list[date]:
    """Months from ``first``'s to ``last``'s, both included."""
    months, month = [], month_first(first)
    while month <= last:
        months.append(month)
        month = month_next(month)
    return months


def _days(first: date, end: date) -> Iterator[date]:
    day = first
    while day < end:
        yield day
        day += timedelta(days=1)


def _runs(days: Iterable[date]) -> list[tuple[date, date]]:
    """Consecutive days as [first, end) runs, never across a month boundary."""
    runs: list[tuple[date, date]] = []
    for day in sorted(set(days)):
        if runs and runs[-1][1] == day and day.day != 1:
            runs[-1] = (runs[-1][0], day + timedelta(days=1))
        else:
            runs.append((day, day + timedelta(days=1)))
    return runs


def _tz() -> str:
    return timezone.get_default_timezone_name()


# -----------------------------------------------------------------------------
# SQL
# -----------------------------------------------------------------------------
_FIRST_DAY_SQL = """
SELECT (LEAST(
    (SELECT MIN(paid_at) FROM points_purchase),
    (SELECT MIN(created_at) FROM points_refund),
    (SELECT MIN(created_at) FROM points_pointsentry),
    (SELECT MIN(issued_at) FROM campaigns_coupon),
    (SELECT MIN(created_at) FROM campaigns_couponevent),
    (SELECT MIN(created_at) FROM members_tierchange),
    (SELECT MIN(created_at) FROM members_member)
) AT TIME ZONE %(tz)s)::date
"""

# The tables whose rows the rollups read, with the time each row is dated
# by. Their highest ids are recorded by each run ("watermarks"): a row with a
# higher id arrived later, whatever its date.
DATED_TABLES: dict[str, tuple[str, str]] = {
    "purchase": ("points_purchase", "paid_at"),
    "refund": ("points_refund", "created_at"),
    "entry": ("points_pointsentry", "created_at"),
    "coupon": ("campaigns_coupon", "issued_at"),
    "coupon_event": ("campaigns_couponevent", "created_at"),
    "tier_change": ("members_tierchange", "created_at"),
    "member": ("members_member", "created_at"),
}
# Those that month-end figures (``MonthlyRollup``) depend on.
MONTH_TABLES = ("purchase", "refund", "entry", "tier_change", "member")


def _watermarks_sql(names: Iterable[str]) -> str:
    return "SELECT " + ", ".join(
        f"(SELECT COALESCE(MAX(id), 0) FROM {DATED_TABLES[name][0]})" for name in names
    )


def _arrived_sql(name: str) -> str:
    """Rows of a table that arrived after its watermark, with their date;
    OFFSET 0 keeps the scan on the primary key (the few new rows)."""
    table, column = DATED_TABLES[name]
    return f"(SELECT {column} AS at FROM {table} WHERE id > %({name})s OFFSET 0)"


# Local days whose figures changed after they were built: rows that arrived
# since the previous run dated on them (a purchase queued offline or imported,
# a member imported with their registration date...), and purchases claimed
# since (a claim changes an existing row).
_DIRTY_DAYS_SQL = (
    "\nUNION\n".join(f"SELECT DISTINCT (at AT TIME ZONE %(tz)s)::date FROM {_arrived_sql(name)} x" for name in DATED_TABLES)
    + """
UNION
SELECT DISTINCT (paid_at AT TIME ZONE %(tz)s)::date FROM points_purchase
WHERE paid_at >= %(claims_from)s AND claimed_at >= %(since)s
"""
)


def _branch(columns: dict[str, str], body: str) -> str:
    """One family of ``DailyRollup`` figures: a SELECT of every column (0 for
    the ones it does not produce) grouped by day, store and tier."""
    selected = ",\n       ".join(f"{columns.get(name, '0')} AS {name}" for name in DAILY_COLUMNS)
    return f"SELECT day, store_id, tier_id,\n       {selected}\n{body}\nGROUP BY day, store_id, tier_id"


_PURCHASES = _branch(
    {"purchases": "COUNT(*)", "sales_amount": "SUM(amount)"},
    """FROM (SELECT (p.paid_at AT TIME ZONE %(tz)s)::date AS day, p.store_id, p.tier_id, p.amount
      FROM points_purchase p
      WHERE p.member_id IS NOT NULL AND p.paid_at >= %(lo)s AND p.paid_at < %(hi)s) x""",
)
_REFUNDS = _branch(
    {"refunds_amount": "SUM(amount)"},
    """FROM (SELECT (r.created_at AT TIME ZONE %(tz)s)::date AS day, p.store_id, p.tier_id, r.amount
      FROM points_refund r JOIN points_purchase p ON p.id = r.purchase_id
      WHERE p.member_id IS NOT NULL AND r.created_at >= %(lo)s AND r.created_at < %(hi)s) x""",
)
_MEMBER_EVENTS = _branch(
    {
        "points_issued": "COALESCE(SUM(points) FILTER (WHERE kind IN ('earn', 'bonus') OR (kind = 'adjust' AND points > 0)), 0)",
        "points_redeemed": "COALESCE(-SUM(points) FILTER (WHERE kind = 'redeem'), 0)",
        "points_expired": "COALESCE(-SUM(points) FILTER (WHERE kind = 'expire'), 0)",
        "points_reversed": "COALESCE(-SUM(points) FILTER (WHERE kind = 'reverse'), 0)",
        "points_adjusted_out": "COALESCE(-SUM(points) FILTER (WHERE kind = 'adjust' AND points < 0), 0)",
        "coupons_issued": "COUNT(*) FILTER (WHERE kind = 'coupon_issued')",
        "coupons_written_off": (
            "COUNT(*) FILTER (WHERE kind = 'coupon_written_off') - COUNT(*) FILTER (WHERE kind = 'coupon_restored')"
        ),
        "coupons_expired": "COUNT(*) FILTER (WHERE kind = 'coupon_expired')",
    },
    """FROM (SELECT (ev.at AT TIME ZONE %(tz)s)::date AS day, m.registration_store_id AS store_id,
             CASE WHEN ev.member_id IS NOT NULL THEN COALESCE(et.tier_before, m.tier_id) END AS tier_id,
             ev.kind, ev.points
      FROM events ev
      LEFT JOIN members_member m ON m.id = ev.member_id
      LEFT JOIN event_tiers et ON et.src = ev.src AND et.id = ev.id) x""",
)
_TIER_MOVES = _branch(
    {"upgrades": "COUNT(*) FILTER (WHERE to_rank > from_rank)", "downgrades": "COUNT(*) FILTER (WHERE to_rank < from_rank)"},
    """FROM (SELECT (tc.created_at AT TIME ZONE %(tz)s)::date AS day, m.registration_store_id AS store_id,
             tc.to_tier_id AS tier_id, ft.rank AS from_rank, tt.rank AS to_rank
      FROM members_tierchange tc
      JOIN members_tier ft ON ft.id = tc.from_tier_id
      JOIN members_tier tt ON tt.id = tc.to_tier_id
      JOIN members_member m ON m.id = tc.member_id
      WHERE tc.created_at >= %(lo)s AND tc.created_at < %(hi)s) x""",
)
_SUMS = ",\n       ".join(f"SUM({name})" for name in DAILY_COLUMNS)

_DAILY_SQL = f"""
INSERT INTO reports_dailyrollup (day, store_id, tier_id, {", ".join(DAILY_COLUMNS)})
WITH changes AS (
    -- The tier a member held at a moment is the one before their first tier
    -- change at or after it (its from_tier; to_tier for the enrolment), or
    -- their current tier when nothing changed since: only changes from the
    -- start of the range on can decide it.
    SELECT member_id, created_at, id, COALESCE(from_tier_id, to_tier_id) AS tier_before
    FROM members_tierchange WHERE created_at >= %(lo)s
), events AS (
    SELECT 'e' AS src, e.id, e.member_id, e.created_at AS at, e.kind::text AS kind, e.points
    FROM points_pointsentry e WHERE e.created_at >= %(lo)s AND e.created_at < %(hi)s
    UNION ALL
    SELECT 'c', c.id, c.member_id, c.issued_at, 'coupon_issued', 0
    FROM campaigns_coupon c WHERE c.issued_at >= %(lo)s AND c.issued_at < %(hi)s
    UNION ALL
    SELECT 'v', v.id, c.member_id, v.created_at, 'coupon_' || v.kind, 0
    FROM campaigns_couponevent v JOIN campaigns_coupon c ON c.id = v.coupon_id
    WHERE v.kind IN ('written_off', 'restored', 'expired') AND v.created_at >= %(lo)s AND v.created_at < %(hi)s
), event_tiers AS (
    SELECT DISTINCT ON (ev.src, ev.id) ev.src, ev.id, ch.tier_before
    FROM events ev JOIN changes ch ON ch.member_id = ev.member_id AND ch.created_at >= ev.at
    ORDER BY ev.src, ev.id, ch.created_at, ch.id
)
SELECT day, store_id, tier_id,
       {_SUMS}
FROM (
{_PURCHASES}
UNION ALL
{_REFUNDS}
UNION ALL
{_MEMBER_EVENTS}
UNION ALL
{_TIER_MOVES}
) cells
GROUP BY day, store_id, tier_id
"""

_EXPIRY_COHORT_SQL = """
INSERT INTO reports_expirycohortrollup (day, cohort, points)
SELECT (e.created_at AT TIME ZONE %(tz)s)::date, date_trunc('month', l.earned_at AT TIME ZONE %(tz)s)::date,
       -SUM(a.points)
FROM points_pointsentry e
JOIN points_pointsallocation a ON a.entry_id = e.id
JOIN points_pointslot l ON l.id = a.lot_id
WHERE e.kind = 'expire' AND e.created_at >= %(lo)s AND e.created_at < %(hi)s
GROUP BY 1, 2
"""

_ACTIVITY_TOUCHED = """
SELECT DISTINCT member_id FROM points_purchase
WHERE member_id IS NOT NULL AND paid_at >= %(lo)s AND paid_at < %(hi)s
"""
_ACTIVITY_DELETE_SQL = f"""
DELETE FROM reports_monthlymemberactivity
WHERE month = %(month)s AND member_id IN ({_ACTIVITY_TOUCHED})
"""
# A member's whole month is recounted (purchases of other days included), up to the built boundary.
_ACTIVITY_INSERT_SQL = f"""
INSERT INTO reports_monthlymemberactivity (month, member_id, store_id, tier_id, purchases)
SELECT %(month)s, p.member_id, p.store_id, p.tier_id, COUNT(*)
FROM points_purchase p
WHERE p.member_id IN ({_ACTIVITY_TOUCHED}) AND p.paid_at >= %(month_lo)s AND p.paid_at < %(bound)s
GROUP BY p.member_id, p.store_id, p.tier_id
"""

_DAYS_MARK_SQL = """
INSERT INTO reports_rollupday (day, built_at)
SELECT d::date, %(built_at)s FROM generate_series(%(first)s::date, %(last)s::date, interval '1 day') AS d
ON CONFLICT (day) DO UPDATE SET built_at = EXCLUDED.built_at
"""

# Month-end figures per member, then summed over every combination of store
# and tier. Each stock is the current state minus what happened since as_of.
_MONTHLY_SQL = """
INSERT INTO reports_monthlyrollup (
    month, scope, store_id, tier_id, new_members, members_at_month_end, active_members, repeat_members,
    points_outstanding, points_expiring_next_month, sleeping_members, churned_members, as_of, built_at
)
WITH later_changes AS (
    SELECT DISTINCT ON (member_id) member_id, COALESCE(from_tier_id, to_tier_id) AS tier_id
    FROM members_tierchange WHERE created_at >= %(as_of)s
    ORDER BY member_id, created_at, id
), later_points AS (
    SELECT member_id, SUM(points) AS points FROM points_pointsentry WHERE created_at >= %(as_of)s GROUP BY member_id
), expiring_now AS (
    SELECT member_id, SUM(remaining) AS points FROM points_pointslot
    WHERE remaining > 0 AND expires_at >= %(next_lo)s AND expires_at < %(next_hi)s AND earned_at < %(as_of)s
    GROUP BY member_id
), expiring_moved AS (
    -- Drawn (negative) from or returned (positive) to those lots since as_of.
    SELECT l.member_id, SUM(a.points) AS points
    FROM points_pointsentry e
    JOIN points_pointsallocation a ON a.entry_id = e.id
    JOIN points_pointslot l ON l.id = a.lot_id
    WHERE e.created_at >= %(as_of)s
      AND l.expires_at >= %(next_lo)s AND l.expires_at < %(next_hi)s AND l.earned_at < %(as_of)s
    GROUP BY l.member_id
), last_bought AS (
    -- Latest purchase within the churn window not fully refunded by as_of.
    -- (Anonymous receipts form a NULL group that joins no member: filtering
    -- them here would make the planner read the member index too.)
    SELECT p.member_id, MAX(p.paid_at) AS paid_at
    FROM points_purchase p
    WHERE p.paid_at >= %(churn_from)s AND p.paid_at < %(as_of)s
      AND (p.refunded_amount < p.amount
           OR p.amount > (SELECT COALESCE(SUM(r.amount), 0) FROM points_refund r
                          WHERE r.purchase_id = p.id AND r.created_at < %(as_of)s))
    GROUP BY p.member_id
), state AS (
    SELECT m.registration_store_id AS store_id,
           COALESCE(c.tier_id, m.tier_id) AS tier_id,
           m.created_at >= %(month_lo)s AND m.created_at < %(as_of)s AS is_new,
           m.closed_at IS NULL OR m.closed_at >= %(as_of)s AS is_open,
           m.created_at < %(as_of)s AND (m.closed_at IS NULL OR m.closed_at >= %(as_of)s) AS is_member,
           COALESCE(a.balance, 0) - COALESCE(lp.points, 0) AS balance,
           COALESCE(en.points, 0) - COALESCE(em.points, 0) AS expiring,
           CASE
             WHEN m.created_at >= %(new_from)s THEN 'new'
             WHEN b.paid_at >= %(active_from)s THEN 'active'
             WHEN b.paid_at IS NOT NULL THEN 'sleeping'
             WHEN m.created_at < %(churn_from)s THEN 'churned'
             WHEN EXISTS (
               SELECT 1 FROM points_purchase q
               WHERE q.member_id = m.id AND q.paid_at < %(churn_from)s
                 AND (q.refunded_amount < q.amount
                      OR q.amount > (SELECT COALESCE(SUM(r.amount), 0) FROM points_refund r
                                     WHERE r.purchase_id = q.id AND r.created_at < %(as_of)s))
             ) THEN 'churned'
             ELSE 'sleeping'
           END AS stage
    FROM members_member m
    LEFT JOIN later_changes c ON c.member_id = m.id
    LEFT JOIN points_pointsaccount a ON a.member_id = m.id
    LEFT JOIN later_points lp ON lp.member_id = m.id
    LEFT JOIN expiring_now en ON en.member_id = m.id
    LEFT JOIN expiring_moved em ON em.member_id = m.id
    LEFT JOIN last_bought b ON b.member_id = m.id
), member_cells AS (
    SELECT GROUPING(store_id, tier_id) AS g, store_id, tier_id,
           COUNT(*) FILTER (WHERE is_new) AS new_members,
           COUNT(*) FILTER (WHERE is_member) AS members,
           COALESCE(SUM(balance) FILTER (WHERE is_open), 0) AS outstanding,
           COALESCE(SUM(expiring) FILTER (WHERE is_open), 0) AS expiring,
           COUNT(*) FILTER (WHERE is_member AND stage = 'sleeping') AS sleeping,
           COUNT(*) FILTER (WHERE is_member AND stage = 'churned') AS churned
    FROM state
    GROUP BY GROUPING SETS ((store_id, tier_id), (store_id), (tier_id), ())
), activity AS (
    SELECT member_id, store_id, tier_id, purchases FROM reports_monthlymemberactivity WHERE month = %(month)s
), activity_cells AS (
    -- Distinct members per cell: activity rows are unique per (member, store,
    -- tier); the coarser cells first add up each member's purchases.
    SELECT 0 AS g, store_id, tier_id, COUNT(*) AS active, COUNT(*) FILTER (WHERE purchases >= 2) AS repeat
    FROM activity GROUP BY store_id, tier_id
    UNION ALL
    SELECT 1, store_id, NULL, COUNT(*), COUNT(*) FILTER (WHERE n >= 2)
    FROM (SELECT member_id, store_id, SUM(purchases) AS n FROM activity GROUP BY member_id, store_id) x
    GROUP BY store_id
    UNION ALL
    SELECT 2, NULL, tier_id, COUNT(*), COUNT(*) FILTER (WHERE n >= 2)
    FROM (SELECT member_id, tier_id, SUM(purchases) AS n FROM activity GROUP BY member_id, tier_id) x
    GROUP BY tier_id
    UNION ALL
    SELECT 3, NULL, NULL, COUNT(*), COUNT(*) FILTER (WHERE n >= 2)
    FROM (SELECT member_id, SUM(purchases) AS n FROM activity GROUP BY member_id) x
), cells AS (
    SELECT COALESCE(mc.g, ac.g) AS g,
           COALESCE(mc.store_id, ac.store_id) AS store_id,
           COALESCE(mc.tier_id, ac.tier_id) AS tier_id,
           COALESCE(mc.new_members, 0) AS new_members, COALESCE(mc.members, 0) AS members,
           COALESCE(ac.active, 0) AS active, COALESCE(ac.repeat, 0) AS repeat,
           COALESCE(mc.outstanding, 0) AS outstanding, COALESCE(mc.expiring, 0) AS expiring,
           COALESCE(mc.sleeping, 0) AS sleeping, COALESCE(mc.churned, 0) AS churned
    FROM member_cells mc
    FULL JOIN activity_cells ac
      ON ac.g = mc.g AND COALESCE(ac.store_id, 0) = COALESCE(mc.store_id, 0)
     AND COALESCE(ac.tier_id, 0) = COALESCE(mc.tier_id, 0)
)
SELECT %(month)s, CASE g WHEN 0 THEN 'store_tier' WHEN 1 THEN 'store' WHEN 2 THEN 'tier' ELSE 'all' END,
       store_id, tier_id, new_members, members, active, repeat, outstanding, expiring, sleeping, churned,
       %(as_of)s, %(built_at)s
FROM cells
-- Members without a registration store, and purchases without a tier, are
-- in the totals only: no store (or tier) row can be asked for them.
WHERE NOT (g IN (0, 1) AND store_id IS NULL) AND NOT (g IN (0, 2) AND tier_id IS NULL)
"""

# A month's figures change when a row dated before its as_of arrives.
_MONTH_CHANGED_SQL = "SELECT " + "\n    OR ".join(
    f"EXISTS (SELECT 1 FROM {_arrived_sql(name)} x WHERE at < %(as_of)s)" for name in MONTH_TABLES
)

_COHORT_SQL = """
INSERT INTO reports_cohortactivity (cohort, month, members)
SELECT date_trunc('month', m.created_at AT TIME ZONE %(tz)s)::date, %(month)s, COUNT(DISTINCT a.member_id)
FROM reports_monthlymemberactivity a JOIN members_member m ON m.id = a.member_id
WHERE a.month = %(month)s
GROUP BY 1
"""


# -----------------------------------------------------------------------------
# Building
# -----------------------------------------------------------------------------
@dataclass
class RollupResult:
    days: list[date] = field(default_factory=list)
    months: list[date] = field(default_factory=list)
    months_unchanged: list[date] = field(default_factory=list)
    seconds: float = 0.0
    max_day_run_seconds: float = 0.0
    max_month_seconds: float = 0.0


def _first_data_day(cursor: Any) -> date | None:
    cursor.execute(_FIRST_DAY_SQL, {"tz": _tz()})
    return cursor.fetchone()[0]


def _dirty_days(cursor: Any, previous: dict[str, Any]) -> set[date]:
    watermarks = previous.get("watermarks") or {}
    if not previous.get("started_at") or set(watermarks) != set(DATED_TABLES):
        return set()
    since = datetime.fromisoformat(previous["started_at"]) - WATERMARK_MARGIN
    cursor.execute(
        _DIRTY_DAYS_SQL,
        {
            "tz": _tz(),
            "since": since,
            "claims_from": since - timedelta(days=settings.LOYALTY_CLAIM_WINDOW_DAYS + 1),
            **watermarks,
        },
    )
    return {row[0] for row in cursor.fetchall()}


def _build_day_run(cursor: Any, *, first: date, end: date, bound: datetime, built_at: datetime) -> None:
    """Rebuild the daily rows of local days [first, end) (one month at most)
    and the month's activity of the members who bought on them."""
    month = month_first(first)
    params = {
        "tz": _tz(),
        "lo": local_midnight(first),
        "hi": local_midnight(end),
        "month": month,
        "month_lo": local_midnight(month),
        "bound": min(local_midnight(month_next(month)), bound),
        "first": first,
        "last": end - timedelta(days=1),
        "built_at": built_at,
    }
    cursor.execute("SET LOCAL work_mem = %s", [BUILD_WORK_MEM])
    cursor.execute("DELETE FROM reports_dailyrollup WHERE day >= %(first)s AND day <= %(last)s", params)
    cursor.execute(_DAILY_SQL, params)
    cursor.execute("DELETE FROM reports_expirycohortrollup WHERE day >= %(first)s AND day <= %(last)s", params)
    cursor.execute(_EXPIRY_COHORT_SQL, params)
    cursor.execute(_ACTIVITY_DELETE_SQL, params)
    cursor.execute(_ACTIVITY_INSERT_SQL, params)
    cursor.execute(_DAYS_MARK_SQL, params)


def lifecycle_thresholds(as_of: datetime) -> dict[str, datetime]:
    """The instants that split lifecycle stages as of ``as_of`` (a local
    midnight), in local calendar days as ``campaigns.services.segments``
    counts them: new if registered on or after ``new_from``; otherwise active
    if the last purchase is on or after ``active_from``, sleeping if on or
    after ``churn_from``, churned before (never bought: churned if registered
    before ``churn_from``, else sleeping)."""
    today = timezone.localdate(as_of, timezone.get_default_timezone())
    return {
        "new_from": local_midnight(today - timedelta(days=settings.LOYALTY_LIFECYCLE_NEW_DAYS)),
        "active_from": local_midnight(today - timedelta(days=settings.LOYALTY_LIFECYCLE_SLEEPING_DAYS - 1)),
        "churn_from": local_midnight(today - timedelta(days=settings.LOYALTY_LIFECYCLE_CHURNED_DAYS - 1)),
    }


def _month_unchanged(cursor: Any, *, month: date, as_of: datetime) -> bool:
    """Whether the month's rollups, computed as of ``as_of`` already, would
    come out the same: no row dated before ``as_of`` arrived since."""
    state = RollupMonth.objects.filter(month=month, as_of=as_of).first()
    if state is None or set(state.watermarks) != set(MONTH_TABLES):
        return False
    cursor.execute(_MONTH_CHANGED_SQL, {"as_of": as_of, **state.watermarks})
    return not cursor.fetchone()[0]


def _build_month(cursor: Any, *, month: date, as_of: datetime, built_at: datetime) -> None:
    month_lo, next_lo = month_bounds(month)
    params = {
        "tz": _tz(),
        "month": month,
        "month_lo": month_lo,
        "as_of": as_of,
        "next_lo": next_lo,
        "next_hi": local_midnight(month_next(month_next(month))),
        "built_at": built_at,
        **lifecycle_thresholds(as_of),
    }
    # Read before computing: a row committed meanwhile is looked at again next time.
    cursor.execute(_watermarks_sql(MONTH_TABLES))
    watermarks = dict(zip(MONTH_TABLES, cursor.fetchone(), strict=True))
    cursor.execute("SET LOCAL work_mem = %s", [BUILD_WORK_MEM])
    cursor.execute("DELETE FROM reports_monthlyrollup WHERE month = %(month)s", params)
    cursor.execute(_MONTHLY_SQL, params)
    cursor.execute("DELETE FROM reports_cohortactivity WHERE month = %(month)s", params)
    cursor.execute(_COHORT_SQL, params)
    RollupMonth.objects.update_or_create(
        month=month, defaults={"as_of": as_of, "built_at": built_at, "watermarks": watermarks}
    )


def rollups_build(*, until: date | None = None, since: date | None = None) -> RollupResult:
    """Build the report rollups of every local day before ``until`` (exclusive;
    today, the default, is also the latest allowed: only whole days are
    built): the days not built yet, the last ``SAFETY_DAYS`` days and the
    dirty days (see the module docstring); with ``since``, every day from
    ``since`` on is rebuilt. Then the monthly rollups of every month from the
    earliest rebuilt day's to ``until``'s, except a month already computed as
    of the same moment that no row dated before that moment has reached since
    (``result.months_unchanged``; usually last month, on the 2nd).

    Safe to re-run: each run of days and each month is replaced in one
    transaction (delete + insert). Must not run twice at once (the task and
    the commands hold ``single_instance``). Raises nothing of its own."""
    started = timezone.now()
    started_clock = clock.monotonic()
    today = timezone.localdate()
    until = min(until or today, today)
    previous = Heartbeat.objects.filter(name=HEARTBEAT_NAME).first()
    previous_detail = previous.detail if previous is not None else {}
    result = RollupResult()
    with connection.cursor() as cursor:
        cursor.execute(_watermarks_sql(DATED_TABLES))
        watermarks = dict(zip(DATED_TABLES, cursor.fetchone(), strict=True))
        first_day = _first_data_day(cursor)
        dirty = _dirty_days(cursor, previous_detail)
        cursor.execute("SELECT MAX(day) FROM reports_rollupday")
        (last_built,) = cursor.fetchone()
    # Built days made dirty that this run does not reach (``until`` in the
    # past): the next run must still find them, so the previous watermarks stay.
    seen_from = started.isoformat()
    if last_built is not None and any(until <= day <= last_built for day in dirty):
        watermarks, seen_from = previous_detail["watermarks"], previous_detail["started_at"]
    days: set[date] = set()
    # Months from this one on are recomputed whatever their state (their days
    # were new or dirty: the month-end figures of every later month move too).
    changed_from: date | None = None
    if first_day is not None and first_day < until:
        changed = {day for day in dirty if first_day <= day < until}
        if since is not None:
            changed |= set(_days(max(since, first_day), until))
            days = set(changed)
        else:
            built = set(RollupDay.objects.filter(day__gte=first_day, day__lt=until).values_list("day", flat=True))
            changed |= {day for day in _days(first_day, until) if day not in built}
            safety = {until - timedelta(days=n) for n in range(1, SAFETY_DAYS + 1)}
            days = changed | {day for day in safety if first_day <= day}
        changed_from = month_first(min(changed)) if changed else None
    if days:
        # Days after ``until`` built by an earlier run stay built: the boundary
        # of the current month's figures is the latest built day's end.
        through = max(until, last_built + timedelta(days=1)) if last_built else until
        bound = local_midnight(through)
        for first, end in _runs(days):
            run_started = clock.monotonic()
            with transaction.atomic(), connection.cursor() as cursor:
                _build_day_run(cursor, first=first, end=end, bound=bound, built_at=started)
            result.max_day_run_seconds = max(result.max_day_run_seconds, clock.monotonic() - run_started)
        result.days = sorted(days)
        for month in months_between(min(days), until - timedelta(days=1)):
            as_of = min(local_midnight(month_next(month)), bound)
            with transaction.atomic(), connection.cursor() as cursor:
                if (changed_from is None or month < changed_from) and _month_unchanged(
                    cursor, month=month, as_of=as_of
                ):
                    result.months_unchanged.append(month)
                    continue
                month_started = clock.monotonic()
                _build_month(cursor, month=month, as_of=as_of, built_at=started)
            result.months.append(month)
            result.max_month_seconds = max(result.max_month_seconds, clock.monotonic() - month_started)
    result.seconds = clock.monotonic() - started_clock
    Heartbeat.objects.update_or_create(
        name=HEARTBEAT_NAME,
        defaults={
            "at": timezone.now(),
            "detail": {
                "started_at": seen_from,
                "until": until.isoformat(),
                "watermarks": watermarks,
                "days": len(result.days),
                "months": [month.isoformat() for month in result.months],
                "months_unchanged": [month.isoformat() for month in result.months_unchanged],
                "seconds": round(result.seconds, 3),
            },
        },
    )
    logger.info(
        "report rollups until %s: %s days, %s months in %.2f s", until, len(result.days), len(result.months), result.seconds
    )
    return result


# -----------------------------------------------------------------------------
# Snapshots
# -----------------------------------------------------------------------------
@transaction.atomic
def kpi_snapshot_build(*, month: date) -> MonthlyKpiSnapshot:
    """Record the report of ``month`` (any day of it) as built now from the
    rollups, replacing an earlier snapshot of the month. Build the rollups
    first (``rollups_build``); raises nothing of its own. Reads the primary,
    which it writes: never a replica that may not have the rollups just built."""
    from reports.selectors import report_data

    month = month_first(month)
    data = report_data(month=month, using=DEFAULT_DB_ALIAS)
    snapshot, _ = MonthlyKpiSnapshot.objects.update_or_create(
        month=month, defaults={"built_at": timezone.now(), "data": data}
    )
    return snapshot
