"""Row locks of the points app. Lock order: member → points account → purchase → coupons.

The account row lock guards the member's lots, entries and allocations too:
every writer of those takes it first, so they need no locks of their own.
"""

from __future__ import annotations

from typing import Any

from django.db import connection
from django.db.models import QuerySet

from loyalty.sql import Write, select_one_with
from members.models import Member
from points.models import PointsAccount, Purchase


def account_lock(member: Member) -> PointsAccount:
    """Lock (creating if needed) the member's points account, evaluated at once."""
    return account_lock_with(member)[0]


def account_lock_with(
    member: Member, extra: str = "", extra_params: list[Any] | None = None, *, before: Write | None = None
) -> tuple[PointsAccount, tuple]:
    """``account_lock``, reading ``extra`` columns (constant SQL with ``%s``
    placeholders for ``extra_params``) in the same statement: what the caller
    would otherwise ask in a round trip of its own (``loyalty.sql.select_one_with``).
    ``before``: a write made in that statement once the account is locked (the
    till's purchase row: lock order account → purchase), run once whether the
    account existed or not."""
    params = extra_params or []
    account, values = select_one_with(
        PointsAccount, extra=extra, extra_params=params, for_update=True, before=before, member=member.pk
    )
    if account is not None:
        return account, values
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO points_pointsaccount (member_id, balance, pending, debt, updated_at) "
            "VALUES (%s, 0, 0, 0, now()) ON CONFLICT (member_id) DO NOTHING",
            [member.pk],
        )
    account, values = select_one_with(PointsAccount, extra=extra, extra_params=params, for_update=True, member=member.pk)
    if account is None:  # inserted above or by a concurrent transaction: cannot be missing
        raise RuntimeError(f"points account of member {member.pk} missing after its insert")
    return account, values


def purchase_qs_for_update() -> QuerySet[Purchase]:
    return Purchase.objects.order_by("pk").select_for_update(of=("self",), no_key=True)
