# ruff: noqa: S608 - SQL here is composed of constant fragments only; every value is a bound parameter.
"""The monthly KPI report: definitions and queries.

All months are ``date`` objects for the 1st of the month; a month is a local
calendar month in ``TIME_ZONE`` (Asia/Shanghai), [start, end) as instants.

Definitions (for month M; "as of" is M's end, or for the current month the
end of the last day the rollups have built, i.e. the end of yesterday):

* ``new_members``: members registered (``created_at``) in M, closed ones included.
* ``members_at_month_end``: members registered before "as of" and not closed
  then (``closed_at`` after it, or never).
* ``active_members``: distinct members with ≥ 1 purchase paid in M.
* ``repeat_rate``: active members with ≥ 2 purchases in M ÷ active members
  (4 places, half up; 0 without active members). Within a store (tier) the
  purchases at that store (in that tier) count.
* ``member_sales``: amount of the members' purchases paid in M minus refunds
  made in M (of member purchases, whenever they were paid): a refund lowers
  the month in which it was made.
* ``purchases``: member purchases paid in M (refunded ones too);
  ``average_order_value`` = member sales ÷ purchases (2 places, half up).
  A receipt claimed later by a member is a member purchase of the month it
  was paid in (the report of that month changes when it is claimed).
* ``points_issued``: earn + bonus + positive adjust entries in M.
  ``points_redeemed``, ``points_expired``: redeem and expire entries, as
  positive numbers. ``points_reversed``: the net of the refunds' reverse
  entries, sign flipped: earned points taken back minus used points given
  back (negative when refunds gave back more than they took). Negative
  adjustments are in none of these four but do lower the outstanding points.
* ``points_outstanding``: sum of the ledger (entries before "as of") of the
  members not closed then, debts included; ``points_liability_cny`` =
  outstanding ÷ ``LOYALTY_POINTS_PER_CNY`` (2 places, half up).
* ``points_expiring_next_month``: points that, as of "as of", remain in lots
  expiring during M+1 (``expires_at`` in [end of M, end of M+1)), of members
  not closed then.
* ``coupons_issued``: coupons issued in M (voided and re-issued ones too, bearer
  coupons in the chain's total); ``coupons_written_off``: write-offs in M minus
  write-offs undone by refunds in M; ``coupons_expired``: expiries in M;
  ``coupon_write_off_rate`` = written off ÷ issued (4 places; 0 without issues).
* ``tier_distribution``: ``{tier code: members at month end}`` by their tier at
  "as of", every tier listed (by rank).
* ``upgrades`` / ``downgrades``: tier changes in M to a higher / lower ranked
  tier, whatever their reason (purchase, evaluation, operator, override ended).
* ``sleeping_members`` / ``churned_members``: members at month end in that
  lifecycle stage, by the rule of ``campaigns.services.segments`` applied as
  of "as of" (its local day: the 1st of M+1 for a past month; today for the
  current month): no purchase (not fully refunded by then) for 90 / 180
  local days, or none at all past the welcome period.

Who counts where ("by store" and "by tier"):

* purchases, sales, refunds, active and repeat members: the store where the
  purchase was made and the tier the member had when it was made;
* member counts (new, at month end, tier distribution, sleeping, churned) and
  the month-end points (outstanding, liability, expiring): the member's
  registration store and their tier at "as of";
* points and coupon movements: the member's registration store and the tier
  they had at the moment of the entry or coupon event;
* upgrades and downgrades: the registration store and the tier moved into.

A member without a registration store, a purchase without a tier and a bearer
coupon count in the totals only. A member's tier at a moment is the one before
their first ``TierChange`` at or after it, or their current tier when none
followed (``TierChange.created_at`` is when the change was recorded).

``kpis_monthly`` reads the rollups (``reports.services.rollups_build``) only;
``kpis_monthly_raw`` computes the same figures from the raw rows with other
SQL, for tests and audits.

Every report selector reads the database named by ``using``: the primary
(``default``) unless the caller passes another alias. The report pages,
exports and API pass ``loyalty.dbrouters.reporting_alias()`` (the reporting
replica when one is configured); the jobs that build rollups and snapshots
read the primary they write. "As of" (``built_through``) is read from the
same database as the figures, so a lagging replica shows figures and the
moment they are as of that agree.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from dateutil.relativedelta import relativedelta
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.models import Max, Q, Sum
from django.db.models.functions import TruncMonth
from django.utils import timezone

from members.models import Member, Store, Tier
from reports.models import (
    CohortActivity,
    DailyRollup,
    ExpiryCohortRollup,
    MonthlyRollup,
    RollupDay,
)
from reports.services import (
    DAILY_COLUMNS,
    local_midnight,
    month_bounds,
    month_first,
    month_next,
)

# The permission to read reports (admin, pages, API); every reporting role has it.
REPORTS_PERMISSION = "reports.view_monthlykpisnapshot"

KPI_NAMES = (
    "new_members",
    "members_at_month_end",
    "active_members",
    "repeat_rate",
    "member_sales",
    "purchases",
    "average_order_value",
    "points_issued",
    "points_redeemed",
    "points_expired",
    "points_reversed",
    "points_outstanding",
    "points_liability_cny",
    "points_expiring_next_month",
    "coupons_issued",
    "coupons_written_off",
    "coupons_expired",
    "coupon_write_off_rate",
    "tier_distribution",
    "upgrades",
    "downgrades",
    "sleeping_members",
    "churned_members",
)

CENT = Decimal("0.01")
RATE = Decimal("0.0001")
STOCK_FIELDS = (
    "new_members",
    "members_at_month_end",
    "active_members",
    "repeat_members",
    "points_outstanding",
    "points_expiring_next_month",
    "sleeping_members",
    "churned_members",
)


# -----------------------------------------------------------------------------
# Arguments and shared arithmetic
# -----------------------------------------------------------------------------
def _store_id(store: Store | str | None, using: str = DEFAULT_DB_ALIAS) -> int | None:
    """A store given as a ``Store`` or its code (``Store.DoesNotExist`` if unknown)."""
    if store is None or isinstance(store, Store):
        return store.pk if store is not None else None
    return Store.objects.using(using).values_list("pk", flat=True).get(code=store)


def _tier_id(tier: Tier | str | None, using: str = DEFAULT_DB_ALIAS) -> int | None:
    """A tier given as a ``Tier`` or its code (``Tier.DoesNotExist`` if unknown)."""
    if tier is None or isinstance(tier, Tier):
        return tier.pk if tier is not None else None
    return Tier.objects.using(using).values_list("pk", flat=True).get(code=tier)


def _ratio(numerator: Any, denominator: Any, places: Decimal) -> Decimal:
    if not denominator:
        return Decimal(0).quantize(places)
    return (Decimal(numerator) / Decimal(denominator)).quantize(places, rounding=ROUND_HALF_UP)


def _tiers(using: str = DEFAULT_DB_ALIAS) -> list[tuple[int, str, str]]:
    return list(Tier.objects.using(using).order_by("rank").values_list("pk", "code", "name"))


def _compose(flows: dict[str, Any], stocks: dict[str, Any], distribution: dict[str, int]) -> dict[str, Any]:
    """The KPI dict of one cell from its summed daily figures, its month
    figures and its tier distribution."""
    purchases = int(flows.get("purchases") or 0)
    sales = (Decimal(flows.get("sales_amount") or 0) - Decimal(flows.get("refunds_amount") or 0)).quantize(CENT)
    outstanding = int(stocks.get("points_outstanding") or 0)
    active = int(stocks.get("active_members") or 0)
    issued = int(flows.get("coupons_issued") or 0)
    written_off = int(flows.get("coupons_written_off") or 0)
    return {
        "new_members": int(stocks.get("new_members") or 0),
        "members_at_month_end": int(stocks.get("members_at_month_end") or 0),
        "active_members": active,
        "repeat_rate": _ratio(stocks.get("repeat_members") or 0, active, RATE),
        "member_sales": sales,
        "purchases": purchases,
        "average_order_value": _ratio(sales, purchases, CENT),
        "points_issued": int(flows.get("points_issued") or 0),
        "points_redeemed": int(flows.get("points_redeemed") or 0),
        "points_expired": int(flows.get("points_expired") or 0),
        "points_reversed": int(flows.get("points_reversed") or 0),
        "points_outstanding": outstanding,
        "points_liability_cny": _ratio(outstanding, settings.LOYALTY_POINTS_PER_CNY, CENT),
        "points_expiring_next_month": int(stocks.get("points_expiring_next_month") or 0),
        "coupons_issued": issued,
        "coupons_written_off": written_off,
        "coupons_expired": int(flows.get("coupons_expired") or 0),
        "coupon_write_off_rate": _ratio(written_off, issued, RATE),
        "tier_distribution": distribution,
        "upgrades": int(flows.get("upgrades") or 0),
        "downgrades": int(flows.get("downgrades") or 0),
        "sleeping_members": int(stocks.get("sleeping_members") or 0),
        "churned_members": int(stocks.get("churned_members") or 0),
    }


def built_through(*, using: str = DEFAULT_DB_ALIAS) -> datetime | None:
    """End of the last day the rollups have built (None before the first
    build), in the database ``using``: on a replica, what it has replayed."""
    last = RollupDay.objects.using(using).aggregate(last=Max("day"))["last"]
    return local_midnight(last + timedelta(days=1)) if last is not None else None


def report_as_of(*, month: date, using: str = DEFAULT_DB_ALIAS) -> datetime:
    """The moment month-end figures of ``month`` are taken at: its end, or the
    end of the last built day while the month is not over."""
    _, end = month_bounds(month)
    through = built_through(using=using)
    return min(end, through) if through is not None else end


# -----------------------------------------------------------------------------
# KPIs from the rollups
# -----------------------------------------------------------------------------
def _scope(store_id: int | None, tier_id: int | None, by: str | None) -> str:
    with_store = store_id is not None or by == "store"
    with_tier = tier_id is not None or by == "tier"
    if with_store and with_tier:
        return MonthlyRollup.Scope.STORE_TIER
    if with_store:
        return MonthlyRollup.Scope.STORE
    if with_tier:
        return MonthlyRollup.Scope.TIER
    return MonthlyRollup.Scope.ALL


def _rollup_kpis(
    months: list[date],
    *,
    store_id: int | None,
    tier_id: int | None,
    by: str | None,
    keys: list[int | None] | None = None,
    using: str = DEFAULT_DB_ALIAS,
) -> dict[tuple[date, int | None], dict[str, Any]]:
    """KPIs of every (month, key) from the rollups, in four queries whatever
    the number of months and keys; a key is a store or tier id when ``by`` is
    "store" or "tier" (``keys``: which ones), else None."""
    tiers = _tiers(using)
    cells: Q = Q()
    if store_id is not None:
        cells &= Q(store_id=store_id)
    if tier_id is not None:
        cells &= Q(tier_id=tier_id)
    key_field = {"store": "store_id", "tier": "tier_id"}.get(by or "")

    group = ["month"] + ([key_field] if key_field else [])
    flows_rows = (
        DailyRollup.objects.using(using)
        .filter(cells, day__gte=min(months), day__lt=month_next(max(months)))
        .annotate(month=TruncMonth("day"))
        .values(*group)
        .annotate(**{name: Sum(name) for name in DAILY_COLUMNS})
        .order_by()
    )
    flows = {(row["month"], row[key_field] if key_field else None): row for row in flows_rows}

    stock_rows = (
        MonthlyRollup.objects.using(using)
        .filter(cells, month__in=months, scope=_scope(store_id, tier_id, by))
        .values("month", "store_id", "tier_id", *STOCK_FIELDS)
    )
    stocks = {(row["month"], row[key_field] if key_field else None): row for row in stock_rows}

    # Tier distribution: members at month end of each tier within the cell.
    if by == "tier":
        dist_rows: Iterable[dict[str, Any]] = stock_rows
    else:
        dist_scope = MonthlyRollup.Scope.STORE_TIER if store_id is not None or by == "store" else MonthlyRollup.Scope.TIER
        dist_rows = (
            MonthlyRollup.objects.using(using)
            .filter(cells, month__in=months, scope=dist_scope)
            .values("month", "store_id", "tier_id", "members_at_month_end")
        )
    distributions: dict[tuple[date, int | None], dict[int, int]] = defaultdict(dict)
    for row in dist_rows:
        distributions[(row["month"], row[key_field] if key_field else None)][row["tier_id"]] = row[
            "members_at_month_end"
        ]

    if keys is None:
        keys = [pk for pk, _, _ in tiers] if by == "tier" else [None]
    result = {}
    for month in months:
        for key in keys:
            members_by_tier = distributions.get((month, key), {})
            distribution = {code: int(members_by_tier.get(pk, 0)) for pk, code, _ in tiers}
            result[(month, key)] = _compose(flows.get((month, key), {}), stocks.get((month, key), {}), distribution)
    return result


def kpis_monthly(
    *,
    month: date,
    store: Store | str | None = None,
    tier: Tier | str | None = None,
    using: str = DEFAULT_DB_ALIAS,
) -> dict[str, Any]:
    """Every KPI of ``month`` (see the module docstring), for the whole chain or
    one store and/or tier (a ``Store``/``Tier`` or its code), from the
    rollups. A month not built yet reads as zeros."""
    month = month_first(month)
    store_id, tier_id = _store_id(store, using), _tier_id(tier, using)
    return _rollup_kpis([month], store_id=store_id, tier_id=tier_id, by=None, using=using)[(month, None)]


def kpis_trend(
    *,
    end_month: date,
    months: int = 13,
    store: Store | str | None = None,
    tier: Tier | str | None = None,
    using: str = DEFAULT_DB_ALIAS,
) -> list[dict[str, Any]]:
    """``{"month": date, **kpis_monthly}`` for the ``months`` months ending with ``end_month``, oldest first."""
    end_month = month_first(end_month)
    span = [end_month - relativedelta(months=offset) for offset in range(months - 1, -1, -1)]
    figures = _rollup_kpis(span, store_id=_store_id(store, using), tier_id=_tier_id(tier, using), by=None, using=using)
    return [{"month": month, **figures[(month, None)]} for month in span]


def kpis_by_store(
    *, month: date, tier: Tier | str | None = None, using: str = DEFAULT_DB_ALIAS
) -> list[dict[str, Any]]:
    """``{"store_code", "store_name", **kpis_monthly}`` for every store, by code."""
    month = month_first(month)
    stores = list(Store.objects.using(using).order_by("code").values_list("pk", "code", "name"))
    figures = _rollup_kpis(
        [month],
        store_id=None,
        tier_id=_tier_id(tier, using),
        by="store",
        keys=[pk for pk, _, _ in stores],
        using=using,
    )
    return [{"store_code": code, "store_name": name, **figures[(month, pk)]} for pk, code, name in stores]


def kpis_by_tier(
    *, month: date, store: Store | str | None = None, using: str = DEFAULT_DB_ALIAS
) -> list[dict[str, Any]]:
    """``{"tier_code", "tier_name", **kpis_monthly}`` for every tier, by rank."""
    month = month_first(month)
    figures = _rollup_kpis([month], store_id=_store_id(store, using), tier_id=None, by="tier", using=using)
    return [{"tier_code": code, "tier_name": name, **figures[(month, pk)]} for pk, code, name in _tiers(using)]


# -----------------------------------------------------------------------------
# The same KPIs straight from the raw rows (independent SQL)
# -----------------------------------------------------------------------------
def _raw_tier_at(member: str, at: str) -> str:
    """SQL for the tier ``member`` had at ``at``: the tier reached by their
    last change before ``at``, else the one they had before their first
    change, else their current tier."""
    return f"""COALESCE(
        (SELECT tc.to_tier_id FROM members_tierchange tc WHERE tc.member_id = {member} AND tc.created_at < {at}
         ORDER BY tc.created_at DESC, tc.id DESC LIMIT 1),
        (SELECT COALESCE(tc.from_tier_id, tc.to_tier_id) FROM members_tierchange tc WHERE tc.member_id = {member}
         ORDER BY tc.created_at, tc.id LIMIT 1),
        (SELECT mm.tier_id FROM members_member mm WHERE mm.id = {member}))"""


def _raw_filter(store_column: str, tier_expression: str, store_id: int | None, tier_id: int | None) -> str:
    sql = ""
    if store_id is not None:
        sql += f" AND {store_column} = %(store_id)s"
    if tier_id is not None:
        sql += f" AND {tier_expression} = %(tier_id)s"
    return sql


def _fetch(sql: str, params: dict[str, Any], using: str = DEFAULT_DB_ALIAS) -> list[tuple[Any, ...]]:
    with connections[using].cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def kpis_monthly_raw(
    *,
    month: date,
    store: Store | str | None = None,
    tier: Tier | str | None = None,
    as_of: datetime | None = None,
) -> dict[str, Any]:
    """``kpis_monthly`` computed from purchases, refunds, ledger entries, lots,
    coupons, tier changes and members directly, with SQL of its own (slow:
    correlated subqueries; for tests and audits). ``as_of`` defaults to the
    month's end, or the last local midnight for the current month."""
    month = month_first(month)
    start, end = month_bounds(month)
    if as_of is None:
        as_of = min(end, local_midnight(timezone.localdate()))
    store_id, tier_id = _store_id(store), _tier_id(tier)
    tz = timezone.get_default_timezone_name()
    today = timezone.localdate(as_of, timezone.get_default_timezone())
    params: dict[str, Any] = {
        "start": start,
        "as_of": as_of,
        "end": end,
        "next_end": local_midnight(month_next(month_next(month))),
        "store_id": store_id,
        "tier_id": tier_id,
        "tz": tz,
        "today": today,
        "new_days": settings.LOYALTY_LIFECYCLE_NEW_DAYS,
        "sleeping_days": settings.LOYALTY_LIFECYCLE_SLEEPING_DAYS,
        "churned_days": settings.LOYALTY_LIFECYCLE_CHURNED_DAYS,
    }
    flows: dict[str, Any] = {}

    # Purchases: the store where made, the tier at purchase.
    purchase_filter = _raw_filter("p.store_id", "p.tier_id", store_id, tier_id)
    member_purchases = (
        "FROM points_purchase p WHERE p.member_id IS NOT NULL AND p.paid_at >= %(start)s AND p.paid_at < %(as_of)s"
        + purchase_filter
    )
    ((count, amount, active),) = _fetch(
        f"SELECT COUNT(*), COALESCE(SUM(p.amount), 0), COUNT(DISTINCT p.member_id) {member_purchases}", params
    )
    ((repeat,),) = _fetch(
        f"SELECT COUNT(*) FROM (SELECT p.member_id {member_purchases} GROUP BY p.member_id HAVING COUNT(*) > 1) x",
        params,
    )
    ((refunded,),) = _fetch(
        "SELECT COALESCE(SUM(r.amount), 0) FROM points_refund r JOIN points_purchase p ON p.id = r.purchase_id "
        "WHERE p.member_id IS NOT NULL AND r.created_at >= %(start)s AND r.created_at < %(as_of)s" + purchase_filter,
        params,
    )
    flows.update(purchases=count, sales_amount=amount, refunds_amount=refunded)

    # Points movements: registration store, tier at the entry.
    entry_filter = _raw_filter("m.registration_store_id", _raw_tier_at("e.member_id", "e.created_at"), store_id, tier_id)
    by_kind = {
        kind: (int(gains or 0), int(losses or 0))
        for kind, gains, losses in _fetch(
            "SELECT e.kind, SUM(e.points) FILTER (WHERE e.points > 0), SUM(e.points) FILTER (WHERE e.points < 0) "
            "FROM points_pointsentry e JOIN members_member m ON m.id = e.member_id "
            "WHERE e.created_at >= %(start)s AND e.created_at < %(as_of)s" + entry_filter + " GROUP BY e.kind",
            params,
        )
    }
    flows["points_issued"] = sum(by_kind.get(kind, (0, 0))[0] for kind in ("earn", "bonus", "adjust"))
    flows["points_redeemed"] = -by_kind.get("redeem", (0, 0))[1]
    flows["points_expired"] = -by_kind.get("expire", (0, 0))[1]
    flows["points_reversed"] = -sum(by_kind.get("reverse", (0, 0)))

    # Coupons: registration store, tier at the event; bearer coupons in the total only.
    ((coupons_issued,),) = _fetch(
        "SELECT COUNT(*) FROM campaigns_coupon c LEFT JOIN members_member m ON m.id = c.member_id "
        "WHERE c.issued_at >= %(start)s AND c.issued_at < %(as_of)s"
        + _raw_filter("m.registration_store_id", _raw_tier_at("c.member_id", "c.issued_at"), store_id, tier_id),
        params,
    )
    coupon_events = dict(
        _fetch(
            "SELECT v.kind, COUNT(*) FROM campaigns_couponevent v JOIN campaigns_coupon c ON c.id = v.coupon_id "
            "LEFT JOIN members_member m ON m.id = c.member_id "
            "WHERE v.created_at >= %(start)s AND v.created_at < %(as_of)s "
            "AND v.kind IN ('written_off', 'restored', 'expired')"
            + _raw_filter("m.registration_store_id", _raw_tier_at("c.member_id", "v.created_at"), store_id, tier_id)
            + " GROUP BY v.kind",
            params,
        )
    )
    flows["coupons_issued"] = coupons_issued
    flows["coupons_written_off"] = coupon_events.get("written_off", 0) - coupon_events.get("restored", 0)
    flows["coupons_expired"] = coupon_events.get("expired", 0)

    # Tier moves: registration store, the tier moved into.
    ((upgrades, downgrades),) = _fetch(
        "SELECT COALESCE(SUM(CASE WHEN t.rank > f.rank THEN 1 ELSE 0 END), 0), "
        "COALESCE(SUM(CASE WHEN t.rank < f.rank THEN 1 ELSE 0 END), 0) "
        "FROM members_tierchange tc JOIN members_tier f ON f.id = tc.from_tier_id "
        "JOIN members_tier t ON t.id = tc.to_tier_id JOIN members_member m ON m.id = tc.member_id "
        "WHERE tc.created_at >= %(start)s AND tc.created_at < %(as_of)s"
        + _raw_filter("m.registration_store_id", "tc.to_tier_id", store_id, tier_id),
        params,
    )
    flows.update(upgrades=upgrades, downgrades=downgrades)

    # Members and month-end points: registration store, tier at as_of.
    members_cte = (
        "WITH mem AS (SELECT m.id, m.created_at, m.closed_at, m.registration_store_id AS store_id, "
        + _raw_tier_at("m.id", "%(as_of)s")
        + " AS tier_id, (m.closed_at IS NULL OR m.closed_at >= %(as_of)s) AS is_open FROM members_member m) "
    )
    member_filter = _raw_filter("mem.store_id", "mem.tier_id", store_id, tier_id)
    ((new_members,),) = _fetch(
        members_cte + "SELECT COUNT(*) FROM mem WHERE mem.created_at >= %(start)s AND mem.created_at < %(as_of)s"
        + member_filter,
        params,
    )
    counted = members_cte + "SELECT {columns} FROM mem WHERE mem.is_open AND mem.created_at < %(as_of)s" + member_filter
    by_tier = dict(_fetch(counted.format(columns="mem.tier_id, COUNT(*)") + " GROUP BY mem.tier_id", params))
    ((outstanding,),) = _fetch(
        members_cte + "SELECT COALESCE(SUM(e.points), 0) FROM points_pointsentry e JOIN mem ON mem.id = e.member_id "
        "WHERE mem.is_open AND e.created_at < %(as_of)s" + member_filter,
        params,
    )
    ((expiring,),) = _fetch(
        members_cte
        + "SELECT COALESCE(SUM(l.original + COALESCE((SELECT SUM(a.points) FROM points_pointsallocation a "
        "JOIN points_pointsentry ae ON ae.id = a.entry_id WHERE a.lot_id = l.id AND ae.created_at < %(as_of)s), 0)), 0) "
        "FROM points_pointslot l JOIN points_pointsentry oe ON oe.id = l.entry_id JOIN mem ON mem.id = l.member_id "
        "WHERE mem.is_open AND oe.created_at < %(as_of)s AND l.expires_at >= %(end)s AND l.expires_at < %(next_end)s"
        + member_filter,
        params,
    )
    stages = dict(
        _fetch(
            members_cte
            + """, last AS (
                SELECT mem.created_at,
                       (SELECT MAX(p.paid_at) FROM points_purchase p
                        WHERE p.member_id = mem.id AND p.paid_at < %(as_of)s
                          AND p.amount > COALESCE((SELECT SUM(r.amount) FROM points_refund r
                                                   WHERE r.purchase_id = p.id AND r.created_at < %(as_of)s), 0)
                       ) AS paid_at
                FROM mem WHERE mem.is_open AND mem.created_at < %(as_of)s"""
            + member_filter
            + """)
            SELECT CASE
                     WHEN %(today)s - (created_at AT TIME ZONE %(tz)s)::date <= %(new_days)s THEN 'new'
                     WHEN paid_at IS NULL THEN
                       CASE WHEN %(today)s - (created_at AT TIME ZONE %(tz)s)::date >= %(churned_days)s
                            THEN 'churned' ELSE 'sleeping' END
                     WHEN %(today)s - (paid_at AT TIME ZONE %(tz)s)::date >= %(churned_days)s THEN 'churned'
                     WHEN %(today)s - (paid_at AT TIME ZONE %(tz)s)::date >= %(sleeping_days)s THEN 'sleeping'
                     ELSE 'active'
                   END AS stage, COUNT(*)
            FROM last GROUP BY 1""",
            params,
        )
    )
    active_count, repeat_count = active, repeat
    stocks = {
        "new_members": new_members,
        "members_at_month_end": sum(by_tier.values()),
        "active_members": active_count,
        "repeat_members": repeat_count,
        "points_outstanding": outstanding,
        "points_expiring_next_month": expiring,
        "sleeping_members": stages.get("sleeping", 0),
        "churned_members": stages.get("churned", 0),
    }
    distribution = {code: int(by_tier.get(pk, 0)) for pk, code, _ in _tiers()}
    return _compose(flows, stocks, distribution)


