"""Nightly jobs: expiry, tier evaluation, ledger check (and the append-only ledger)."""

from datetime import timedelta
from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from loyalty.models import Heartbeat
from members.models import Member, Tier, TierChange
from members.services import member_set_tier
from points.batch import ledger_check, points_expire_due, tiers_evaluate
from points.models import PointsAccount, PointsAllocation, PointsEntry, PointsLot, Purchase
from points.services import expiry_for, purchase_refund
from tests.points.factories import (
    MemberFactory,
    OperatorFactory,
    account_of,
    allocations_of,
    buy,
    entries_of,
    ledger_snapshot,
    local,
    lots_of,
    member_in_tier,
    points_give,
)

pytestmark = pytest.mark.django_db

LAST_EVENING_2025 = local(2025, 12, 31, 23, 30)  # 15:30 UTC on 31 December
FIRST_MORNING_2026 = local(2026, 1, 1, 0, 30)  # 16:30 UTC, still 31 December in UTC


def _expired(as_of):
    result = points_expire_due(as_of=as_of)
    return (result.members, result.lots, result.points)


# -----------------------------------------------------------------------------
# Expiry dates
# -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("policy", "earned_at", "expires_at"),
    [
        ("rolling", LAST_EVENING_2025, local(2027, 1, 1)),
        ("rolling", FIRST_MORNING_2026, local(2027, 1, 2)),
        ("rolling", local(2026, 1, 31, 23, 30), local(2027, 2, 1)),
        ("rolling", local(2026, 2, 1, 0, 30), local(2027, 2, 2)),
        ("rolling", local(2024, 2, 29, 12), local(2025, 3, 1)),  # no 29 February in 2025
        ("year_end", LAST_EVENING_2025, local(2027, 1, 1)),
        ("year_end", FIRST_MORNING_2026, local(2028, 1, 1)),
        ("year_end", local(2026, 6, 15), local(2028, 1, 1)),
    ],
)
def test_expiry_is_local_midnight_after_the_last_valid_local_day(settings, policy, earned_at, expires_at):
    # given
    settings.LOYALTY_POINTS_EXPIRY_POLICY = policy
    settings.LOYALTY_POINTS_EXPIRY_MONTHS = 12
    # when / then
    assert expiry_for(earned_at) == expires_at


def test_rolling_expiry_across_the_year_boundary_in_local_time(store, terminal, member):
    # given 100 points earned 31 December 23:30 and 200 points 1 January 00:30, Shanghai time
    buy(store=store, terminal=terminal, member=member, receipt_no="R-1", amount="100.00", at=LAST_EVENING_2025)
    buy(store=store, terminal=terminal, member=member, receipt_no="R-2", amount="200.00", at=FIRST_MORNING_2026)
    assert [expires for _, _, expires in lots_of(member)] == [local(2027, 1, 1), local(2027, 1, 2)]
    # when / then: the first lot is valid through 31 December 2026, the second through 1 January 2027
    assert _expired(local(2026, 12, 31, 23, 59, 59)) == (0, 0, 0)
    assert _expired(local(2027, 1, 1)) == (1, 1, 100)
    assert account_of(member) == (200, 0, 0)
    assert _expired(local(2027, 1, 1, 23, 59, 59)) == (0, 0, 0)
    assert _expired(local(2027, 1, 2)) == (1, 1, 200)
    assert account_of(member) == (0, 0, 0)
    assert entries_of(member) == [
        ("earn", 100, 100, "purchase"),
        ("earn", 200, 300, "purchase"),
        ("expire", -100, 200, "expiry"),
        ("expire", -200, 0, "expiry"),
    ]
    assert list(PointsEntry.objects.filter(kind="expire").order_by("pk").values_list("reference", flat=True)) == [
        "expiry:2027-01-01",
        "expiry:2027-01-02",
    ]
    assert ledger_check().ok


