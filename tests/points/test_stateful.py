"""Random sequences of every points operation against a plain Python model.

A Hypothesis ``RuleBasedStateMachine`` drives earn (``purchase_record``),
redeem (``points_debit`` and purchases paid partly with points), refunds
(partial and full), expiry (``points_expire_due`` on an advancing clock),
operator adjustments (at once and after a second operator's approval) and
claims of receipts recorded without a member, for one to three members. The
model keeps each member's lots (original, remaining, expiry) and clawback
debt as DESIGN.md describes them; after every step the database must match
it exactly, ``ledger_check()`` must pass, and a refused operation must have
written nothing.

Time travel: the virtual clock starts about two years ago and only moves
forward, never past the real now, so that points earned "now" are never
pending and ``purchase_record(now=...)`` accepts ``paid_at``. Adjustments
take no time argument; they happen at the real now, which the model uses for
them.

Isolation: the machine's ``TestCase`` is a ``django.test.TestCase`` (the
whole run is one rolled-back transaction), and each example runs in its own
savepoint, rolled back in ``teardown``, so examples never see each other's
rows. ``hypothesis.extra.django.TestCase`` isolates ``@given`` examples only,
not state-machine runs, hence the explicit savepoint.

Runs in well under a minute by default; ``HYPOTHESIS_PROFILE=long`` runs many
more and longer sequences.
"""

from __future__ import annotations

import importlib
import itertools
import os
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from decimal import ROUND_DOWN, ROUND_FLOOR, Decimal
from typing import Any

import django.test
from dateutil.relativedelta import relativedelta
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import F, Q, Sum
from django.utils import timezone
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from loyalty.models import IdempotencyKey
from members.models import Member, Store
from members.selectors import IdentifiedMember
from members.services import member_enrol, store_get_or_create
from points.batch import ledger_check, points_expire_due
from points.errors import ClaimNotAllowed, InsufficientPoints, PointsOverCap, RefundExceedsPurchase
from points.models import PointsAccount, PointsAdjustment, PointsAllocation, PointsEntry, PointsLot, Purchase, Refund
from points.services import (
    Refs,
    adjustment_approve,
    adjustment_request,
    points_debit,
    purchase_claim,
    purchase_record,
    purchase_refund,
)

CENT = Decimal("0.01")
POINTS_PER_CNY = 100
MAX_BILL_SHARE = Decimal("0.5")
EXPIRY_MONTHS = 12
CLAIM_WINDOW = timedelta(days=30)
APPROVAL_THRESHOLD = 1000
MODEL_SETTINGS = (POINTS_PER_CNY, MAX_BILL_SHARE, 1, "rolling", EXPIRY_MONTHS, 0, CLAIM_WINDOW.days, APPROVAL_THRESHOLD)
Kind = PointsEntry.Kind
Source = PointsEntry.Source

_COMMON = {"deadline": None, "suppress_health_check": list(HealthCheck), "print_blob": True}
PROFILES = {
    "default": settings(max_examples=25, stateful_step_count=35, **_COMMON),
    "long": settings(max_examples=400, stateful_step_count=80, **_COMMON),
}


# -----------------------------------------------------------------------------
# The model
# -----------------------------------------------------------------------------
def model_expiry(at: datetime) -> datetime:
    """Rolling policy: valid through the same day 12 months later (local time)."""
    tz = timezone.get_current_timezone()
    last_day = timezone.localtime(at, tz).date() + relativedelta(months=EXPIRY_MONTHS)
    return datetime.combine(last_day + timedelta(days=1), time.min, tzinfo=tz)


@dataclass(eq=False)
class Lot:
    original: int
    remaining: int
    expires_at: datetime
    expired: int = 0  # taken by expiry runs