# -----------------------------------------------------------------------------
# Other report tables
# -----------------------------------------------------------------------------
def tier_movement_matrix(
    *, month: date, store: Store | str | None = None, using: str = DEFAULT_DB_ALIAS
) -> list[dict[str, Any]]:
    """Members who moved from one tier to another in ``month`` (up to its
    "as of"): ``{"from": code or None (enrolment), "to": code, "members": n}``,
    by from rank then to rank; optionally for members registered at ``store``."""
    month = month_first(month)
    start, _ = month_bounds(month)
    store_id = _store_id(store, using)
    rows = _fetch(
        "SELECT f.code, t.code, COUNT(DISTINCT tc.member_id) FROM members_tierchange tc "
        "LEFT JOIN members_tier f ON f.id = tc.from_tier_id JOIN members_tier t ON t.id = tc.to_tier_id "
        "JOIN members_member m ON m.id = tc.member_id "
        "WHERE tc.created_at >= %(start)s AND tc.created_at < %(as_of)s"
        + (" AND m.registration_store_id = %(store_id)s" if store_id is not None else "")
        + " GROUP BY f.code, f.rank, t.code, t.rank ORDER BY f.rank NULLS FIRST, t.rank",
        {"start": start, "as_of": report_as_of(month=month, using=using), "store_id": store_id},
        using,
    )
    return [{"from": from_code, "to": to_code, "members": members} for from_code, to_code, members in rows]


