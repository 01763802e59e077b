"""Helpers to set up members, points and purchases at a given moment.

Everything goes through the services (``purchase_record``, ``points_credit``…)
so the ledger built here is the ledger production code would build; only
``member_in_tier`` writes a member's tier directly, to place ``tier_since`` in
the past.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

import factory
from django.contrib.auth import get_user_model
from django.utils import timezone

from members.models import Member, Store, Terminal, Tier
from members.selectors import IdentifiedMember, member_code_current, member_get_by_code
from members.services import member_enrol
from points.models import (
    PointsAccount,
    PointsAdjustment,
    PointsAllocation,
    PointsEntry,
    PointsLot,
    Purchase,
    Refund,
)
from points.services import PurchaseResult, Refs, points_credit, points_debit, purchase_record, purchase_refund


def local(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    """An aware datetime in the project's zone (Asia/Shanghai)."""
    return datetime(year, month, day, hour, minute, second, tzinfo=timezone.get_current_timezone())


class MemberFactory(factory.django.DjangoModelFactory):
    """A member enrolled through ``member_enrol`` (silver, with its enrolment history)."""

    class Meta:
        model = Member

    phone = factory.Sequence(lambda n: f"1390000{n % 10000:04d}")
    name = factory.Sequence(lambda n: f"会员{n}")

    @classmethod
    def _create(cls, model_class: type[Member], *args: Any, **kwargs: Any) -> Member:
        member, _ = member_enrol(**kwargs)
        return member


class OperatorFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)

    username = factory.Sequence(lambda n: f"operator{n}")
    is_staff = True


def member_in_tier(member: Member, code: str, *, since: datetime, override_until: datetime | None = None) -> Member:
    """Put ``member`` in tier ``code`` since ``since`` (test set-up only)."""
    tier = Tier.objects.get(code=code)
    Member.objects.filter(pk=member.pk).update(tier=tier, tier_since=since, tier_override_until=override_until)
    member.refresh_from_db()
    return member


def by_code(member: Member, at: datetime) -> IdentifiedMember:
    """The member as identified by scanning the code their phone shows at ``at``."""
    code, _ = member_code_current(member=member, at=at)
    return member_get_by_code(code=code, now=at)


def by_number(member: Member) -> IdentifiedMember:
    """The member as identified by a typed member number (earn only)."""
    return IdentifiedMember(member=member, code_step=None)


def buy(
    *,
    store: Store,
    terminal: Terminal | None,
    member: Member | None,
    receipt_no: str,
    amount: str,
    at: datetime,
    points_to_use: int = 0,
) -> PurchaseResult:
    """A purchase paid (and recorded) at ``at``; by code when points are used."""
    identified = None
    if member is not None:
        identified = by_code(member, at) if points_to_use else by_number(member)
    return purchase_record(
        store=store,
        terminal=terminal,
        receipt_no=receipt_no,
        amount=Decimal(amount),
        paid_at=at,
        now=at,
        identified=identified,
        points_to_use=points_to_use,
    )


def points_give(member: Member, points: int, *, at: datetime, expires_at: datetime | None = None) -> PointsEntry:
    """Credit ``points`` as a campaign bonus earned at ``at`` (opens one lot)."""
    return points_credit(
        member=member,
        points=points,
        kind=PointsEntry.Kind.BONUS,
        refs=Refs(source=PointsEntry.Source.CAMPAIGN, reference="test"),
        at=at,
        expires_at=expires_at,
    )


def clawback_debt(member: Member, store: Store, debt: int) -> None:
    """Give ``member`` a clawback debt of ``debt`` points as a real member gets
    one: a purchase earns them, everything is spent, the purchase is refunded.
    At the current time, with no pending period in force."""
    receipt = f"D-{member.pk}"
    purchase_record(
        store=store, terminal=None, receipt_no=receipt, amount=Decimal(debt), identified=by_number(member)
    )
    balance = PointsAccount.objects.get(member=member).balance
    points_debit(member=member, points=balance, kind=PointsEntry.Kind.REDEEM, refs=Refs(source="benefit"))
    purchase_refund(store=store, terminal=None, receipt_no=receipt, refund_no=f"RD-{member.pk}", amount=Decimal(debt))
    assert PointsAccount.objects.get(member=member).debt == debt


def account_of(member: Member) -> tuple[int, int, int]:
    """(balance, pending, debt) of the member's points account."""
    account = PointsAccount.objects.get(member=member)
    return account.balance, account.pending, account.debt


def entries_of(member: Member) -> list[tuple[str, int, int, str]]:
    """(kind, points, balance_after, source) of the member's entries, oldest first."""
    return list(
        PointsEntry.objects.filter(member=member)
        .order_by("pk")
        .values_list("kind", "points", "balance_after", "source")
    )


def lots_of(member: Member) -> list[tuple[int, int, datetime]]:
    """(original, remaining, expires_at) of the member's lots, in creation order."""
    return list(
        PointsLot.objects.filter(member=member).order_by("pk").values_list("original", "remaining", "expires_at")
    )


def allocations_of(entry: PointsEntry) -> list[tuple[int, int]]:
    """(lot id, points) drawn or returned by ``entry``."""
    return list(PointsAllocation.objects.filter(entry=entry).order_by("pk").values_list("lot_id", "points"))


def ledger_snapshot() -> dict[str, list[Any]]:
    """Every row a points service can write, to prove that a refusal changed nothing."""
    return {
        "accounts": list(PointsAccount.objects.order_by("pk").values_list("member_id", "balance", "pending", "debt")),
        "entries": list(PointsEntry.objects.order_by("pk").values_list("pk", "member_id", "kind", "points")),
        "lots": list(
            PointsLot.objects.order_by("pk").values_list("pk", "original", "remaining", "expires_at", "pending_until")
        ),
        "allocations": list(PointsAllocation.objects.order_by("pk").values_list("pk", "entry_id", "lot_id", "points")),
        "purchases": list(
            Purchase.objects.order_by("pk").values_list(
                "pk",
                "member_id",
                "refunded_amount",
                "points_earned",
                "points_used",
                "points_reversed",
                "points_returned",
                "claimed_at",
            )
        ),
        "refunds": list(Refund.objects.order_by("pk").values_list("pk", "purchase_id", "amount")),
        "adjustments": list(PointsAdjustment.objects.order_by("pk").values_list("pk", "status", "entry_id")),
        "members": list(Member.objects.order_by("pk").values_list("pk", "tier_id", "tier_since", "status")),
    }