def test_year_end_expiry_across_the_year_boundary_in_local_time(store, terminal, member, settings):
    # given the year-end policy
    settings.LOYALTY_POINTS_EXPIRY_POLICY = "year_end"
    buy(store=store, terminal=terminal, member=member, receipt_no="R-1", amount="100.00", at=LAST_EVENING_2025)
    buy(store=store, terminal=terminal, member=member, receipt_no="R-2", amount="200.00", at=FIRST_MORNING_2026)
    assert [expires for _, _, expires in lots_of(member)] == [local(2027, 1, 1), local(2028, 1, 1)]
    # when / then
    assert _expired(local(2026, 12, 31, 23, 59, 59)) == (0, 0, 0)
    assert _expired(local(2027, 1, 1)) == (1, 1, 100)
    assert _expired(local(2027, 12, 31, 23, 59, 59)) == (0, 0, 0)
    assert account_of(member) == (200, 0, 0)
    assert _expired(local(2028, 1, 1)) == (1, 1, 200)
    assert account_of(member) == (0, 0, 0)
    assert ledger_check().ok


def test_rolling_expiry_across_the_month_boundary_in_local_time(store, terminal, member):
    # given points earned either side of local midnight between January and February
    buy(store=store, terminal=terminal, member=member, receipt_no="R-1", amount="10.00", at=local(2026, 1, 31, 23, 30))
    buy(store=store, terminal=terminal, member=member, receipt_no="R-2", amount="20.00", at=local(2026, 2, 1, 0, 30))
    # when / then
    assert _expired(local(2027, 1, 31, 23, 59)) == (0, 0, 0)
    assert _expired(local(2027, 2, 1)) == (1, 1, 10)
    assert _expired(local(2027, 2, 2)) == (1, 1, 20)
    assert ledger_check().ok


# -----------------------------------------------------------------------------
# points_expire_due
# -----------------------------------------------------------------------------
def test_expiry_writes_one_entry_per_member_with_an_allocation_per_lot(store, terminal, member):
    # given member A: three lots due (one partly spent) and one not; member B: one lot due; C: none due
    due = local(2027, 1, 1)
    points_give(member, 100, at=local(2025, 6, 1), expires_at=local(2026, 12, 1)).lots.get()
    a2 = points_give(member, 200, at=local(2025, 7, 1), expires_at=local(2026, 12, 15)).lots.get()
    a3 = points_give(member, 300, at=local(2025, 8, 1), expires_at=due).lots.get()
    a4 = points_give(member, 400, at=local(2025, 9, 1), expires_at=local(2027, 1, 2)).lots.get()
    buy(
        store=store,
        terminal=terminal,
        member=member,
        receipt_no="R-1",
        amount="100.00",
        at=local(2025, 10, 1),
        points_to_use=150,
    )  # 100 from a1, 50 from a2; earns 98 expiring 2026-10-02
    other = MemberFactory()
    b1 = points_give(other, 70, at=local(2025, 6, 1), expires_at=local(2026, 6, 1)).lots.get()
    third = MemberFactory()
    points_give(third, 50, at=local(2025, 6, 1), expires_at=local(2027, 6, 1))
    assert account_of(member) == (1000 - 150 + 98, 0, 0)
    earn_lot = PointsLot.objects.get(member=member, entry__kind="earn")

    # when, one member per batch
    result = points_expire_due(as_of=due, batch_size=1)

    # then
    assert (result.members, result.lots, result.points, result.batches) == (2, 4, 150 + 300 + 98 + 70, 2)
    entry_a = PointsEntry.objects.get(member=member, kind="expire")
    assert (entry_a.points, entry_a.balance_after, entry_a.source) == (-(150 + 300 + 98), 400, "expiry")
    assert sorted(allocations_of(entry_a)) == sorted([(a2.pk, -150), (a3.pk, -300), (earn_lot.pk, -98)])
    entry_b = PointsEntry.objects.get(member=other, kind="expire")
    assert (entry_b.points, entry_b.balance_after) == (-70, 0)
    assert allocations_of(entry_b) == [(b1.pk, -70)]
    assert account_of(member) == (400, 0, 0)
    assert account_of(other) == (0, 0, 0)
    assert account_of(third) == (50, 0, 0)
    assert [(original, remaining) for original, remaining, _ in lots_of(member)] == [
        (100, 0),
        (200, 0),
        (300, 0),
        (400, 400),
        (98, 0),
    ]
    assert a4.pk == PointsLot.objects.get(member=member, remaining__gt=0).pk
    assert PointsEntry.objects.filter(kind="expire").count() == 2
    assert ledger_check().ok

    # when the job runs again
    before = ledger_snapshot()
    again = points_expire_due(as_of=due, batch_size=1)
    # then
    assert (again.members, again.lots, again.points, again.batches) == (0, 0, 0, 0)
    assert ledger_snapshot() == before
    assert ledger_check().ok