def _cohorts(end_month: date, months: int) -> list[date]:
    end_month = month_first(end_month)
    return [end_month - relativedelta(months=offset) for offset in range(months - 1, -1, -1)]


def cohort_retention(*, end_month: date, months: int = 12, using: str = DEFAULT_DB_ALIAS) -> list[dict[str, Any]]:
    """For each registration month of the ``months`` ending with ``end_month``:
    its size (new members, closed ones included) and, for k = 0, 1, … up to
    ``end_month``, the share of them with a purchase in the k-th month after
    (4 places)."""
    cohorts = _cohorts(end_month, months)
    sizes = dict(
        MonthlyRollup.objects.using(using)
        .filter(month__in=cohorts, scope=MonthlyRollup.Scope.ALL)
        .values_list("month", "new_members")
    )
    active = {
        (cohort, month): members
        for cohort, month, members in CohortActivity.objects.using(using).filter(
            cohort__in=cohorts, month__gte=cohorts[0], month__lte=cohorts[-1]
        ).values_list("cohort", "month", "members")
    }
    result = []
    for index, cohort in enumerate(cohorts):
        size = sizes.get(cohort, 0)
        retention = [_ratio(active.get((cohort, later), 0), size, RATE) for later in cohorts[index:]]
        result.append({"cohort": cohort, "size": size, "retention": retention})
    return result


