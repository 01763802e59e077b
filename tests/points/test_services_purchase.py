"""purchase_record, purchase_claim, pending points, tier upgrade at once, check-in."""

from datetime import timedelta
from decimal import Decimal

import pytest

from members.errors import MemberCodeAlreadyUsed, MemberCodeRequired, MemberFrozen
from members.models import Member, Tier, TierChange
from members.services import member_freeze
from points.batch import ledger_check, points_release_pending
from points.errors import (
    AlreadyCheckedIn,
    ClaimNotAllowed,
    DuplicateReceipt,
    InsufficientPoints,
    InvalidPaidAt,
    PointsOverCap,
)
from points.models import CheckIn, PointsEntry, PointsLot, Purchase
from points.services import member_check_in, purchase_claim, purchase_record
from tests.points.factories import (
    MemberFactory,
    account_of,
    allocations_of,
    buy,
    by_code,
    by_number,
    entries_of,
    ledger_snapshot,
    local,
    lots_of,
    member_in_tier,
    points_give,
)

pytestmark = pytest.mark.django_db

T = local(2026, 3, 1, 10, 0)


# -----------------------------------------------------------------------------
# Earning
# -----------------------------------------------------------------------------
def test_silver_purchase_earns_floor_of_amount_and_opens_one_lot(store, terminal, member):
    # given a silver member (x1.00) without points
    # when
    result = buy(store=store, terminal=terminal, member=member, receipt_no="R-1", amount="128.99", at=T)
    # then
    purchase = result.purchase
    assert (purchase.points_earned, purchase.points_used, purchase.cash_paid_by_points) == (128, 0, Decimal("0.00"))
    assert (result.balance, result.spendable, result.points_pending, result.tier_changed) == (128, 128, 0, False)
    assert account_of(member) == (128, 0, 0)
    assert entries_of(member) == [("earn", 128, 128, "purchase")]
    entry = PointsEntry.objects.get(member=member)
    assert (entry.purchase, entry.store, entry.terminal, entry.created_at) == (purchase, store, terminal, T)
    lot = PointsLot.objects.get(member=member)
    assert (lot.entry, lot.original, lot.remaining, lot.earned_at) == (entry, 128, 128, T)
    assert lot.expires_at == local(2027, 3, 2)  # valid through 2027-03-01, local time
    assert lot.pending_until is None
    assert ledger_check().ok


@pytest.mark.parametrize(
    ("tier_code", "amount", "expected"),
    [
        ("silver", "99.99", 99),
        ("gold", "99.99", 124),  # 124.9875
        ("platinum", "99.99", 149),  # 149.985
        ("gold", "8.00", 10),  # exact
        ("gold", "0.79", 0),  # 0.9875: nothing to earn
        ("platinum", "0.67", 1),  # 1.005
        ("platinum", "0.66", 0),  # 0.99
    ],
)
def test_earn_is_floor_of_amount_times_tier_multiplier(store, terminal, member, tier_code, amount, expected):
    # given
    member_in_tier(member, tier_code, since=T - timedelta(days=1))
    # when
    result = buy(store=store, terminal=terminal, member=member, receipt_no="R-1", amount=amount, at=T)
    # then
    assert result.purchase.points_earned == expected
    assert Purchase.objects.get(pk=result.purchase.pk).points_earned == expected
    if expected:
        assert account_of(member) == (expected, 0, 0)
        assert entries_of(member) == [("earn", expected, expected, "purchase")]
        assert [(original, remaining) for original, remaining, _ in lots_of(member)] == [(expected, expected)]
    else:
        assert entries_of(member) == []
        assert lots_of(member) == []
        assert account_of(member) == (0, 0, 0)
    assert ledger_check().ok