def test_expiry_reports_where_its_longest_batch_went_and_logs_slow_batches(member, monkeypatch, caplog):
    # given two members with a lot due each, and every batch counted as slow
    import points.batch

    monkeypatch.setattr(points.batch, "SLOW_BATCH_SECONDS", 0.0)
    due = local(2027, 1, 1)
    points_give(member, 100, at=local(2025, 6, 1), expires_at=local(2026, 12, 1))
    points_give(MemberFactory(), 70, at=local(2025, 6, 1), expires_at=local(2026, 6, 1))
    # when, one member per batch
    with caplog.at_level("WARNING", logger="points.batch"):
        result = points_expire_due(as_of=due, batch_size=1)
    # then the longest batch is named with its phases, which add up to its time
    longest = result.longest_batch
    assert longest["batch"] in (1, 2)
    assert longest["lots"] == 1
    phases = longest["locks"] + longest["statement"] + longest["commit"]
    assert abs(phases - result.max_batch_seconds) < 0.005
    # and each slow batch was logged with its phases
    logged = [r.getMessage() for r in caplog.records if "points expiry: batch" in r.getMessage()]
    assert len(logged) == 2
    assert all("accounts' locks" in m and "statement" in m and "commit" in m for m in logged), logged


def test_pending_lots_that_expire_lower_pending_too(store, terminal, member, settings):
    # given pending points whose release never ran
    settings.LOYALTY_POINTS_PENDING_DAYS = 7
    buy(store=store, terminal=terminal, member=member, receipt_no="R-1", amount="300.00", at=local(2025, 3, 1, 12))
    points_give(member, 40, at=local(2025, 3, 2), expires_at=local(2027, 1, 1))
    assert account_of(member) == (340, 300, 0)
    # when
    assert _expired(local(2026, 3, 2)) == (1, 1, 300)
    # then
    assert account_of(member) == (40, 0, 0)
    entry = PointsEntry.objects.get(member=member, kind="expire")
    assert (entry.points, entry.balance_after) == (-300, 40)
    assert ledger_check().ok


def test_expire_points_command_expires_as_of_local_midnight(store, terminal, member):
    # given 100 points valid through 31 December 2026
    buy(store=store, terminal=terminal, member=member, receipt_no="R-1", amount="100.00", at=LAST_EVENING_2025)
    out = StringIO()
    # when
    call_command("expire_points", "--as-of", "2026-12-31", stdout=out)
    call_command("expire_points", "--as-of", "2027-01-01", stdout=out)
    # then
    assert "Expired 0 points" in out.getvalue()
    assert "Expired 100 points in 1 lots of 1 members" in out.getvalue()
    assert account_of(member) == (0, 0, 0)
    assert ledger_check().ok


# -----------------------------------------------------------------------------
# tiers_evaluate
# -----------------------------------------------------------------------------
def _tier_changes(member):
    return list(
        TierChange.objects.filter(member=member)
        .exclude(reason="enrolment")
        .order_by("pk")
        .values_list("from_tier__code", "to_tier__code", "reason", "qualifying_spend")
    )


def _evaluate(as_of, batch_size=None):
    result = tiers_evaluate(as_of=as_of, batch_size=batch_size)
    return (result.upgraded, result.downgraded)


def test_downgrade_waits_for_the_tier_validity(store, terminal, member):
    # given gold since 2025-10-01 and only ¥1 000 spent since
    member_in_tier(member, "gold", since=local(2025, 10, 1))
    buy(store=store, terminal=terminal, member=member, receipt_no="R-1", amount="1000.00", at=local(2025, 10, 1, 12))
    # when evaluated before the 12 months of validity are over
    assert _evaluate(local(2026, 9, 30, 23, 59)) == (0, 0)
    # then
    member.refresh_from_db()
    assert member.tier.code == "gold"
    # when evaluated once they are over
    assert _evaluate(local(2026, 10, 1)) == (0, 1)
    # then
    member.refresh_from_db()
    assert (member.tier.code, member.tier_since) == ("silver", local(2026, 10, 1))
    assert _tier_changes(member) == [("gold", "silver", "downgrade", Decimal("1000.00"))]
    assert TierChange.objects.get(member=member, reason="downgrade").note == "evaluation as of 2026-10-01"
    assert ledger_check().ok