def breakage_by_cohort(*, end_month: date, months: int = 12, using: str = DEFAULT_DB_ALIAS) -> list[dict[str, Any]]:
    """For each earning month of the ``months`` ending with ``end_month``: points
    issued in it (``points_issued``), points of lots opened in it that expired
    so far (up to the last built day), and their ratio (4 places)."""
    cohorts = _cohorts(end_month, months)
    issued = {
        row["month"]: row["points"]
        for row in DailyRollup.objects.using(using)
        .filter(day__gte=cohorts[0], day__lt=month_next(cohorts[-1]))
        .annotate(month=TruncMonth("day"))
        .values("month")
        .annotate(points=Sum("points_issued"))
        .order_by()
    }
    expired = dict(
        ExpiryCohortRollup.objects.using(using)
        .filter(cohort__in=cohorts)
        .values("cohort")
        .annotate(points=Sum("points"))
        .order_by()
        .values_list("cohort", "points")
    )
    return [
        {
            "cohort": cohort,
            "issued": int(issued.get(cohort) or 0),
            "expired": int(expired.get(cohort) or 0),
            "rate": _ratio(expired.get(cohort) or 0, issued.get(cohort) or 0, RATE),
        }
        for cohort in cohorts
    ]


def coupon_write_off_by_benefit(
    *, month: date, store: Store | str | None = None, using: str = DEFAULT_DB_ALIAS
) -> list[dict[str, Any]]:
    """Per benefit with coupons issued or written off in ``month`` (up to its "as
    of"): ``{"benefit": name, "issued", "written_off", "rate"}`` with the
    definitions of ``coupons_issued`` / ``coupons_written_off``; optionally for
    members registered at ``store``. Sorted by name."""
    month = month_first(month)
    start, _ = month_bounds(month)
    store_id = _store_id(store, using)
    member_join = "LEFT JOIN members_member m ON m.id = c.member_id"
    store_filter = " AND m.registration_store_id = %(store_id)s" if store_id is not None else ""
    rows = _fetch(
        f"""
        WITH issued AS (
            SELECT c.benefit_id, COUNT(*) AS n FROM campaigns_coupon c {member_join}
            WHERE c.issued_at >= %(start)s AND c.issued_at < %(as_of)s{store_filter}
            GROUP BY c.benefit_id
        ), written_off AS (
            SELECT c.benefit_id,
                   COUNT(*) FILTER (WHERE v.kind = 'written_off') - COUNT(*) FILTER (WHERE v.kind = 'restored') AS n
            FROM campaigns_couponevent v JOIN campaigns_coupon c ON c.id = v.coupon_id {member_join}
            WHERE v.kind IN ('written_off', 'restored') AND v.created_at >= %(start)s AND v.created_at < %(as_of)s
            {store_filter}
            GROUP BY c.benefit_id
        )
        SELECT b.name, COALESCE(i.n, 0), COALESCE(w.n, 0)
        FROM issued i FULL JOIN written_off w ON w.benefit_id = i.benefit_id
        JOIN campaigns_benefit b ON b.id = COALESCE(i.benefit_id, w.benefit_id)
        ORDER BY b.name, b.id
        """,
        {"start": start, "as_of": report_as_of(month=month, using=using), "store_id": store_id},
        using,
    )
    return [
        {"benefit": name, "issued": issued, "written_off": written_off, "rate": _ratio(written_off, issued, RATE)}
        for name, issued, written_off in rows
    ]