def test_earn_applies_base_rate_and_campaign_multiplier(store, terminal, member, settings):
    # given a gold member, base rate 2 points per ¥1 and a x1.5 points campaign
    from campaigns.models import Campaign

    settings.LOYALTY_POINTS_BASE_RATE = Decimal("2")
    Campaign.objects.create(
        name="x1.5",
        kind=Campaign.Kind.MULTIPLIER,
        status=Campaign.Status.ACTIVE,
        starts_at=T - timedelta(days=1),
        multiplier=Decimal("1.5"),
    )
    member_in_tier(member, "gold", since=T - timedelta(days=1))
    # when
    result = buy(store=store, terminal=terminal, member=member, receipt_no="R-1", amount="33.33", at=T)
    # then floor(33.33 × 2 × 1.25 × 1.5) = floor(124.9875)
    assert result.purchase.points_earned == 124
    assert Purchase.objects.get(pk=result.purchase.pk).multiplier == Decimal("1.5")
    assert account_of(member) == (124, 0, 0)
    assert ledger_check().ok


# -----------------------------------------------------------------------------
# Points as cash
# -----------------------------------------------------------------------------
def test_points_pay_part_of_the_bill_first_to_expire_first(store, terminal, member):
    # given two lots: 300 expiring sooner, 10 000 later
    early = points_give(member, 300, at=T - timedelta(days=60), expires_at=local(2026, 6, 1))
    late = points_give(member, 10_000, at=T - timedelta(days=30))
    # when 6 425 points (the 50 % cap of ¥128.50) pay ¥64.25
    result = buy(
        store=store, terminal=terminal, member=member, receipt_no="R-1", amount="128.50", at=T, points_to_use=6425
    )
    # then the cash paid by points is not earned on: floor(128.50 − 64.25)
    purchase = result.purchase
    assert (purchase.points_used, purchase.cash_paid_by_points, purchase.points_earned) == (6425, Decimal("64.25"), 64)
    assert result.balance == 10_300 - 6425 + 64
    assert account_of(member) == (3939, 0, 0)
    assert entries_of(member) == [
        ("bonus", 300, 300, "campaign"),
        ("bonus", 10_000, 10_300, "campaign"),
        ("redeem", -6425, 3875, "purchase"),
        ("earn", 64, 3939, "purchase"),
    ]
    redeem = PointsEntry.objects.get(member=member, kind="redeem")
    early_lot, late_lot = early.lots.get(), late.lots.get()
    assert allocations_of(redeem) == [(early_lot.pk, -300), (late_lot.pk, -6125)]
    assert [(original, remaining) for original, remaining, _ in lots_of(member)] == [(300, 0), (10_000, 3875), (64, 64)]
    assert ledger_check().ok


@pytest.mark.parametrize(("points", "cash"), [(1, Decimal("0.01")), (150, Decimal("1.50")), (199, Decimal("1.99"))])
def test_points_are_worth_a_cent_each(store, terminal, member, points, cash):
    # given
    points_give(member, 1000, at=T - timedelta(days=1))
    # when
    result = buy(
        store=store, terminal=terminal, member=member, receipt_no="R-1", amount="10.00", at=T, points_to_use=points
    )
    # then
    assert result.purchase.cash_paid_by_points == cash
    assert result.purchase.points_earned == int(Decimal("10.00") - cash)
    assert account_of(member) == (1000 - points + int(Decimal("10.00") - cash), 0, 0)
    assert ledger_check().ok


def test_points_over_the_bill_share_are_refused_and_nothing_written(store, terminal, member):
    # given 10 000 points; half of ¥128.50 is 6 425 points
    points_give(member, 10_000, at=T - timedelta(days=1))
    before = ledger_snapshot()
    # when
    with pytest.raises(PointsOverCap) as refused:
        buy(store=store, terminal=terminal, member=member, receipt_no="R-1", amount="128.50", at=T, points_to_use=6426)
    # then
    assert refused.value.code == "points_over_cap"
    assert refused.value.detail == {"max_points": 6425}
    assert ledger_snapshot() == before
    assert ledger_check().ok