def test_downgrade_drops_one_tier_per_run_and_rerun_changes_nothing(member):
    # given platinum since 2024-01-01 with no spend
    member_in_tier(member, "platinum", since=local(2024, 1, 1))
    # when
    assert _evaluate(local(2025, 6, 1)) == (0, 1)
    # then platinum → gold, not silver
    member.refresh_from_db()
    assert (member.tier.code, member.tier_since) == ("gold", local(2025, 6, 1))
    snapshot = (
        list(Member.objects.values_list("pk", "tier_id", "tier_since", "updated_at")),
        TierChange.objects.count(),
    )
    # when the same evaluation runs again
    assert _evaluate(local(2025, 6, 1)) == (0, 0)
    # then nothing is written
    assert (
        list(Member.objects.values_list("pk", "tier_id", "tier_since", "updated_at")),
        TierChange.objects.count(),
    ) == (snapshot)
    # and gold is kept for its own validity before dropping to silver
    assert _evaluate(local(2026, 5, 31)) == (0, 0)
    assert _evaluate(local(2026, 6, 1)) == (0, 1)
    member.refresh_from_db()
    assert member.tier.code == "silver"
    assert _tier_changes(member) == [
        ("platinum", "gold", "downgrade", Decimal("0.00")),
        ("gold", "silver", "downgrade", Decimal("0.00")),
    ]
    assert _evaluate(local(2027, 6, 1)) == (0, 0)


def test_manual_tier_is_kept_until_its_override_ends(member):
    # given platinum set by an operator, kept for 18 months (longer than its 12-month validity)
    now = timezone.now()
    override_until = now + timedelta(days=548)
    member_set_tier(
        member=member,
        tier=Tier.objects.get(code="platinum"),
        by_user=OperatorFactory(),
        reason="VIP",
        override_until=override_until,
    )
    # when evaluated after the validity but before the override ends
    assert _evaluate(now + timedelta(days=400)) == (0, 0)
    # then
    member.refresh_from_db()
    assert (member.tier.code, member.tier_override_until) == ("platinum", override_until)
    # when evaluated after the override ends
    assert _evaluate(override_until + timedelta(days=1)) == (0, 1)
    # then one tier down, and the override is gone
    member.refresh_from_db()
    assert (member.tier.code, member.tier_override_until) == ("gold", None)
    assert _tier_changes(member)[-1] == ("platinum", "gold", "override_expired", Decimal("0.00"))
    # and a re-run writes nothing
    assert _evaluate(override_until + timedelta(days=1)) == (0, 0)


def test_upgrades_from_imported_spend(store, member):
    # given purchases imported without going through the till (no upgrade at once)
    gold_member = MemberFactory()
    refunded_member = MemberFactory()
    as_of = local(2026, 3, 1)
    Purchase.objects.bulk_create(
        [
            Purchase(
                store=store, receipt_no="I-1", member=member, amount=Decimal("12000.00"), paid_at=local(2025, 6, 1)
            ),
            Purchase(
                store=store, receipt_no="I-2", member=member, amount=Decimal("8000.00"), paid_at=local(2026, 2, 1)
            ),
            Purchase(
                store=store,
                receipt_no="I-3",
                member=gold_member,
                amount=Decimal("5000.00"),
                paid_at=local(2026, 2, 28, 23, 59),
            ),
            Purchase(
                store=store,
                receipt_no="I-4",
                member=refunded_member,
                amount=Decimal("6000.00"),
                refunded_amount=Decimal("1000.01"),
                paid_at=local(2026, 1, 1),
            ),
            # older than 12 months: does not count
            Purchase(
                store=store,
                receipt_no="I-5",
                member=refunded_member,
                amount=Decimal("9000.00"),
                paid_at=local(2025, 3, 1),
            ),
        ]
    )
    # when, one member id per batch
    assert _evaluate(as_of, batch_size=1) == (2, 0)
    # then ¥20 000 goes straight to platinum; net spend below ¥5 000 stays silver
    assert _tier_changes(member) == [("silver", "platinum", "upgrade", Decimal("20000.00"))]
    assert _tier_changes(gold_member) == [("silver", "gold", "upgrade", Decimal("5000.00"))]
    assert _tier_changes(refunded_member) == []
    member.refresh_from_db()
    assert (member.tier.code, member.tier_since) == ("platinum", as_of)
    # and a re-run writes nothing
    count = TierChange.objects.count()
    assert _evaluate(as_of) == (0, 0)
    assert TierChange.objects.count() == count