def campaign_results_for_month(*, month: date, using: str = DEFAULT_DB_ALIAS) -> list[dict[str, Any]]:
    """``{"campaign": name, **campaign_results}`` for every campaign that ran
    during ``month`` (not a draft; started before its end, not ended before
    its start), by start. The results are the campaign's totals to date
    (``campaigns.services.campaigns.campaign_results``): one set of queries
    per campaign, and a month has few campaigns."""
    from campaigns.models import Campaign
    from campaigns.services.campaigns import campaign_results

    start, end = month_bounds(month_first(month))
    campaigns = (
        Campaign.objects.using(using)
        .exclude(status=Campaign.Status.DRAFT)
        .filter(starts_at__lt=end)
        .filter(Q(ends_at__isnull=True) | Q(ends_at__gt=start))
        .order_by("starts_at", "pk")
    )
    return [{"campaign": campaign.name, **campaign_results(campaign=campaign, using=using)} for campaign in campaigns]


RFM_CACHE_SECONDS = 2 * 24 * 3600


def _rfm_figures(*, store_id: int | None, as_of: datetime, using: str) -> dict[str, tuple[Any, ...]]:
    """(members, average recency days, average frequency, average monetary) by group."""
    store_filter = " AND m.registration_store_id = %(store_id)s" if store_id is not None else ""
    params = {
        "store_id": store_id,
        "since": as_of - relativedelta(months=settings.LOYALTY_RFM_MONTHS),
        "as_of": as_of,
        "today": timezone.localdate(as_of, timezone.get_default_timezone()),
        "tz": timezone.get_default_timezone_name(),
    }
    members = {
        group: (count, recency)
        for group, count, recency in _fetch(
            "SELECT m.rfm_group, COUNT(*), AVG(%(today)s - (m.last_purchase_at AT TIME ZONE %(tz)s)::date) "
            "FROM members_member m WHERE m.status <> 'closed' AND m.rfm_group <> ''" + store_filter
            + " GROUP BY m.rfm_group",
            params,
            using,
        )
    }
    # Summed by group directly: a group's average is its total over its members.
    bought = {
        group: (count, amount)
        for group, count, amount in _fetch(
            "SELECT m.rfm_group, COUNT(*), SUM(p.amount - p.refunded_amount) "
            "FROM points_purchase p JOIN members_member m ON m.id = p.member_id "
            "WHERE m.status <> 'closed' AND m.rfm_group <> ''" + store_filter
            + " AND p.refunded_amount < p.amount AND p.paid_at > %(since)s AND p.paid_at <= %(as_of)s"
            " GROUP BY m.rfm_group",
            params,
            using,
        )
    }
    figures = {}
    for group, (count, recency) in members.items():
        purchases, amount = bought.get(group, (0, 0))
        figures[group] = (count, recency, Decimal(purchases) / count, Decimal(amount or 0) / count)
    return figures