def test_insufficient_points_refused_and_nothing_written(store, terminal, member):
    # given 300 points
    points_give(member, 300, at=T - timedelta(days=1))
    before = ledger_snapshot()
    # when
    with pytest.raises(InsufficientPoints) as refused:
        buy(store=store, terminal=terminal, member=member, receipt_no="R-1", amount="100.00", at=T, points_to_use=301)
    # then
    assert refused.value.code == "insufficient_points"
    assert refused.value.params == {"available": 300, "requested": 301}
    assert ledger_snapshot() == before
    assert not Purchase.objects.exists()
    assert account_of(member) == (300, 0, 0)
    assert ledger_check().ok


def test_expired_lot_not_yet_swept_cannot_pay(store, terminal, member):
    # given 500 points that expired the day before (the nightly job has not run yet)
    points_give(member, 500, at=T - timedelta(days=400), expires_at=local(2026, 3, 1))
    before = ledger_snapshot()
    # when
    with pytest.raises(InsufficientPoints):
        buy(store=store, terminal=terminal, member=member, receipt_no="R-1", amount="100.00", at=T, points_to_use=100)
    # then
    assert ledger_snapshot() == before
    assert ledger_check().ok


def test_using_points_by_member_number_needs_the_code(store, terminal, member):
    # given
    points_give(member, 500, at=T - timedelta(days=1))
    before = ledger_snapshot()
    # when
    with pytest.raises(MemberCodeRequired):
        purchase_record(
            store=store,
            terminal=terminal,
            receipt_no="R-1",
            amount=Decimal("100.00"),
            paid_at=T,
            now=T,
            identified=by_number(member),
            points_to_use=100,
        )
    # then
    assert ledger_snapshot() == before
    assert ledger_check().ok


# -----------------------------------------------------------------------------
# Refusals
# -----------------------------------------------------------------------------
def test_duplicate_receipt_at_the_same_store_is_refused(store, terminal, member):
    # given
    buy(store=store, terminal=terminal, member=member, receipt_no="R-1", amount="50.00", at=T)
    other = MemberFactory()
    before = ledger_snapshot()
    # when
    with pytest.raises(DuplicateReceipt) as refused:
        buy(store=store, terminal=terminal, member=other, receipt_no="R-1", amount="80.00", at=T + timedelta(hours=1))
    # then
    assert refused.value.code == "duplicate_receipt"
    assert ledger_snapshot() == before
    assert ledger_check().ok


def test_a_recorded_receipt_sent_again_is_a_duplicate_even_after_the_member_was_frozen(
    store, terminal, member, django_user_model
):
    # given a purchase recorded, then the member frozen
    buy(store=store, terminal=terminal, member=member, receipt_no="R-1", amount="50.00", at=T)
    operator = django_user_model.objects.create_user(username="op")
    member_freeze(member=member, by_user=operator, reason="fraud check")
    member.refresh_from_db()
    before = ledger_snapshot()
    # when the till sends the same receipt again (a retry after a timeout)
    with pytest.raises(DuplicateReceipt) as refused:
        buy(store=store, terminal=terminal, member=member, receipt_no="R-1", amount="50.00", at=T)
    # then it learns the receipt is recorded, not the member's state
    assert refused.value.code == "duplicate_receipt"
    # and a new receipt is refused for the frozen member with nothing written, the receipt neither
    with pytest.raises(MemberFrozen):
        buy(store=store, terminal=terminal, member=member, receipt_no="R-2", amount="50.00", at=T)
    assert ledger_snapshot() == before
    assert list(Purchase.objects.values_list("receipt_no", flat=True)) == ["R-1"]