def test_evaluate_tiers_command_evaluates_as_of_local_midnight(member):
    # given platinum since 2024-06-01 00:00 local, without spend
    member_in_tier(member, "platinum", since=local(2024, 6, 1))
    out = StringIO()
    # when
    call_command("evaluate_tiers", "--as-of", "2025-05-31", stdout=out)
    call_command("evaluate_tiers", "--as-of", "2025-06-01", stdout=out)
    # then
    assert out.getvalue().splitlines() == [
        "Tiers as of 2025-05-31: 0 upgraded, 0 downgraded.",
        "Tiers as of 2025-06-01: 0 upgraded, 1 downgraded.",
    ]
    member.refresh_from_db()
    assert (member.tier.code, member.tier_since) == ("gold", local(2025, 6, 1))


# -----------------------------------------------------------------------------
# Ledger check
# -----------------------------------------------------------------------------
@pytest.fixture
def ledger(store, terminal, member, settings):
    """Three members covering each state a healthy ledger can be in:
    ``spender`` has spent and partly expired lots, ``debtor`` owes a clawback,
    ``waiter`` has pending points."""
    spender = member
    points_give(spender, 1000, at=local(2025, 1, 10), expires_at=local(2026, 1, 10))
    points_give(spender, 600, at=local(2025, 6, 1))
    buy(
        store=store,
        terminal=terminal,
        member=spender,
        receipt_no="S-1",
        amount="100.00",
        at=local(2025, 6, 2),
        points_to_use=1200,
    )  # 1 000 from the first lot, 200 from the second; earns 88
    points_expire_due(as_of=local(2026, 1, 10))  # nothing left in the first lot
    points_give(spender, 5, at=local(2025, 1, 11), expires_at=local(2025, 12, 1))
    points_expire_due(as_of=local(2025, 12, 1))

    debtor = MemberFactory()
    buy(store=store, terminal=terminal, member=debtor, receipt_no="D-1", amount="1000.00", at=local(2026, 3, 1))
    buy(
        store=store,
        terminal=terminal,
        member=debtor,
        receipt_no="D-2",
        amount="100.00",
        at=local(2026, 3, 2),
        points_to_use=900,
    )
    purchase_refund(
        store=store,
        terminal=terminal,
        receipt_no="D-1",
        refund_no="F-1",
        amount=Decimal("1000.00"),
        at=local(2026, 3, 3),
    )

    settings.LOYALTY_POINTS_PENDING_DAYS = 7
    waiter = MemberFactory()
    buy(store=store, terminal=terminal, member=waiter, receipt_no="W-1", amount="100.00", at=local(2026, 3, 1))

    assert account_of(spender) == (1600 - 1200 + 88, 0, 0)
    assert account_of(debtor) == (-809, 0, 809)
    assert account_of(waiter) == (100, 100, 0)
    return {"spender": spender, "debtor": debtor, "waiter": waiter}


def test_ledger_check_finds_nothing_on_a_healthy_ledger_and_records_it(ledger):
    # when
    report = ledger_check()
    # then
    assert (report.ok, report.count, report.violations, report.checked_accounts) == (True, 0, {}, 3)
    heartbeat = Heartbeat.objects.get(name="check_ledger")
    assert heartbeat.detail == {"ok": True, "violations": 0, "checks": {}, "accounts": 3}


def _lot(member, **filters):
    return PointsLot.objects.filter(member=member, **filters).order_by("pk").first().pk


# Deferred foreign-key checks must run before a constraint can be dropped in
# the test's transaction (the drop is rolled back with it).
SET_IMMEDIATE = "SET CONSTRAINTS ALL IMMEDIATE"