def rfm_segment_map(*, store: Store | str | None = None, using: str = DEFAULT_DB_ALIAS) -> list[dict[str, Any]]:
    """Members (not closed) of each RFM group as the nightly segmentation last
    assigned it, with the raw values behind the scores as of that run: local
    days since the last purchase, purchases not fully refunded and net spend
    over ``LOYALTY_RFM_MONTHS`` (averages, 1 / 2 / 2 places; None for an empty
    group). Every group is listed, in the order of ``Member.RfmGroup``;
    optionally for members registered at ``store``.

    The figures only change with a segmentation run, and the chain's take
    seconds at a million members: they are cached per run (and warmed by the
    nightly rollup task)."""
    from django.core.cache import cache

    from loyalty.models import Heartbeat

    beat = Heartbeat.objects.using(using).filter(name="segments_compute").first()
    as_of = datetime.fromisoformat(beat.detail["as_of"]) if beat and beat.detail.get("as_of") else None
    store_id = _store_id(store, using)
    if as_of is None:
        found = _rfm_figures(store_id=store_id, as_of=timezone.now(), using=using)
    else:
        key = f"reports:rfm:{as_of.isoformat()}:{store_id or 'all'}"
        found = cache.get(key)
        if found is None:
            found = _rfm_figures(store_id=store_id, as_of=as_of, using=using)
            cache.set(key, found, RFM_CACHE_SECONDS)

    def rounded(value: Any, places: str) -> Decimal | None:
        return None if value is None else Decimal(value).quantize(Decimal(places), rounding=ROUND_HALF_UP)

    result = []
    for group in Member.RfmGroup:
        members, recency, frequency, monetary = found.get(group.value, (0, None, None, None))
        result.append(
            {
                "group": group.value,
                "label": str(group.label),
                "members": members,
                "avg_recency_days": rounded(recency, "0.1"),
                "avg_frequency": rounded(frequency, "0.01"),
                "avg_monetary": rounded(monetary, "0.01"),
            }
        )
    return result


def report_data(*, month: date, using: str = DEFAULT_DB_ALIAS) -> dict[str, Any]:
    """Everything the monthly report shows for ``month``, as recorded in a
    ``MonthlyKpiSnapshot`` (JSON-able with ``DjangoJSONEncoder``)."""
    month = month_first(month)
    return {
        "month": month.strftime("%Y-%m"),
        "as_of": report_as_of(month=month, using=using),
        "kpis": kpis_monthly(month=month, using=using),
        "by_store": kpis_by_store(month=month, using=using),
        "by_tier": kpis_by_tier(month=month, using=using),
        "tier_movement": tier_movement_matrix(month=month, using=using),
        "coupon_write_off_by_benefit": coupon_write_off_by_benefit(month=month, using=using),
        "campaigns": campaign_results_for_month(month=month, using=using),
        "cohort_retention": cohort_retention(end_month=month, using=using),
        "breakage_by_cohort": breakage_by_cohort(end_month=month, using=using),
    }