@dataclass
class Account:
    pk: int
    lots: list[Lot] = field(default_factory=list)
    debt: int = 0

    @property
    def balance(self) -> int:
        return sum(lot.remaining for lot in self.lots) - self.debt

    def credit(self, points: int, at: datetime) -> Lot | None:
        """Pay clawback debt first; the rest opens a lot."""
        paid_down = min(self.debt, points)
        self.debt -= paid_down
        if points == paid_down:
            return None
        lot = Lot(points - paid_down, points - paid_down, model_expiry(at))
        self.lots.append(lot)
        return lot

    def spendable(self, at: datetime) -> int:
        return sum(lot.remaining for lot in self.lots if lot.expires_at > at)

    def draw(
        self, points: int, *, at: datetime, spendable_only: bool, allow_debt: bool = False, first: tuple[Lot, ...] = ()
    ) -> list[tuple[Lot, int]]:
        """First to expire first (``first`` lots before all others); a shortfall
        is refused, or becomes debt with ``allow_debt``."""
        candidates = [
            (0 if lot in first else 1, lot.expires_at, order, lot)
            for order, lot in enumerate(self.lots)
            if lot.remaining > 0 and (not spendable_only or lot.expires_at > at)
        ]
        candidates.sort(key=lambda row: row[:3])
        available = sum(row[3].remaining for row in candidates)
        if available < points and not allow_debt:
            raise InsufficientPoints(available=available, requested=points)
        taken, left = [], points
        for *_, lot in candidates:
            if left == 0:
                break
            take = min(lot.remaining, left)
            lot.remaining -= take
            left -= take
            taken.append((lot, -take))
        self.debt += left
        return taken

    def give_back(self, points: int, *, drawn: list[tuple[Lot, int]]) -> list[tuple[Lot, int]]:
        """Return points into the lots they were drawn from (last drawn first),
        up to what each lot lost; debt first; any rest opens a lot expiring with
        the earliest of those lots."""
        paid_down = min(self.debt, points)
        self.debt -= paid_down
        left = points - paid_down
        if left == 0:
            return []
        net: dict[Lot, int] = {}
        for lot, moved in reversed(drawn):
            net[lot] = net.get(lot, 0) - moved
        given = []
        for lot, still_drawn in net.items():
            if left == 0:
                break
            give = min(still_drawn, left, lot.original - lot.remaining)
            if give <= 0:
                continue
            lot.remaining += give
            left -= give
            given.append((lot, give))
        if left > 0:
            event("refund: returned into a new lot")
            self.lots.append(Lot(left, left, min(lot.expires_at for lot in net)))
        return given

    def expire(self, as_of: datetime) -> int:
        expired = 0
        for lot in self.lots:
            if lot.remaining > 0 and lot.expires_at <= as_of:
                expired += lot.remaining
                lot.expired += lot.remaining
                lot.remaining = 0
        return expired


@dataclass
class Bill:
    receipt_no: str
    amount: Decimal
    paid_at: datetime
    member: int | None  # index into the machine's members
    points_used: int = 0
    points_earned: int = 0
    refunded: Decimal = Decimal("0.00")
    refunded_before_claim: Decimal = Decimal("0.00")
    points_returned: int = 0
    points_reversed: int = 0
    drawn: list[tuple[Lot, int]] = field(default_factory=list)  # by the redeem entry and its returns
    earn_lot: Lot | None = None

    @property
    def refundable(self) -> Decimal:
        return self.amount - self.refunded


def _floor(value: Decimal) -> int:
    return int(value.to_integral_value(rounding=ROUND_FLOOR))


def _cents(value: Decimal) -> int:
    return int(value * 100)


def _counts() -> tuple[int, ...]:
    return (
        PointsEntry.objects.count(),
        PointsLot.objects.count(),
        PointsAllocation.objects.count(),
        Purchase.objects.count(),
        Refund.objects.count(),
        PointsAdjustment.objects.filter(status=PointsAdjustment.Status.APPLIED).count(),
        PointsAdjustment.objects.count(),
        IdempotencyKey.objects.count(),
    )


def _lots_state() -> list[tuple[Any, ...]]:
    return list(PointsLot.objects.order_by("pk").values_list("pk", "remaining"))