# Each corruption (raw SQL behind the services' back) with the checks that must see it.
CORRUPTIONS = {
    "balance_changed": (
        lambda ids: [f"UPDATE points_pointsaccount SET balance = balance + 1 WHERE member_id = {ids['spender']}"],
        {"balance_differs_from_entries", "balance_differs_from_lots", "last_entry_balance_differs"},
    ),
    "pending_changed": (
        lambda ids: [f"UPDATE points_pointsaccount SET pending = pending + 1 WHERE member_id = {ids['spender']}"],
        {"pending_differs_from_lots"},
    ),
    "pending_lot_released_behind_the_account": (
        lambda ids: [f"UPDATE points_pointslot SET pending_until = NULL WHERE member_id = {ids['waiter']}"],
        {"pending_differs_from_lots"},
    ),
    "lot_made_pending_behind_the_account": (
        lambda ids: [
            f"UPDATE points_pointslot SET pending_until = now() + interval '1 day' WHERE id = {ids['spender_lot']}"
        ],
        {"pending_differs_from_lots"},
    ),
    "lot_remaining_changed": (
        lambda ids: [f"UPDATE points_pointslot SET remaining = remaining - 1 WHERE id = {ids['spender_lot']}"],
        {"balance_differs_from_lots", "lot_differs_from_allocations"},
    ),
    "lot_original_changed": (
        lambda ids: [f"UPDATE points_pointslot SET original = original + 1 WHERE id = {ids['spender_lot']}"],
        {"lot_differs_from_allocations"},
    ),
    "lot_moved_to_another_member": (
        lambda ids: [f"UPDATE points_pointslot SET member_id = {ids['waiter']} WHERE id = {ids['spender_lot']}"],
        {"balance_differs_from_lots"},
    ),
    "lot_deleted": (
        lambda ids: [
            SET_IMMEDIATE,
            "ALTER TABLE points_pointslot DISABLE TRIGGER points_lot_no_delete",
            f"DELETE FROM points_pointslot WHERE id = {ids['unallocated_lot']}",
        ],
        {"balance_differs_from_lots"},
    ),
    "allocated_lot_deleted": (
        lambda ids: [
            SET_IMMEDIATE,
            "ALTER TABLE points_pointslot DISABLE TRIGGER points_lot_no_delete",
            f"DELETE FROM points_pointslot WHERE id = {ids['spender_lot']}",
        ],
        {"balance_differs_from_lots", "allocation_without_entry_or_lot"},
    ),
    "allocation_to_no_lot": (
        lambda ids: [
            "INSERT INTO points_pointsallocation (entry_id, lot_id, points) "
            f"VALUES ({ids['redeem_entry']}, 987654321, -1)"
        ],
        {"allocation_without_entry_or_lot", "debit_differs_from_allocations"},
    ),
    "allocation_to_no_entry": (
        lambda ids: [
            "INSERT INTO points_pointsallocation (entry_id, lot_id, points) "
            f"VALUES (987654321, {ids['spender_lot']}, -1)"
        ],
        {"allocation_without_entry_or_lot", "lot_differs_from_allocations"},
    ),
    "account_deleted": (
        lambda ids: [f"DELETE FROM points_pointsaccount WHERE member_id = {ids['spender']}"],
        {"entries_without_account"},
    ),
    "debtor_lot_refilled": (
        lambda ids: [f"UPDATE points_pointslot SET remaining = 1 WHERE id = {ids['debtor_lot']}"],
        {"balance_differs_from_lots", "debt_with_open_lots", "lot_differs_from_allocations"},
    ),
    "negative_balance_without_debt": (
        lambda ids: [
            SET_IMMEDIATE,
            "ALTER TABLE points_pointsaccount DROP CONSTRAINT account_spendable_non_negative",
            f"UPDATE points_pointsaccount SET balance = -5 WHERE member_id = {ids['spender']}",
        ],
        {
            "balance_differs_from_entries",
            "balance_differs_from_lots",
            "last_entry_balance_differs",
            "negative_balance_without_debt",
        },
    ),
    "lot_above_its_original": (
        lambda ids: [
            SET_IMMEDIATE,
            "ALTER TABLE points_pointslot DROP CONSTRAINT lot_remaining_in_range",
            f"UPDATE points_pointslot SET remaining = original + 1 WHERE id = {ids['unallocated_lot']}",
        ],
        {"balance_differs_from_lots", "lot_out_of_range", "lot_differs_from_allocations"},
    ),
    "lot_below_zero": (
        lambda ids: [
            SET_IMMEDIATE,
            "ALTER TABLE points_pointslot DROP CONSTRAINT lot_remaining_in_range",
            f"UPDATE points_pointslot SET remaining = -1 WHERE id = {ids['debtor_lot']}",
        ],
        {"balance_differs_from_lots", "lot_out_of_range", "lot_differs_from_allocations"},
    ),
    "allocation_added_to_a_debit": (
        lambda ids: [
            "INSERT INTO points_pointsallocation (entry_id, lot_id, points) "
            f"VALUES ({ids['redeem_entry']}, {ids['spender_lot']}, -1)"
        ],
        {"debit_differs_from_allocations", "lot_differs_from_allocations"},
    ),
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_ledger_check_finds_each_kind_of_corruption(ledger, corruption):
    # given a healthy ledger corrupted behind the services' back
    spender, debtor, waiter = ledger["spender"], ledger["debtor"], ledger["waiter"]
    ids = {
        "spender": spender.pk,
        "debtor": debtor.pk,
        "waiter": waiter.pk,
        "spender_lot": _lot(spender, remaining__gt=0, entry__kind="bonus"),  # drawn from, still open
        "unallocated_lot": _lot(spender, entry__kind="earn"),  # never drawn from
        "debtor_lot": _lot(debtor, entry__kind="earn"),
        "redeem_entry": PointsEntry.objects.get(member=spender, kind="redeem").pk,
    }
    assert PointsAllocation.objects.filter(lot_id=ids["unallocated_lot"]).count() == 0
    statements, expected = CORRUPTIONS[corruption]
    with connection.cursor() as cursor:
        for sql in statements(ids):
            cursor.execute(sql)
    # when
    report = ledger_check()
    # then
    assert set(report.violations) == expected
    assert not report.ok
    heartbeat = Heartbeat.objects.get(name="check_ledger")
    assert heartbeat.detail["ok"] is False
    assert heartbeat.detail["violations"] == report.count > 0


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE points_pointsentry SET points = points + 1",
        "UPDATE points_pointsentry SET reason = 'edited'",
        "DELETE FROM points_pointsentry",
        "UPDATE points_pointsallocation SET points = points - 1",
        "DELETE FROM points_pointsallocation",
        "DELETE FROM points_pointslot",
        "DELETE FROM points_pointslot WHERE remaining = 0",
    ],
)
def test_entries_and_allocations_are_append_only(ledger, sql):
    # given
    before = ledger_snapshot()
    # when
    with pytest.raises(DatabaseError, match="ledger_immutable"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql)
    # then
    assert ledger_snapshot() == before
    assert ledger_check().ok