def test_a_purchase_that_reaches_a_threshold_upgrades_from_the_spend_read_with_its_own_amount(store, terminal):
    # given a silver member 1 yuan below gold's threshold within the qualification period
    member = MemberFactory()
    gold = Tier.objects.get(code="gold")
    buy(store=store, terminal=terminal, member=member, receipt_no="R-1", amount=gold.threshold - 1, at=T)
    member.refresh_from_db()
    assert member.tier.code == "silver"
    # when a purchase of 1 yuan more
    result = buy(store=store, terminal=terminal, member=member, receipt_no="R-2", amount="1.00", at=T)
    # then the spend read in the same statement as the points saved counts it: gold at once
    assert (result.tier.code, result.tier_changed) == ("gold", True)
    member.refresh_from_db()
    assert member.tier == gold
    change = TierChange.objects.get(member=member, to_tier=gold)
    assert (change.reason, change.qualifying_spend) == ("upgrade", gold.threshold)
    assert Purchase.objects.get(receipt_no="R-2").points_earned == 1
    assert account_of(member)[0] == int(gold.threshold - 1) + 1


def test_same_receipt_number_at_another_store_is_a_new_purchase(store, other_store, terminal, member):
    # given
    buy(store=store, terminal=terminal, member=member, receipt_no="R-1", amount="50.00", at=T)
    # when
    result = buy(store=other_store, terminal=None, member=member, receipt_no="R-1", amount="80.00", at=T)
    # then
    assert result.purchase.store == other_store
    assert Purchase.objects.filter(receipt_no="R-1").count() == 2
    assert account_of(member) == (130, 0, 0)
    assert entries_of(member) == [("earn", 50, 50, "purchase"), ("earn", 80, 130, "purchase")]
    assert ledger_check().ok


def test_frozen_member_cannot_earn_or_spend_and_nothing_written(store, terminal, member, django_user_model):
    # given a member with points, then frozen
    points_give(member, 1000, at=T - timedelta(days=1))
    identified_code = by_code(member, T)
    operator = django_user_model.objects.create_user(username="op")
    member_freeze(member=member, by_user=operator, reason="fraud check")
    member.refresh_from_db()
    before = ledger_snapshot()
    # when earning by number
    with pytest.raises(MemberFrozen) as refused:
        buy(store=store, terminal=terminal, member=member, receipt_no="R-1", amount="50.00", at=T)
    # then
    assert refused.value.code == "member_frozen"
    assert ledger_snapshot() == before
    # when spending by code
    identified_code.member.refresh_from_db()
    with pytest.raises(MemberFrozen):
        purchase_record(
            store=store,
            terminal=terminal,
            receipt_no="R-2",
            amount=Decimal("50.00"),
            paid_at=T,
            now=T,
            identified=identified_code,
            points_to_use=100,
        )
    # then
    assert ledger_snapshot() == before
    assert account_of(member) == (1000, 0, 0)
    assert ledger_check().ok


def test_member_code_serves_one_purchase(store, terminal, member):
    # given a purchase made with the code shown at T
    points_give(member, 1000, at=T - timedelta(days=1))
    identified = by_code(member, T)
    purchase_record(
        store=store,
        terminal=terminal,
        receipt_no="R-1",
        amount=Decimal("50.00"),
        paid_at=T,
        now=T,
        identified=identified,
        points_to_use=100,
    )
    before = ledger_snapshot()
    # when the same code is scanned again for another bill
    with pytest.raises(MemberCodeAlreadyUsed) as refused:
        purchase_record(
            store=store,
            terminal=terminal,
            receipt_no="R-2",
            amount=Decimal("70.00"),
            paid_at=T,
            now=T,
            identified=by_code(member, T + timedelta(seconds=5)),
            points_to_use=100,
        )
    # then
    assert refused.value.code == "code_already_used"
    assert ledger_snapshot() == before
    assert account_of(member) == (1000 - 100 + 49, 0, 0)
    assert ledger_check().ok