# -----------------------------------------------------------------------------
# The machine
# -----------------------------------------------------------------------------
class PointsLedgerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        # One savepoint per example, rolled back in teardown().
        self._atomic = transaction.atomic()
        self._atomic.__enter__()
        # The model's rules are written for the default settings.
        configured = (
            django_settings.LOYALTY_POINTS_PER_CNY,
            django_settings.LOYALTY_POINTS_MAX_BILL_SHARE,
            django_settings.LOYALTY_POINTS_BASE_RATE,
            django_settings.LOYALTY_POINTS_EXPIRY_POLICY,
            django_settings.LOYALTY_POINTS_EXPIRY_MONTHS,
            django_settings.LOYALTY_POINTS_PENDING_DAYS,
            django_settings.LOYALTY_CLAIM_WINDOW_DAYS,
            django_settings.LOYALTY_ADJUST_APPROVAL_THRESHOLD,
        )
        assert configured == MODEL_SETTINGS, configured
        from django.apps import apps

        importlib.import_module("members.migrations.0002_defaults").create_tiers(apps, None)
        self.real_start = timezone.now()
        self.clock = self.real_start - timedelta(days=800)
        self.store: Store = store_get_or_create(code="SH001", name="上海南京西路店")[0]
        users = get_user_model().objects
        self.operators = [users.create_user(f"op{index}", is_staff=True) for index in (1, 2)]
        self.accounts: list[Account] = []
        self.members: list[Member] = []
        self.bills: list[Bill] = []
        self.pending_adjustments: list[tuple[PointsAdjustment, int, int]] = []  # (adjustment, member, points)
        self.numbers = itertools.count(1)

    def teardown(self) -> None:
        transaction.set_rollback(True)
        self._atomic.__exit__(None, None, None)

    # -- helpers ---------------------------------------------------------------
    def _member(self, index: int) -> tuple[Member, Account]:
        index %= len(self.members)
        return Member.objects.select_related("tier").get(pk=self.members[index].pk), self.accounts[index]

    def _refused(self, call: Any, error: type[Exception]) -> Exception:
        """Run ``call`` expecting ``error``, and prove that nothing was written."""
        before, lots_before = _counts(), _lots_state()
        balances = list(PointsAccount.objects.order_by("pk").values_list("pk", "balance", "debt"))
        try:
            call()
        except error as exc:
            refusal = exc
        else:
            raise AssertionError(f"expected {error.__name__}")
        assert _counts() == before
        assert _lots_state() == lots_before
        assert list(PointsAccount.objects.order_by("pk").values_list("pk", "balance", "debt")) == balances
        return refusal

    def _tick(self, minutes: int) -> None:
        self.clock = min(self.clock + timedelta(minutes=minutes), self.real_start - timedelta(hours=1))

    # -- rules -----------------------------------------------------------------
    @initialize(count=st.integers(min_value=1, max_value=3))
    def enrol(self, count: int) -> None:
        for index in range(count):
            member, _ = member_enrol(phone=f"1381234{index:04d}", name="会员", store=self.store)
            self.members.append(member)
            self.accounts.append(Account(pk=member.pk))

    @rule(
        who=st.integers(0, 2),
        yuan=st.integers(1, 1000),
        cents=st.integers(0, 99),
        points_to_use=st.one_of(st.just(0), st.integers(1, 3000), st.integers(3001, 100_000)),
        minutes=st.integers(0, 3 * 24 * 60),
    )
    def purchase(self, who: int, yuan: int, cents: int, points_to_use: int, minutes: int) -> None:
        self._tick(minutes)
        member, account = self._member(who)
        amount = Decimal(yuan) + Decimal(cents) / 100
        receipt_no = f"R-{next(self.numbers)}"
        paid_at = self.clock

        def call() -> Any:
            return purchase_record(
                store=self.store,
                terminal=None,
                receipt_no=receipt_no,
                amount=amount,
                paid_at=paid_at,
                now=paid_at,
                identified=IdentifiedMember(member=member, code_step=next(self.numbers)),
                points_to_use=points_to_use,
            )

        max_points = int((amount * MAX_BILL_SHARE).quantize(CENT, rounding=ROUND_DOWN) * POINTS_PER_CNY)
        if points_to_use > max_points:
            event("purchase: points over cap")
            refusal = self._refused(call, PointsOverCap)
            assert refusal.params == {"max_points": max_points}
            return
        if points_to_use > account.spendable(paid_at):
            event("purchase: insufficient points")
            refusal = self._refused(call, InsufficientPoints)
            assert refusal.params == {"available": account.spendable(paid_at), "requested": points_to_use}
            return
        multiplier = member.tier.earn_multiplier
        result = call()
        bill = Bill(receipt_no, amount, paid_at, who % len(self.members), points_used=points_to_use)
        if points_to_use:
            event("purchase: paid with points")
            bill.drawn = account.draw(points_to_use, at=paid_at, spendable_only=True)
        cash = (Decimal(points_to_use) / POINTS_PER_CNY).quantize(CENT, rounding=ROUND_DOWN)
        bill.points_earned = _floor((amount - cash) * multiplier)
        if bill.points_earned:
            bill.earn_lot = account.credit(bill.points_earned, paid_at)
        self.bills.append(bill)
        purchase = result.purchase
        assert (purchase.points_used, purchase.points_earned, purchase.cash_paid_by_points) == (
            points_to_use,
            bill.points_earned,
            cash,
        )
        assert result.balance == account.balance

    @rule(yuan=st.integers(1, 500), minutes=st.integers(0, 24 * 60))
    def purchase_without_member(self, yuan: int, minutes: int) -> None:
        self._tick(minutes)
        receipt_no = f"R-{next(self.numbers)}"
        purchase_record(
            store=self.store,
            terminal=None,
            receipt_no=receipt_no,
            amount=Decimal(yuan),
            paid_at=self.clock,
            now=self.clock,
        )
        self.bills.append(Bill(receipt_no, Decimal(yuan), self.clock, None))

    @rule(who=st.integers(0, 2), points=st.integers(1, 2000))
    def redeem(self, who: int, points: int) -> None:
        member, account = self._member(who)

        def call() -> Any:
            return points_debit(
                member=member, points=points, kind=Kind.REDEEM, refs=Refs(source=Source.BENEFIT), at=self.clock
            )

        if points > account.spendable(self.clock):
            event("redeem: insufficient points")
            refusal = self._refused(call, InsufficientPoints)
            assert refusal.params == {"available": account.spendable(self.clock), "requested": points}
            return
        entry = call()
        account.draw(points, at=self.clock, spendable_only=True)
        assert (entry.kind, entry.points, entry.balance_after) == ("redeem", -points, account.balance)

    @precondition(lambda self: self.bills)
    @rule(pick=st.integers(0, 10**6), how=st.sampled_from(["rest", "part", "too_much"]), percent=st.integers(1, 99))
    def refund(self, pick: int, how: str, percent: int) -> None:
        bill = self.bills[pick % len(self.bills)]
        if how == "rest":
            amount = bill.refundable
        elif how == "part":
            amount = max((bill.refundable * percent / 100).quantize(CENT, rounding=ROUND_DOWN), CENT)
        else:
            amount = bill.refundable + CENT
        amount = max(amount, CENT)  # nothing left to refund: ask for a cent
        refund_no = f"F-{next(self.numbers)}"

        def call() -> Any:
            return purchase_refund(
                store=self.store,
                terminal=None,
                receipt_no=bill.receipt_no,
                refund_no=refund_no,
                amount=amount,
                at=self.clock,
            )

        if amount > bill.refundable:
            event("refund: exceeds")
            refusal = self._refused(call, RefundExceedsPurchase)
            assert refusal.detail == {"refundable": str(bill.refundable)}
            return
        result = call()
        refunded = bill.refunded + amount
        # Used points come back in proportion to the bill; earned points are
        # reversed in proportion to the part they were earned on (all of it, or
        # what was left when it was claimed), exactly (in cents), rounded down...
        refunded_cents, amount_cents = _cents(refunded), _cents(bill.amount)
        offset_cents = _cents(bill.refunded_before_claim)
        to_return = bill.points_used * refunded_cents // amount_cents - bill.points_returned
        to_reverse = (
            bill.points_earned * (refunded_cents - offset_cents) // (amount_cents - offset_cents) - bill.points_reversed
        )
        # ... but points of the bill that already expired are not taken twice.
        if to_reverse > 0:
            expired = bill.earn_lot.expired if bill.earn_lot is not None else 0
            to_reverse = max(min(to_reverse, bill.points_earned - bill.points_reversed - expired), 0)
            if to_reverse == 0:
                event("refund: earned points already expired")
        clawback = 0
        if bill.member is not None:
            account = self.accounts[bill.member]
            if to_return > 0:
                event("refund: points returned")
                bill.drawn += account.give_back(to_return, drawn=bill.drawn)
            if to_reverse > 0:
                debt_before = account.debt
                first = (bill.earn_lot,) if bill.earn_lot is not None else ()
                account.draw(to_reverse, at=self.clock, spendable_only=False, allow_debt=True, first=first)
                clawback = account.debt - debt_before
                if clawback:
                    event("refund: clawback")
            assert result.balance == account.balance
        bill.refunded = refunded
        bill.points_returned += max(to_return, 0)
        bill.points_reversed += max(to_reverse, 0)
        refund = result.refund
        assert (refund.amount, refund.points_returned, refund.points_reversed, refund.clawback) == (
            amount,
            max(to_return, 0),
            max(to_reverse, 0),
            clawback,
        )

    @precondition(lambda self: any(bill.member is None for bill in self.bills))
    @rule(who=st.integers(0, 2), pick=st.integers(0, 10**6), minutes=st.integers(0, 40 * 24 * 60))
    def claim(self, who: int, pick: int, minutes: int) -> None:
        self._tick(minutes)
        unclaimed = [bill for bill in self.bills if bill.member is None]
        bill = unclaimed[pick % len(unclaimed)]
        member, account = self._member(who)

        def call() -> Any:
            return purchase_claim(member=member, store=self.store, receipt_no=bill.receipt_no, at=self.clock)

        if bill.paid_at < self.clock - CLAIM_WINDOW:
            event("claim: too old")
            refusal = self._refused(call, ClaimNotAllowed)
            assert refusal.detail == {"reason": "too_old"}
            return
        if bill.refundable <= 0:
            event("claim: refunded")
            refusal = self._refused(call, ClaimNotAllowed)
            assert refusal.detail == {"reason": "refunded"}
            return
        multiplier = member.tier.earn_multiplier
        event("claim: credited" + (" after a refund" if bill.refunded else ""))
        result = call()
        bill.member = who % len(self.members)
        bill.refunded_before_claim = bill.refunded
        bill.points_earned = _floor(bill.refundable * multiplier)
        if bill.points_earned:
            bill.earn_lot = account.credit(bill.points_earned, self.clock)
        assert result.purchase.points_earned == bill.points_earned
        assert result.balance == account.balance

    @rule(days=st.integers(0, 400))
    def expire(self, days: int) -> None:
        self._tick(days * 24 * 60)
        last_entry = PointsEntry.objects.order_by("-pk").values_list("pk", flat=True).first() or 0
        result = points_expire_due(as_of=self.clock, batch_size=2)
        expired = [account.expire(self.clock) for account in self.accounts]
        if result.points:
            event("expire: points expired")
        assert (result.points, result.members) == (sum(expired), sum(1 for points in expired if points))
        for account, points in zip(self.accounts, expired, strict=True):
            entries = PointsEntry.objects.filter(member_id=account.pk, pk__gt=last_entry)
            assert list(entries.values_list("kind", "points", "balance_after")) == (
                [("expire", -points, account.balance)] if points else []
            )

    @rule(who=st.integers(0, 2), points=st.integers(-1500, 1500).filter(bool), by=st.integers(0, 1))
    def adjust(self, who: int, points: int, by: int) -> None:
        member, account = self._member(who)
        operator = self.operators[by]

        def call() -> PointsAdjustment:
            return adjustment_request(member=member, points=points, reason="补录积分", by_user=operator)

        if abs(points) > APPROVAL_THRESHOLD:
            adjustment = call()
            assert adjustment.status == PointsAdjustment.Status.PENDING
            assert adjustment.entry_id is None
            self.pending_adjustments.append((adjustment, who % len(self.members), points))
            return
        self._apply_adjustment(account, points, call)

    @precondition(lambda self: self.pending_adjustments)
    @rule(pick=st.integers(0, 10**6))
    def approve(self, pick: int) -> None:
        adjustment, index, points = self.pending_adjustments[pick % len(self.pending_adjustments)]
        approver = next(user for user in self.operators if user.pk != adjustment.requested_by_id)

        def call() -> PointsAdjustment:
            return adjustment_approve(adjustment=adjustment, by_user=approver)

        if self._apply_adjustment(self.accounts[index], points, call):
            self.pending_adjustments.remove((adjustment, index, points))

    def _apply_adjustment(self, account: Account, points: int, call: Any) -> bool:
        # Adjustments take no time argument: they happen at the real now.
        now = timezone.now()
        if points < 0 and -points > account.spendable(now):
            event("adjust: insufficient points")
            refusal = self._refused(call, InsufficientPoints)
            assert refusal.params == {"available": account.spendable(now), "requested": -points}
            return False
        adjustment = call()
        if points > 0:
            account.credit(points, now)
        else:
            account.draw(-points, at=now, spendable_only=True)
        assert adjustment.status == PointsAdjustment.Status.APPLIED
        assert (adjustment.entry.points, adjustment.entry.balance_after) == (points, account.balance)
        return True

    @rule(minutes=st.integers(1, 90 * 24 * 60))
    def time_passes(self, minutes: int) -> None:
        self._tick(minutes)

    @precondition(lambda self: self._next_expiry() is not None)
    @rule(before=st.sampled_from([timedelta(0), timedelta(microseconds=1)]), sweep=st.booleans())
    def to_the_next_expiry(self, before: timedelta, sweep: bool) -> None:
        """Stand exactly on (or a microsecond before) the midnight when open
        points expire, and maybe run the expiry job there: where off-by-one
        bugs in expiry and spending live."""
        event("clock: on an expiry boundary")
        self.clock = self._next_expiry() - before
        if sweep:
            self.expire(days=0)

    def _next_expiry(self) -> datetime | None:
        upcoming = [
            lot.expires_at
            for account in self.accounts
            for lot in account.lots
            if lot.remaining > 0 and self.clock < lot.expires_at <= self.real_start - timedelta(hours=1)
        ]
        return min(upcoming, default=None)

    # -- checks after every step ----------------------------------------------
    @invariant()
    def database_matches_the_model(self) -> None:
        for account in self.accounts:
            row = PointsAccount.objects.filter(member_id=account.pk).values_list("balance", "pending", "debt").first()
            assert (row or (0, 0, 0)) == (account.balance, 0, account.debt)
            total = PointsEntry.objects.filter(member_id=account.pk).aggregate(total=Sum("points"))["total"] or 0
            assert total == account.balance
            lots = list(
                PointsLot.objects.filter(member_id=account.pk)
                .order_by("pk")
                .values_list("original", "remaining", "expires_at")
            )
            assert lots == [(lot.original, lot.remaining, lot.expires_at) for lot in account.lots]
        assert not PointsLot.objects.filter(Q(remaining__lt=0) | Q(remaining__gt=F("original"))).exists()
        report = ledger_check()
        assert report.ok, report.violations


class TestPointsLedgerMachine(PointsLedgerMachine.TestCase, django.test.TestCase):  # type: ignore[misc]
    settings = PROFILES.get(os.environ.get("HYPOTHESIS_PROFILE", "default"), PROFILES["default"])