def test_the_orm_cannot_change_an_entry_either(ledger):
    # given an entry without lots (a debit)
    entry = PointsEntry.objects.filter(kind="redeem").first()
    before = ledger_snapshot()
    # when / then
    with pytest.raises(DatabaseError, match="ledger_immutable"), transaction.atomic():
        PointsEntry.objects.filter(pk=entry.pk).update(points=-1)
    with pytest.raises(DatabaseError, match="ledger_immutable"), transaction.atomic():
        entry.allocations.all().delete()
    assert ledger_snapshot() == before
    assert ledger_check().ok


def test_check_ledger_command_succeeds_on_a_healthy_ledger(ledger):
    # given
    out = StringIO()
    # when
    call_command("check_ledger", stdout=out)
    # then
    assert out.getvalue().strip().endswith("Ledger OK: 3 accounts, 0 violations.")
    assert Heartbeat.objects.get(name="check_ledger").detail["ok"] is True


def test_check_ledger_command_fails_naming_the_violations(ledger):
    # given a corrupted balance
    PointsAccount.objects.filter(pk=ledger["spender"].pk).update(balance=1)
    out = StringIO()
    # when
    with pytest.raises(CommandError, match="3 ledger violations found"):
        call_command("check_ledger", stdout=out)
    # then
    assert "balance_differs_from_entries: 1" in out.getvalue()
    assert "balance_differs_from_lots: 1" in out.getvalue()
    assert "last_entry_balance_differs: 1" in out.getvalue()
    heartbeat = Heartbeat.objects.get(name="check_ledger")
    assert heartbeat.detail == {
        "ok": False,
        "violations": 3,
        "checks": {
            "balance_differs_from_entries": 1,
            "balance_differs_from_lots": 1,
            "last_entry_balance_differs": 1,
        },
        "accounts": 3,
    }