# -----------------------------------------------------------------------------
# Claims
# -----------------------------------------------------------------------------
def test_purchase_without_member_is_claimed_once_within_the_window(store, terminal, member, settings):
    # given a purchase recorded without a member
    settings.LOYALTY_CLAIM_WINDOW_DAYS = 30
    member_in_tier(member, "gold", since=T - timedelta(days=1))
    anonymous = buy(store=store, terminal=terminal, member=None, receipt_no="R-1", amount="200.00", at=T)
    assert anonymous.purchase.member is None
    assert PointsEntry.objects.count() == 0
    claimed_at = T + timedelta(days=30)
    # when the member claims it on the last day of the window
    result = purchase_claim(member=member, store=store, receipt_no="R-1", at=claimed_at)
    # then it earns at the member's tier: 200 × 1.25
    purchase = Purchase.objects.get(pk=anonymous.purchase.pk)
    assert (purchase.member, purchase.tier.code, purchase.claimed_at, purchase.points_earned) == (
        member,
        "gold",
        claimed_at,
        250,
    )
    assert result.balance == 250
    assert account_of(member) == (250, 0, 0)
    assert entries_of(member) == [("earn", 250, 250, "claim")]
    entry = PointsEntry.objects.get(member=member)
    assert (entry.purchase, entry.created_at) == (purchase, claimed_at)
    assert ledger_check().ok

    # when it is claimed a second time, by the same or another member
    other = MemberFactory()
    before = ledger_snapshot()
    for claimant in (member, other):
        with pytest.raises(ClaimNotAllowed) as refused:
            purchase_claim(member=claimant, store=store, receipt_no="R-1", at=claimed_at)
        # then
        assert refused.value.detail == {"reason": "already_claimed"}
    assert ledger_snapshot() == before


def test_claim_after_the_window_is_refused(store, terminal, member, settings):
    # given
    settings.LOYALTY_CLAIM_WINDOW_DAYS = 30
    buy(store=store, terminal=terminal, member=None, receipt_no="R-1", amount="200.00", at=T)
    before = ledger_snapshot()
    # when
    with pytest.raises(ClaimNotAllowed) as refused:
        purchase_claim(member=member, store=store, receipt_no="R-1", at=T + timedelta(days=30, seconds=1))
    # then
    assert refused.value.code == "claim_not_allowed"
    assert refused.value.detail == {"reason": "too_old"}
    assert ledger_snapshot() == before
    assert ledger_check().ok


@pytest.mark.parametrize(("claimed_after", "pending"), [(timedelta(days=2), 200), (timedelta(days=8), 0)])
def test_claimed_points_are_pending_until_the_purchase_period_ends(
    store, terminal, member, settings, claimed_after, pending
):
    # given a 7-day pending period and a receipt without member
    settings.LOYALTY_POINTS_PENDING_DAYS = 7
    buy(store=store, terminal=terminal, member=None, receipt_no="R-1", amount="200.00", at=T)
    # when
    result = purchase_claim(member=member, store=store, receipt_no="R-1", at=T + claimed_after)
    # then the period runs from the purchase, not from the claim
    assert (result.balance, result.points_pending) == (200, pending)
    assert account_of(member) == (200, pending, 0)
    lot = PointsLot.objects.get(member=member)
    assert lot.pending_until == (T + timedelta(days=7) if pending else None)
    assert ledger_check().ok


def test_purchase_paid_too_long_ago_is_refused(store, terminal, member, settings):
    # given
    settings.LOYALTY_PAID_AT_MAX_AGE_DAYS = 7
    before = ledger_snapshot()
    # when
    with pytest.raises(InvalidPaidAt):
        purchase_record(
            store=store,
            terminal=terminal,
            receipt_no="R-1",
            amount=Decimal("50.00"),
            paid_at=T - timedelta(days=7, seconds=1),
            now=T,
            identified=by_number(member),
        )
    # then
    assert ledger_snapshot() == before


