"""purchase_refund: proportional reversal, return into original lots, clawback debt."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from members.services import member_freeze
from points.batch import ledger_check, points_expire_due, points_release_pending
from points.errors import DuplicateRefund, InsufficientPoints, PurchaseNotFound, RefundExceedsPurchase
from points.models import PointsEntry, PointsLot, Purchase, Refund
from points.services import purchase_claim, purchase_refund
from tests.points.factories import (
    MemberFactory,
    account_of,
    allocations_of,
    buy,
    clawback_debt,
    entries_of,
    ledger_snapshot,
    local,
    lots_of,
    member_in_tier,
    points_give,
)

pytestmark = pytest.mark.django_db

T = local(2026, 3, 1, 10, 0)


def _refund(store, terminal, receipt_no, refund_no, amount, at):
    return purchase_refund(
        store=store, terminal=terminal, receipt_no=receipt_no, refund_no=refund_no, amount=Decimal(amount), at=at
    )


def _refund_rows(purchase):
    return list(
        Refund.objects.filter(purchase=purchase)
        .order_by("pk")
        .values_list("refund_no", "amount", "points_reversed", "points_returned", "clawback")
    )


# -----------------------------------------------------------------------------
# Earned points reversed in proportion
# -----------------------------------------------------------------------------
def test_partial_refunds_reverse_in_proportion_and_the_last_completes_exactly(store, terminal, member):
    # given a gold member's ¥100 purchase: 125 points
    member_in_tier(member, "gold", since=T - timedelta(days=1))
    purchase = buy(store=store, terminal=terminal, member=member, receipt_no="R-1", amount="100.00", at=T).purchase
    # when refunded in three parts
    first = _refund(store, terminal, "R-1", "F-1", "30.00", T + timedelta(days=1))
    second = _refund(store, terminal, "R-1", "F-2", "30.00", T + timedelta(days=2))
    # then each reverses floor(125 × refunded so far) minus what was already reversed
    assert (first.refund.points_reversed, first.balance) == (37, 88)  # floor(37.5)
    assert (second.refund.points_reversed, second.balance) == (38, 50)  # floor(75) − 37
    assert ledger_check().ok
    # when the rest is refunded
    last = _refund(store, terminal, "R-1", "F-3", "40.00", T + timedelta(days=3))
    # then exactly what is left is reversed
    assert (last.refund.points_reversed, last.balance) == (50, 0)
    assert _refund_rows(purchase) == [
        ("F-1", Decimal("30.00"), 37, 0, 0),
        ("F-2", Decimal("30.00"), 38, 0, 0),
        ("F-3", Decimal("40.00"), 50, 0, 0),
    ]
    purchase.refresh_from_db()
    assert (purchase.refunded_amount, purchase.points_reversed, purchase.points_returned) == (Decimal("100.00"), 125, 0)
    assert account_of(member) == (0, 0, 0)
    assert entries_of(member) == [
        ("earn", 125, 125, "purchase"),
        ("reverse", -37, 88, "refund"),
        ("reverse", -38, 50, "refund"),
        ("reverse", -50, 0, "refund"),
    ]
    reverse = PointsEntry.objects.filter(member=member, kind="reverse").order_by("pk").first()
    assert (reverse.refund, reverse.purchase, reverse.store, reverse.created_at) == (
        first.refund,
        purchase,
        store,
        T + timedelta(days=1),
    )
    assert [(original, remaining) for original, remaining, _ in lots_of(member)] == [(125, 0)]
    assert ledger_check().ok


@pytest.mark.parametrize(
    ("amount", "part", "each"),
    [
        ("300.00", "100.00", 100),  # a third of 300 points is exactly 100
        ("99.99", "33.33", 33),  # 99 points, a third is exactly 33
    ],
)
def test_proportion_is_exact_when_the_amount_does_not_divide_evenly(store, terminal, member, amount, part, each):
    # given a purchase refunded in thirds
    buy(store=store, terminal=terminal, member=member, receipt_no="R-1", amount=amount, at=T)
    # when
    results = [_refund(store, terminal, "R-1", f"F-{n}", part, T + timedelta(hours=n)) for n in (1, 2, 3)]
    # then floor(earned × refunded ÷ amount) is computed exactly, not from a rounded share
    assert [result.refund.points_reversed for result in results] == [each, each, each]
    assert [result.balance for result in results] == [2 * each, each, 0]
    assert ledger_check().ok


def test_used_points_are_returned_in_exact_proportion(store, terminal, member):
    # given 3 000 points used on a ¥60 bill (earning 30)
    points_give(member, 3000, at=T - timedelta(days=1))
    buy(store=store, terminal=terminal, member=member, receipt_no="R-1", amount="60.00", at=T, points_to_use=3000)
    assert account_of(member) == (30, 0, 0)
    # when a third of the bill is refunded
    result = _refund(store, terminal, "R-1", "F-1", "20.00", T + timedelta(hours=1))
    # then exactly a third of the used and earned points come back / are reversed
    assert (result.refund.points_returned, result.refund.points_reversed) == (1000, 10)
    assert account_of(member) == (1020, 0, 0)
    assert ledger_check().ok


def test_refund_of_pending_points_lowers_pending(store, terminal, member, settings):
    # given 500 pending points
    settings.LOYALTY_POINTS_PENDING_DAYS = 7
    buy(store=store, terminal=terminal, member=member, receipt_no="R-1", amount="500.00", at=T)
    assert account_of(member) == (500, 500, 0)
    # when half is refunded the next day
    _refund(store, terminal, "R-1", "F-1", "250.00", T + timedelta(days=1))
    # then
    assert account_of(member) == (250, 250, 0)
    assert ledger_check().ok
    # when the rest is released, then refunded
    assert points_release_pending(now=T + timedelta(days=7)) == 1
    assert account_of(member) == (250, 0, 0)
    _refund(store, terminal, "R-1", "F-2", "250.00", T + timedelta(days=8))
    # then
    assert account_of(member) == (0, 0, 0)
    assert [(original, remaining) for original, remaining, _ in lots_of(member)] == [(500, 0)]
    assert ledger_check().ok


def test_refund_of_purchase_without_member_writes_no_ledger(store, terminal):
    # given
    buy(store=store, terminal=terminal, member=None, receipt_no="R-1", amount="80.00", at=T)
    # when
    result = _refund(store, terminal, "R-1", "F-1", "80.00", T + timedelta(days=1))
    # then
    assert result.balance == 0
    assert (result.refund.points_reversed, result.refund.points_returned, result.refund.clawback) == (0, 0, 0)
    assert Purchase.objects.get(receipt_no="R-1").refunded_amount == Decimal("80.00")
    assert not PointsEntry.objects.exists()
    assert ledger_check().ok


# -----------------------------------------------------------------------------
# Used points returned into their original lots
# -----------------------------------------------------------------------------
def test_used_points_return_into_their_original_lots_with_original_expiry(store, terminal, member):
    # given lots A (300, expiring 2026-06-01) and B (10 000), and a ¥128.50 bill paid 6 425 points from A then B
    a_entry = points_give(member, 300, at=T - timedelta(days=60), expires_at=local(2026, 6, 1))
    b_entry = points_give(member, 10_000, at=T - timedelta(days=30))
    lot_a, lot_b = a_entry.lots.get(), b_entry.lots.get()
    b_expiry = lot_b.expires_at
    purchase = buy(
        store=store, terminal=terminal, member=member, receipt_no="R-1", amount="128.50", at=T, points_to_use=6425
    ).purchase
    lot_c = PointsLot.objects.get(entry__purchase=purchase)
    assert (purchase.points_used, purchase.points_earned) == (6425, 64)
    assert account_of(member) == (3939, 0, 0)

    # when half of the bill is refunded
    half = _refund(store, terminal, "R-1", "F-1", "64.25", T + timedelta(days=1))
    # then half the used points (3 212) go back into the lot drawn last (B) and half the earned (32) are reversed
    assert (half.refund.points_returned, half.refund.points_reversed, half.refund.clawback) == (3212, 32, 0)
    assert half.balance == 3939 + 3212 - 32
    returned = PointsEntry.objects.get(refund=half.refund, kind="reverse", points__gt=0)
    reversed_ = PointsEntry.objects.get(refund=half.refund, kind="reverse", points__lt=0)
    assert (returned.points, reversed_.points) == (3212, -32)
    assert allocations_of(returned) == [(lot_b.pk, 3212)]
    assert allocations_of(reversed_) == [(lot_c.pk, -32)]  # from the purchase's own earn lot first
    assert lots_of(member) == [
        (300, 0, local(2026, 6, 1)),
        (10_000, 3875 + 3212, b_expiry),
        (64, 32, lot_c.expires_at),
    ]
    assert ledger_check().ok

    # when the rest is refunded
    rest = _refund(store, terminal, "R-1", "F-2", "64.25", T + timedelta(days=2))
    # then all 6 425 are back in A and B with their original expiry, and the earn lot is empty
    assert (rest.refund.points_returned, rest.refund.points_reversed) == (3213, 32)
    returned = PointsEntry.objects.get(refund=rest.refund, kind="reverse", points__gt=0)
    assert sorted(allocations_of(returned)) == sorted([(lot_b.pk, 2913), (lot_a.pk, 300)])
    assert lots_of(member) == [(300, 300, local(2026, 6, 1)), (10_000, 10_000, b_expiry), (64, 0, lot_c.expires_at)]
    assert PointsLot.objects.filter(member=member).count() == 3  # no new lot was opened
    assert account_of(member) == (10_300, 0, 0)
    purchase.refresh_from_db()
    assert (purchase.points_returned, purchase.points_reversed) == (6425, 64)
    assert ledger_check().ok


def test_points_returned_into_an_expired_lot_expire_at_the_next_run(store, terminal, member):
    # given 300 points expiring at 2026-03-05 00:00 local, all used on a ¥10 bill
    entry = points_give(member, 300, at=T - timedelta(days=300), expires_at=local(2026, 3, 5))
    lot = entry.lots.get()
    buy(store=store, terminal=terminal, member=member, receipt_no="R-1", amount="10.00", at=T, points_to_use=300)
    assert account_of(member) == (7, 0, 0)
    assert points_expire_due(as_of=local(2026, 3, 5)).points == 0  # nothing left in the lot
    # when the bill is refunded after the lot's expiry
    result = _refund(store, terminal, "R-1", "F-1", "10.00", local(2026, 3, 10))
    # then the points are back in their lot, which keeps its past expiry
    assert (result.refund.points_returned, result.refund.points_reversed, result.balance) == (300, 7, 300)
    lot.refresh_from_db()
    assert (lot.remaining, lot.expires_at) == (300, local(2026, 3, 5))
    assert ledger_check().ok
    # and the next expiry run expires them
    expired = points_expire_due(as_of=local(2026, 3, 11))
    assert (expired.members, expired.lots, expired.points) == (1, 1, 300)
    assert account_of(member) == (0, 0, 0)
    assert ledger_check().ok


# -----------------------------------------------------------------------------
# Clawback debt
# -----------------------------------------------------------------------------
def test_refund_of_spent_points_becomes_debt_paid_down_by_later_credits(store, terminal, member):
    # given 1 000 points from R-1, of which 800 paid part of R-2 (which earned 92)
    buy(store=store, terminal=terminal, member=member, receipt_no="R-1", amount="1000.00", at=T)
    buy(
        store=store,
        terminal=terminal,
        member=member,
        receipt_no="R-2",
        amount="100.00",
        at=T + timedelta(hours=1),
        points_to_use=800,
    )
    lot_1, lot_2 = PointsLot.objects.filter(member=member).order_by("pk")
    assert account_of(member) == (292, 0, 0)

    # when R-1 is fully refunded
    result = _refund(store, terminal, "R-1", "F-1", "1000.00", T + timedelta(hours=2))
    # then the refund is not refused: 292 come from the lots, 708 become debt
    assert (result.refund.points_reversed, result.refund.clawback, result.balance) == (1000, 708, -708)
    assert account_of(member) == (-708, 0, 708)
    reverse = PointsEntry.objects.get(refund=result.refund)
    assert (reverse.kind, reverse.points, reverse.balance_after) == ("reverse", -1000, -708)
    assert allocations_of(reverse) == [(lot_1.pk, -200), (lot_2.pk, -92)]
    assert [(original, remaining) for original, remaining, _ in lots_of(member)] == [(1000, 0), (92, 0)]
    assert ledger_check().ok

    # when the member tries to spend
    before = ledger_snapshot()
    with pytest.raises(InsufficientPoints):
        buy(
            store=store,
            terminal=terminal,
            member=member,
            receipt_no="R-3",
            amount="100.00",
            at=T + timedelta(hours=3),
            points_to_use=1,
        )
    assert ledger_snapshot() == before

    # when a credit smaller than the debt arrives
    points_give(member, 8, at=T + timedelta(hours=4))
    # then it only pays debt down
    assert account_of(member) == (-700, 0, 700)
    assert PointsLot.objects.filter(member=member).count() == 2
    assert ledger_check().ok

    # when the next purchase earns 1 000
    buy(store=store, terminal=terminal, member=member, receipt_no="R-4", amount="1000.00", at=T + timedelta(hours=5))
    # then 700 pay the debt and a lot opens only for the other 300
    assert account_of(member) == (300, 0, 0)
    earn = PointsEntry.objects.get(purchase__receipt_no="R-4")
    assert (earn.kind, earn.points, earn.balance_after) == ("earn", 1000, 300)
    new_lot = PointsLot.objects.get(entry=earn)
    assert (new_lot.original, new_lot.remaining) == (300, 300)
    assert ledger_check().ok


@pytest.mark.parametrize("claimed", [False, True], ids=["at the till", "claimed later"])
def test_points_that_pay_debt_are_not_reported_pending(store, terminal, member, settings, claimed):
    # given a clawback debt of 300 points, then a 7-day pending period
    clawback_debt(member, store, 300)
    settings.LOYALTY_POINTS_PENDING_DAYS = 7
    now = timezone.now()
    # when a ¥1,000 purchase earns 1 000 points (recorded with the member, or without and claimed)
    if claimed:
        buy(store=store, terminal=terminal, member=None, receipt_no="R-1", amount="1000.00", at=now)
        result = purchase_claim(member=member, store=store, receipt_no="R-1", at=now + timedelta(hours=1))
    else:
        result = buy(store=store, terminal=terminal, member=member, receipt_no="R-1", amount="1000.00", at=now)
    # then 300 paid the debt at once and only the other 700 wait, in the answer as in the account
    assert (result.balance, result.spendable, result.points_pending) == (700, 0, 700)
    assert account_of(member) == (700, 700, 0)
    lot = PointsLot.objects.get(entry__purchase__receipt_no="R-1")
    assert (lot.original, lot.pending_until) == (700, now + timedelta(days=7))
    assert ledger_check().ok


def test_refund_is_applied_for_a_frozen_member(store, terminal, member, django_user_model):
    # given
    buy(store=store, terminal=terminal, member=member, receipt_no="R-1", amount="100.00", at=T)
    member_freeze(member=member, by_user=django_user_model.objects.create_user(username="op"), reason="audit")
    # when
    result = _refund(store, terminal, "R-1", "F-1", "100.00", T + timedelta(days=1))
    # then
    assert (result.refund.points_reversed, result.balance) == (100, 0)
    assert account_of(member) == (0, 0, 0)
    assert ledger_check().ok


# -----------------------------------------------------------------------------
# Refusals
# -----------------------------------------------------------------------------
def test_refund_larger_than_refundable_is_refused_and_nothing_written(store, terminal, member):
    # given a ¥100 purchase
    buy(store=store, terminal=terminal, member=member, receipt_no="R-1", amount="100.00", at=T)
    before = ledger_snapshot()
    # when
    with pytest.raises(RefundExceedsPurchase) as refused:
        _refund(store, terminal, "R-1", "F-1", "100.01", T + timedelta(days=1))
    # then
    assert refused.value.code == "refund_exceeds_purchase"
    assert refused.value.detail == {"refundable": "100.00"}
    assert ledger_snapshot() == before

    # given ¥60 refunded
    _refund(store, terminal, "R-1", "F-1", "60.00", T + timedelta(days=1))
    before = ledger_snapshot()
    # when
    with pytest.raises(RefundExceedsPurchase) as refused:
        _refund(store, terminal, "R-1", "F-2", "40.01", T + timedelta(days=2))
    # then
    assert refused.value.detail == {"refundable": "40.00"}
    assert ledger_snapshot() == before
    assert account_of(member) == (40, 0, 0)
    assert ledger_check().ok


def test_duplicate_refund_number_is_refused_and_nothing_written(store, terminal, member):
    # given
    buy(store=store, terminal=terminal, member=member, receipt_no="R-1", amount="100.00", at=T)
    buy(store=store, terminal=terminal, member=member, receipt_no="R-2", amount="100.00", at=T)
    _refund(store, terminal, "R-1", "F-1", "10.00", T + timedelta(days=1))
    before = ledger_snapshot()
    # when the same refund is sent again, or its number reused for another receipt
    for receipt_no in ("R-1", "R-2"):
        with pytest.raises(DuplicateRefund) as refused:
            _refund(store, terminal, receipt_no, "F-1", "10.00", T + timedelta(days=1))
        # then
        assert refused.value.code == "duplicate_refund"
    assert ledger_snapshot() == before
    assert account_of(member) == (190, 0, 0)
    assert ledger_check().ok


def test_refund_of_unknown_receipt_is_refused(store, other_store, terminal, member):
    # given a purchase at another store
    buy(store=other_store, terminal=None, member=member, receipt_no="R-1", amount="100.00", at=T)
    before = ledger_snapshot()
    # when
    with pytest.raises(PurchaseNotFound):
        _refund(store, terminal, "R-1", "F-1", "10.00", T + timedelta(days=1))
    # then
    assert ledger_snapshot() == before
    assert ledger_check().ok


def test_refund_after_claim_of_a_partly_refunded_receipt_reverses_only_the_refunded_share(store, terminal, member):
    # given a ¥100 receipt without member, ¥40 refunded, then claimed: 60 points
    buy(store=store, terminal=terminal, member=None, receipt_no="R-1", amount="100.00", at=T)
    _refund(store, terminal, "R-1", "F-1", "40.00", T + timedelta(hours=1))
    claimed = purchase_claim(member=member, store=store, receipt_no="R-1", at=T + timedelta(days=1))
    assert claimed.balance == 60
    # when ¥30 more is refunded
    result = _refund(store, terminal, "R-1", "F-2", "30.00", T + timedelta(days=2))
    # then 30 points are reversed, not floor(60 × 70 %)
    assert result.refund.points_reversed == 30
    assert result.balance == 30
    # and the last ¥30 reverses the rest exactly
    last = _refund(store, terminal, "R-1", "F-3", "30.00", T + timedelta(days=3))
    assert last.refund.points_reversed == 30
    assert last.balance == 0
    assert ledger_check().ok


def test_refund_does_not_claw_back_points_that_already_expired(store, terminal, member):
    # given 100 points earned by a purchase that expired unspent
    from points.batch import points_expire_due

    buy(store=store, terminal=terminal, member=member, receipt_no="R-1", amount="100.00", at=T)
    points_expire_due(as_of=T + timedelta(days=800))
    assert account_of(member) == (0, 0, 0)
    # when the purchase is refunded (within any return window the chain allows)
    result = _refund(store, terminal, "R-1", "F-1", "100.00", T + timedelta(days=801))
    # then nothing is reversed: the member already lost those points once
    assert result.refund.points_reversed == 0
    assert result.refund.clawback == 0
    assert account_of(member) == (0, 0, 0)
    assert ledger_check().ok


def test_refund_of_another_members_purchase_touches_only_that_member(store, terminal, member):
    # given two members with points
    other = MemberFactory()
    buy(store=store, terminal=terminal, member=member, receipt_no="R-1", amount="100.00", at=T)
    buy(store=store, terminal=terminal, member=other, receipt_no="R-2", amount="300.00", at=T)
    # when
    _refund(store, terminal, "R-2", "F-1", "300.00", T + timedelta(days=1))
    # then
    assert account_of(member) == (100, 0, 0)
    assert account_of(other) == (0, 0, 0)
    assert ledger_check().ok


def test_lots_of_a_purchase_are_read_through_the_member(store, terminal, member, settings):
    # given a claimed receipt whose points are pending, and another member's
    # purchase (lots have no index on their entry: each lookup of an entry's
    # lots names the member, whose index finds them)
    settings.LOYALTY_POINTS_PENDING_DAYS = 7
    other = MemberFactory()
    buy(store=store, terminal=terminal, member=other, receipt_no="R-2", amount="300.00", at=T)
    buy(store=store, terminal=terminal, member=None, receipt_no="R-1", amount="100.00", at=T)
    with CaptureQueriesContext(connection) as queries:
        # when it is claimed (the "points earned" message reads the lot's
        # pending date) and then refunded (the reversal draws its lots first)
        purchase_claim(member=member, store=store, receipt_no="R-1", at=T + timedelta(days=1))
        result = _refund(store, terminal, "R-1", "F-1", "100.00", T + timedelta(days=2))
    # then the points came back out of the claimed lot, the other member's untouched
    assert result.refund.points_reversed == 100
    assert account_of(member) == (0, 0, 0)
    assert account_of(other) == (300, 300, 0)
    assert ledger_check().ok
    # and each lookup of lots by their entry named the member too
    by_entry = [
        q["sql"]
        for q in queries.captured_queries
        if 'FROM "points_pointslot"' in q["sql"] and '"points_pointslot"."entry_id"' in q["sql"]
    ]
    assert len(by_entry) == 2, by_entry
    assert all(f'"points_pointslot"."member_id" = {member.pk}' in sql for sql in by_entry), by_entry
