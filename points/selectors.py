"""Reads of balances, ledger and lots."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import django_filters
from django.db import connection
from django.db.models import QuerySet
from django.utils import timezone

from loyalty.sql import execute
from members.models import Member, Store
from points.models import PointsEntry, PointsLot

EXPIRING_WINDOW_DAYS = 30

# The summary as columns keyed on ``t0.id`` (the member's id): appended to the
# member's own row where the member is looked up (identify: one round trip,
# ``loyalty.sql.select_one_with``), or read alone from a one-row ``t0``.
# The open lots that expire by the end of the window, in one scan of the
# open-lots index, as [expiry in epoch microseconds, remaining, 1 if pending]:
# those already past their expiry (not yet taken by the nightly job) and those
# expiring within the window are told apart in Python.
_SUMMARY_COLUMNS = """
(SELECT ARRAY[a.balance, a.pending, a.debt] FROM points_pointsaccount a WHERE a.member_id = t0.id),
(SELECT array_agg(ARRAY[(extract(epoch FROM expires_at) * 1000000)::bigint, remaining,
                        (pending_until IS NOT NULL)::int])
 FROM points_pointslot WHERE member_id = t0.id AND remaining > 0 AND expires_at <= %s)
"""

# Usable coupons of the member at a store, for the till summary (same statement).
_COUPONS_COLUMN = """, COALESCE((
    SELECT json_agg(json_build_object(
               'code', x.code, 'name', x.name, 'kind', x.kind, 'value', x.value::text,
               'min_spend', x.min_spend::text, 'cash_price', x.cash_price::text, 'valid_until', x.valid_until)
           ORDER BY x.valid_until, x.id)
    FROM (SELECT c.id, c.code, b.name, b.kind, b.value, b.min_spend, b.cash_price, c.valid_until
          FROM campaigns_coupon c JOIN campaigns_benefit b ON b.id = c.benefit_id
          WHERE c.member_id = t0.id AND c.status = 'issued'
            AND c.valid_from <= %s AND c.valid_until > %s
            AND (NOT EXISTS (SELECT 1 FROM campaigns_benefit_stores s WHERE s.benefit_id = b.id)
                 OR EXISTS (SELECT 1 FROM campaigns_benefit_stores s
                            WHERE s.benefit_id = b.id AND s.store_id = %s::bigint))
          ORDER BY c.valid_until, c.id LIMIT 50) x
  ), '[]'::json)
"""

_SUMMARY_ONLY = _SUMMARY_COLUMNS + " FROM (SELECT %s::bigint AS id) t0"
_TILL_COLUMNS = _SUMMARY_COLUMNS + _COUPONS_COLUMN
_TILL_ONLY = _TILL_COLUMNS + " FROM (SELECT %s::bigint AS id) t0"


@dataclass(frozen=True)
class TillSummaryQuery:
    """The till summary as extra columns of the member lookup
    (``select_one_with(Member, extra=q.columns, extra_params=q.params, ...)``);
    ``q.read(values)`` turns the values that came back into the summary."""

    store_id: int
    now: datetime

    columns = _TILL_COLUMNS

    @property
    def params(self) -> list[Any]:
        return [*_summary_params(self.now), self.now, self.now, self.store_id]

    def read(self, values: tuple[Any, ...]) -> tuple[dict[str, Any], list]:
        return _summary_read(values, now=self.now, coupons=True)


def _summary_params(now: datetime) -> list[Any]:
    return [now + timedelta(days=EXPIRING_WINDOW_DAYS)]


def points_summary_get(*, member: Member, now: datetime | None = None) -> dict[str, Any]:
    """Balance, pending, spendable cash value and points expiring within 30 days
    (each last valid day with its amount), in one query."""
    now = now or timezone.now()
    with connection.cursor() as cursor:
        execute(cursor, "SELECT " + _SUMMARY_ONLY, [*_summary_params(now), member.pk])
        return _summary_read(cursor.fetchone(), now=now, coupons=False)[0]


def till_summary_get(*, member: Member, store: Store, now: datetime | None = None) -> tuple[dict[str, Any], list]:
    """The points summary and the coupons usable at ``store``, in one query (the till is waiting).
    Identify reads the same columns with the member itself (``TillSummaryQuery``)."""
    query = TillSummaryQuery(store_id=store.pk, now=now or timezone.now())
    with connection.cursor() as cursor:
        execute(cursor, "SELECT " + _TILL_ONLY, [*query.params, member.pk])
        return query.read(cursor.fetchone())


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _summary_read(row: tuple[Any, ...], *, now: datetime, coupons: bool) -> tuple[dict[str, Any], list]:
    from points.services import points_cash_value

    account, lots = row[:2]
    balance, pending, debt = account if account is not None else (0, 0, 0)
    coupons_raw = row[2] if coupons else []
    now_us = (now - _EPOCH) // timedelta(microseconds=1)
    lapsed = 0
    points_by_expiry: dict[int, int] = {}
    for expires_us, remaining, is_pending in lots or ():
        if expires_us > now_us:
            points_by_expiry[expires_us] = points_by_expiry.get(expires_us, 0) + remaining
        elif not is_pending:
            lapsed += remaining
    by_day: dict[Any, int] = {}
    for expires_us in sorted(points_by_expiry):
        # Lots expire at local midnight: the last valid day is the day before.
        last_day = timezone.localtime(_EPOCH + timedelta(microseconds=expires_us - 1)).date()
        by_day[last_day] = by_day.get(last_day, 0) + points_by_expiry[expires_us]
    # Points past their expiry but not yet taken by the nightly job cannot be spent.
    spendable = max(balance - pending - lapsed, 0) if debt == 0 else 0
    summary = {
        "balance": balance,
        "pending": pending,
        "spendable": spendable,
        "cash_value": points_cash_value(spendable),
        "expiring_30d": sum(by_day.values()),
        "expiring": [{"expires_on": day, "points": points} for day, points in sorted(by_day.items())],
    }
    coupon_rows = json.loads(coupons_raw) if isinstance(coupons_raw, str) else coupons_raw
    for coupon in coupon_rows:
        coupon["value"] = Decimal(coupon["value"])
        coupon["min_spend"] = Decimal(coupon["min_spend"])
        coupon["cash_price"] = Decimal(coupon["cash_price"])
        coupon["valid_until"] = datetime.fromisoformat(coupon["valid_until"])
    return summary, coupon_rows


def qualifying_spend_get(*, member: Member) -> Decimal:
    from points.services import qualifying_spend

    return qualifying_spend(member_id=member.pk, at=timezone.now())


class EntryFilter(django_filters.FilterSet):
    kind = django_filters.MultipleChoiceFilter(choices=PointsEntry.Kind.choices)
    date_from = django_filters.DateFilter(field_name="created_at", lookup_expr="date__gte")
    date_to = django_filters.DateFilter(field_name="created_at", lookup_expr="date__lte")

    class Meta:
        model = PointsEntry
        fields = ["kind", "date_from", "date_to"]


def entry_list(*, member: Member, filters: dict[str, Any] | None = None) -> QuerySet[PointsEntry]:
    queryset = PointsEntry.objects.filter(member=member).select_related("store").order_by("-created_at", "-pk")
    return EntryFilter(filters or {}, queryset=queryset).qs


def lots_open(*, member: Member) -> QuerySet[PointsLot]:
    return PointsLot.objects.filter(member=member, remaining__gt=0).order_by("expires_at", "pk")