# -----------------------------------------------------------------------------
# Pending period
# -----------------------------------------------------------------------------
def test_pending_points_are_spendable_only_after_release(store, terminal, member, settings):
    # given a 7-day pending period
    settings.LOYALTY_POINTS_PENDING_DAYS = 7
    # when
    result = buy(store=store, terminal=terminal, member=member, receipt_no="R-1", amount="500.00", at=T)
    # then the points count in the balance but cannot be spent
    assert (result.balance, result.spendable, result.points_pending) == (500, 0, 500)
    assert account_of(member) == (500, 500, 0)
    lot = PointsLot.objects.get(member=member)
    assert lot.pending_until == T + timedelta(days=7)
    assert ledger_check().ok

    # when the member tries to spend them the next day
    before = ledger_snapshot()
    with pytest.raises(InsufficientPoints):
        buy(
            store=store,
            terminal=terminal,
            member=member,
            receipt_no="R-2",
            amount="100.00",
            at=T + timedelta(days=1),
            points_to_use=100,
        )
    # then
    assert ledger_snapshot() == before

    # when the release job runs just before and at the end of the period
    assert points_release_pending(now=T + timedelta(days=7, seconds=-1)) == 0
    assert account_of(member) == (500, 500, 0)
    assert points_release_pending(now=T + timedelta(days=7)) == 1
    # then
    assert account_of(member) == (500, 0, 0)
    lot.refresh_from_db()
    assert lot.pending_until is None
    assert points_release_pending(now=T + timedelta(days=8)) == 0
    assert ledger_check().ok

    # and they can be spent
    spent = buy(
        store=store,
        terminal=terminal,
        member=member,
        receipt_no="R-3",
        amount="100.00",
        at=T + timedelta(days=7, hours=1),
        points_to_use=100,
    )
    assert spent.purchase.points_used == 100
    assert account_of(member) == (500 - 100 + 99, 99, 0)  # the new 99 are pending in turn
    assert ledger_check().ok


# -----------------------------------------------------------------------------
# Tier upgrade at once
# -----------------------------------------------------------------------------
def test_purchase_crossing_gold_threshold_upgrades_at_once(store, terminal, member):
    # given ¥4 000 spent in the last 12 months
    buy(store=store, terminal=terminal, member=member, receipt_no="R-1", amount="4000.00", at=T - timedelta(days=300))
    # when a ¥1 000 purchase crosses ¥5 000
    result = buy(store=store, terminal=terminal, member=member, receipt_no="R-2", amount="1000.00", at=T)
    # then
    assert (result.tier.code, result.tier_changed) == ("gold", True)
    member.refresh_from_db()
    assert (member.tier.code, member.tier_since) == ("gold", T)
    change = TierChange.objects.filter(member=member).order_by("-pk").first()
    assert (change.from_tier.code, change.to_tier.code, change.reason, change.qualifying_spend) == (
        "silver",
        "gold",
        "upgrade",
        Decimal("5000.00"),
    )
    # the crossing purchase itself earned at the old tier
    assert result.purchase.points_earned == 1000
    assert Purchase.objects.get(pk=result.purchase.pk).tier.code == "silver"
    # and the next one earns at gold
    nxt = buy(
        store=store, terminal=terminal, member=member, receipt_no="R-3", amount="100.00", at=T + timedelta(hours=1)
    )
    assert (nxt.purchase.points_earned, nxt.tier_changed) == (125, False)
    assert account_of(member) == (5125, 0, 0)
    assert ledger_check().ok


def test_spend_older_than_12_months_does_not_count(store, terminal, member):
    # given ¥4 000 spent 13 months ago
    buy(store=store, terminal=terminal, member=member, receipt_no="R-1", amount="4000.00", at=T - timedelta(days=395))
    # when
    result = buy(store=store, terminal=terminal, member=member, receipt_no="R-2", amount="1000.00", at=T)
    # then
    assert (result.tier.code, result.tier_changed) == ("silver", False)
    assert TierChange.objects.filter(member=member, reason="upgrade").count() == 0
    assert ledger_check().ok


def test_large_purchase_goes_straight_to_platinum(store, terminal, member):
    # when
    result = buy(store=store, terminal=terminal, member=member, receipt_no="R-1", amount="20000.00", at=T)
    # then
    assert (result.tier.code, result.tier_changed) == ("platinum", True)
    member.refresh_from_db()
    assert member.tier == Tier.objects.get(code="platinum")
    assert list(
        TierChange.objects.filter(member=member, reason="upgrade").values_list("from_tier__code", "to_tier__code")
    ) == [("silver", "platinum")]
    assert ledger_check().ok


# -----------------------------------------------------------------------------
# Daily check-in
# -----------------------------------------------------------------------------
def test_check_in_once_per_local_day(member, settings):
    # given
    settings.LOYALTY_CHECK_IN_POINTS = 5
    late_evening = local(2026, 3, 1, 23, 50)  # 15:50 UTC
    after_midnight = local(2026, 3, 2, 0, 10)  # 16:10 UTC the same UTC day
    # when
    member_check_in(member=member, at=late_evening)
    member_check_in(member=member, at=after_midnight)
    before = ledger_snapshot()
    with pytest.raises(AlreadyCheckedIn):
        member_check_in(member=member, at=local(2026, 3, 2, 23, 59))
    # then
    assert ledger_snapshot() == before
    assert list(CheckIn.objects.filter(member=member).order_by("day").values_list("day", flat=True)) == [
        late_evening.date(),
        after_midnight.date(),
    ]
    assert account_of(member) == (10, 0, 0)
    assert entries_of(member) == [("bonus", 5, 5, "check_in"), ("bonus", 5, 10, "check_in")]
    assert ledger_check().ok


def test_frozen_member_cannot_check_in(member, django_user_model):
    # given
    member_freeze(member=member, by_user=django_user_model.objects.create_user(username="op"), reason="audit")
    member.refresh_from_db()
    # when
    with pytest.raises(MemberFrozen):
        member_check_in(member=member, at=T)
    # then
    assert not CheckIn.objects.exists()
    assert not PointsEntry.objects.exists()
    assert Member.objects.get(pk=member.pk).status == "frozen"


def _purchase_rows_written() -> tuple[int, int]:
    """Rows of points_purchase inserted and updated in this transaction so far."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT n_tup_ins, n_tup_upd FROM pg_stat_xact_user_tables WHERE relname = 'points_purchase'")
        row = cursor.fetchone()
    return (row[0], row[1]) if row else (0, 0)


@pytest.mark.parametrize("points_to_use", [0, 500])
def test_without_a_campaign_the_purchase_row_is_written_once_with_its_points(store, terminal, member, points_to_use):
    # given a member with points and no campaign running
    points_give(member, 1000, at=T - timedelta(days=1))
    before = _purchase_rows_written()
    # when buying, with or without points paying part of the bill
    result = buy(
        store=store,
        terminal=terminal,
        member=member,
        receipt_no="R-1",
        amount="100.00",
        at=T,
        points_to_use=points_to_use,
    )
    # then the purchase was inserted with its points and not updated afterwards
    inserted, updated = _purchase_rows_written()
    assert (inserted - before[0], updated - before[1]) == (1, 0)
    stored = Purchase.objects.values_list("points_earned", "points_used", "cash_paid_by_points", "multiplier").get(
        pk=result.purchase.pk
    )
    cash = Decimal(points_to_use) / 100
    assert stored == (int(Decimal("100.00") - cash), points_to_use, cash, Decimal("1"))
    assert (result.purchase.points_earned, result.purchase.points_used) == (stored[0], stored[1])


def test_a_campaign_that_changes_the_points_updates_the_purchase_row(store, terminal, member):
    # given double points running
    from tests.campaigns.factories import CampaignFactory

    CampaignFactory()
    before = _purchase_rows_written()
    # when buying
    result = buy(store=store, terminal=terminal, member=member, receipt_no="R-1", amount="100.00", at=T)
    # then the row inserted with the plain points holds the campaign's
    inserted, updated = _purchase_rows_written()
    assert (inserted - before[0], updated - before[1]) == (1, 1)
    stored = Purchase.objects.values_list("points_earned", "multiplier").get(pk=result.purchase.pk)
    assert stored == (200, Decimal("2"))
