"""CSV imports of the points ledger: bulk credit (applied once per file) and
history from a previous system (opening balances, past purchases)."""

from __future__ import annotations

import hashlib
import io
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings
from django.utils import timezone

from members.models import Member, TierChange
from members.services import member_close, member_enrol, member_freeze
from points.batch import ledger_check
from points.imports import (
    Outcome,
    bulk_credit_csv,
    history_balances_csv,
    history_purchases_csv,
)
from points.models import PointsAccount, PointsAdjustment, PointsEntry, PointsLot, Purchase

pytestmark = pytest.mark.django_db

SHANGHAI = ZoneInfo("Asia/Shanghai")
EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"


def csv_bytes(*lines: str, encoding: str = "utf-8") -> bytes:
    return "".join(line + "\r\n" for line in lines).encode(encoding)


def csv_file(*lines: str, encoding: str = "utf-8") -> io.BytesIO:
    return io.BytesIO(csv_bytes(*lines, encoding=encoding))


def balance(member: Member) -> int:
    account = PointsAccount.objects.filter(member=member).first()
    return account.balance if account else 0


def rejected(report: Any) -> list[tuple[int, str]]:
    return [(row.line, row.code) for row in report.rejected_rows]


def ledger_state() -> tuple[int, int, int, int, int]:
    return (
        PointsEntry.objects.count(),
        PointsLot.objects.count(),
        PointsAdjustment.objects.count(),
        Purchase.objects.count(),
        sum(PointsAccount.objects.values_list("balance", flat=True)),
    )


@pytest.fixture
def operator(db: Any) -> Any:
    return get_user_model().objects.create_user(username="op1", password="x", is_staff=True)


@pytest.fixture
def second(store: Any) -> Member:
    member, _ = member_enrol(phone="13900001111", name="李雷", store=store)
    return member


@pytest.fixture
def third(store: Any) -> Member:
    member, _ = member_enrol(phone="13700002222", name="韩梅梅", store=store)
    return member


# -----------------------------------------------------------------------------
# Bulk credit
# -----------------------------------------------------------------------------
def test_bulk_credit_applies_each_row_through_an_adjustment_of_the_file_batch(member, second, operator):
    # given
    content = csv_bytes("member_no,points", f"{member.member_no},200", "13900001111,300")
    # when
    report = bulk_credit_csv(file=io.BytesIO(content), reason="Store opening gift", by_user=operator)
    # then
    assert report.ok
    assert (report.applied, report.pending, report.already_applied, report.rejected) == (2, 0, 0, 0)
    assert report.points_applied == 500
    assert report.batch == hashlib.sha256(content).hexdigest()
    assert (balance(member), balance(second)) == (200, 300)
    adjustments = PointsAdjustment.objects.order_by("member_id")
    assert [(a.member_id, a.points, a.status, a.batch, a.reason, a.requested_by_id) for a in adjustments] == [
        (member.pk, 200, "applied", report.batch, "Store opening gift", operator.pk),
        (second.pk, 300, "applied", report.batch, "Store opening gift", operator.pk),
    ]
    entry = PointsEntry.objects.get(member=member)
    assert (entry.kind, entry.source, entry.points, entry.reason) == ("adjust", "operator", 200, "Store opening gift")
    assert ledger_check().ok


def test_bulk_credit_of_the_same_file_again_applies_nothing(member, second, operator):
    # given a file applied once
    content = csv_bytes(f"{member.member_no},200", f"{second.member_no},300")
    first = bulk_credit_csv(file=io.BytesIO(content), reason="gift", by_user=operator)
    before = ledger_state()
    # when it is uploaded again, even with another reason
    again = bulk_credit_csv(file=io.BytesIO(content), reason="gift, again", by_user=operator)
    # then
    assert (first.applied, again.applied, again.pending, again.already_applied) == (2, 0, 0, 2)
    assert again.batch == first.batch
    assert [(row.line, row.member_no) for row in again.already_rows] == [(1, member.member_no), (2, second.member_no)]
    assert [str(row.note) for row in again.already_rows] == ["Applied", "Applied"]
    assert ledger_state() == before
    assert (balance(member), balance(second)) == (200, 300)


def test_a_different_file_for_the_same_member_is_a_new_batch(member, operator):
    bulk_credit_csv(file=csv_file(f"{member.member_no},200"), reason="gift", by_user=operator)
    # when
    report = bulk_credit_csv(
        file=csv_file("member_no,points", f"{member.member_no},200"), reason="gift", by_user=operator
    )
    # then
    assert report.applied == 1
    assert balance(member) == 400


def test_bulk_credit_rejects_bad_rows_with_line_and_reason_and_applies_the_good_ones(
    member, second, third, operator, admin_user
):
    # given
    member_freeze(member=second, by_user=admin_user, reason="fraud check")
    member_close(member=third, by_user=admin_user, reason="asked to leave")
    file = csv_file(
        "member_no,points",
        f"{member.member_no},100",  # line 2: good
        "8999999999,100",  # 3: unknown member
        f"{member.member_no},50",  # 4: same member twice
        f"{second.member_no},100",  # 5: frozen
        f"{third.member_no},100",  # 6: closed
        ",100",  # 7: no member
        f"{member.member_no},abc",  # 8
        f"{member.member_no},0",  # 9
        f"{member.member_no},-5",  # 10
        f"{member.member_no},1.5",  # 11
        f"{member.member_no},100,extra",  # 12: extra values (not a column of the header) are ignored
    )
    # when
    report = bulk_credit_csv(file=file, reason="gift", by_user=operator)
    # then
    assert rejected(report) == [
        (3, "unknown_member"),
        (4, "duplicate_in_file"),
        (5, "member_frozen"),
        (6, "member_closed"),
        (7, "member_required"),
        (8, "invalid_points"),
        (9, "invalid_points"),
        (10, "invalid_points"),
        (11, "invalid_points"),
        (12, "duplicate_in_file"),
    ]
    assert "8999999999" in report.rejected_rows[0].message
    assert (report.applied, report.rejected, report.ok) == (1, 10, False)
    assert (balance(member), balance(second), balance(third)) == (100, 0, 0)
    assert PointsAdjustment.objects.count() == 1


def test_bulk_credit_above_the_threshold_waits_for_approval(member, second, operator):
    # given the threshold is 1000 points
    with override_settings(LOYALTY_ADJUST_APPROVAL_THRESHOLD=1000):
        # when
        report = bulk_credit_csv(
            file=csv_file(f"{member.member_no},1000", f"{second.member_no},1001"), reason="gift", by_user=operator
        )
    # then
    assert (report.applied, report.pending, report.points_pending) == (1, 1, 1001)
    assert balance(second) == 0
    pending = PointsAdjustment.objects.get(member=second)
    assert (pending.status, pending.entry_id, pending.batch) == ("pending", None, report.batch)


def test_bulk_credit_dry_run_writes_nothing(member, operator):
    before = ledger_state()
    report = bulk_credit_csv(file=csv_file(f"{member.member_no},100"), reason="gift", by_user=operator, dry_run=True)
    assert (report.applied, report.dry_run) == (1, True)
    assert ledger_state() == before


def test_bulk_credit_reads_gbk_with_a_chinese_header(member, operator):
    file = csv_file("会员卡号,积分", f"{member.member_no},88", encoding="gbk")
    report = bulk_credit_csv(file=file, reason="gift", by_user=operator)
    assert (report.applied, report.header, report.encoding) == (1, True, "GBK")
    assert balance(member) == 88


def test_bulk_credit_reports_an_unreadable_file(member, operator):
    report = bulk_credit_csv(file=io.BytesIO(b""), reason="gift", by_user=operator)
    assert report.error is not None
    assert report.error.code == "empty_file"
    report = bulk_credit_csv(file=csv_file("member,amount"), reason="gift", by_user=operator)
    assert report.error is not None
    assert report.error.code == "missing_column"
    assert not report.ok


def test_bulk_credit_command_applies_once_and_exits_non_zero_on_rejected_rows(member, second, operator, tmp_path):
    # given
    path = tmp_path / "credit.csv"
    path.write_bytes(csv_bytes("member_no,points", f"{member.member_no},200", "8999999999,5", f"{second.member_no},7"))
    out = io.StringIO()
    # when
    with pytest.raises(CommandError) as raised:
        call_command("bulk_credit", str(path), reason="gift", user="op1", stdout=out)
    # then: the good rows were applied and the bad one reported with its line
    assert raised.value.returncode == 1
    text = out.getvalue()
    assert "line 3: unknown_member" in text
    assert (balance(member), balance(second)) == (200, 7)
    # when run again
    out = io.StringIO()
    with pytest.raises(CommandError):
        call_command("bulk_credit", str(path), reason="gift", user="op1", stdout=out)
    # then nothing is applied twice
    assert "applied 0 (0 points)" in out.getvalue()
    assert "already applied 2" in out.getvalue()
    assert (balance(member), balance(second)) == (200, 7)
    assert PointsAdjustment.objects.count() == 2


def test_bulk_credit_command_succeeds_on_a_clean_file(member, operator, tmp_path):
    path = tmp_path / "credit.csv"
    path.write_bytes(csv_bytes(f"{member.member_no},10"))
    out = io.StringIO()
    call_command("bulk_credit", str(path), reason="gift", user="op1", stdout=out)
    assert "applied 1 (10 points)" in out.getvalue()


def test_bulk_credit_command_needs_a_known_user_and_a_reason(member, tmp_path):
    path = tmp_path / "credit.csv"
    path.write_bytes(csv_bytes(f"{member.member_no},10"))
    with pytest.raises(CommandError):
        call_command("bulk_credit", str(path), reason="gift", user="nobody")
    get_user_model().objects.create_user(username="op1", password="x", is_staff=True)
    with pytest.raises(CommandError):
        call_command("bulk_credit", str(path), reason="  ", user="op1")
    assert PointsAdjustment.objects.count() == 0


# -----------------------------------------------------------------------------
# History: opening balances
# -----------------------------------------------------------------------------
def test_opening_balances_are_credited_once_with_their_expiry(member, second, third):
    # given
    file_bytes = csv_bytes(
        "phone_or_member_no,points,expires_on",
        f"{member.member_no},1250,2027-03-31",
        "139 0000 1111,80,2027/6/5",
        f"{third.member_no},0,2027-03-31",
    )
    # when
    report = history_balances_csv(file=io.BytesIO(file_bytes))
    # then
    assert report.ok
    assert (report.applied, report.skipped, report.points_applied) == (2, 1, 1330)
    assert (balance(member), balance(second), balance(third)) == (1250, 80, 0)
    entry = PointsEntry.objects.get(member=member)
    assert (entry.kind, entry.source, entry.reason, entry.reference) == (
        "adjust",
        "import",
        "opening balance",
        f"opening:{member.member_no}",
    )
    lot = PointsLot.objects.get(member=member)
    assert lot.expires_at == datetime(2027, 4, 1, tzinfo=SHANGHAI)
    assert PointsLot.objects.get(member=second).expires_at == datetime(2027, 6, 6, tzinfo=SHANGHAI)
    assert ledger_check().ok
    # when imported again
    before = ledger_state()
    again = history_balances_csv(file=io.BytesIO(file_bytes))
    # then
    assert (again.applied, again.already_applied, again.skipped) == (0, 2, 1)
    assert ledger_state() == before
    assert ledger_check().ok


def test_opening_balance_skips_a_member_who_already_has_it_even_after_spending(member):
    from points.services import Refs, points_debit

    history_balances_csv(file=csv_file(f"{member.member_no},500,"))
    points_debit(member=member, points=200, kind=PointsEntry.Kind.REDEEM, refs=Refs(source=PointsEntry.Source.BENEFIT))
    # when
    report = history_balances_csv(file=csv_file(f"{member.member_no},500,"))
    # then
    assert report.already_applied == 1
    assert balance(member) == 300


def test_opening_balance_without_expiry_follows_the_policy(member):
    history_balances_csv(file=csv_file(f"{member.member_no},10"))
    lot = PointsLot.objects.get(member=member)
    assert lot.expires_at > timezone.now() + timedelta(days=300)


def test_opening_balances_reject_bad_rows_and_import_the_good_ones(member, second, third, admin_user):
    # given
    member_freeze(member=second, by_user=admin_user, reason="check")
    member_close(member=third, by_user=admin_user, reason="left")
    yesterday = timezone.localdate() - timedelta(days=1)
    file = csv_file(
        f"{member.member_no},100,2027-12-31",  # 1: good
        "13600000000,100,2027-12-31",  # 2: unknown phone
        f"{member.member_no},100,2027-12-31",  # 3: twice
        f"{second.member_no},100,2027-12-31",  # 4: frozen
        f"{third.member_no},100,2027-12-31",  # 5: closed
        f"{member.member_no},-1,2027-12-31",  # 6
        f"{member.member_no},100,{yesterday.isoformat()}",  # 7: already expired
        f"{member.member_no},100,31/12/2027",  # 8
        f"{member.member_no},100,2027-12-31,x",  # 9: too many values
        "not-a-phone,100,2027-12-31",  # 10
    )
    # when
    report = history_balances_csv(file=file)
    # then
    assert rejected(report) == [
        (2, "unknown_member"),
        (3, "duplicate_in_file"),
        (4, "member_frozen"),
        (5, "member_closed"),
        (6, "invalid_points"),
        (7, "invalid_expires_on"),
        (8, "invalid_expires_on"),
        (9, "wrong_value_count"),
        (10, "unknown_member"),
    ]
    assert report.applied == 1
    assert (balance(member), balance(second), balance(third)) == (100, 0, 0)
    assert ledger_check().ok


def test_import_history_command_balances_is_idempotent_and_exit_status(member, second, tmp_path):
    # given
    path = tmp_path / "balances.csv"
    path.write_bytes(csv_bytes(f"{member.member_no},100,2027-12-31", "13900001111,20,"))
    out = io.StringIO()
    # when
    call_command("import_history", str(path), stdout=out)
    call_command("import_history", str(path), kind="balances", stdout=out)
    # then
    assert "credited 2 (120 points)" in out.getvalue()
    assert "credited 0 (0 points), already imported 2" in out.getvalue()
    assert (balance(member), balance(second)) == (100, 20)
    # and a file with a rejected row exits non-zero after importing the rest
    bad = tmp_path / "bad.csv"
    bad.write_bytes(csv_bytes("13600000000,5,", "13700002222,5,"))
    member_enrol(phone="13700002222", name="韩梅梅")
    with pytest.raises(CommandError) as raised:
        call_command("import_history", str(bad), stdout=io.StringIO())
    assert raised.value.returncode == 1
    assert PointsEntry.objects.filter(reference__startswith="opening:").count() == 3


def test_history_example_file_imports_after_the_members_example(store, other_store, operator):
    from members.imports import member_import_csv

    with (EXAMPLES / "members.csv").open("rb") as file:
        member_import_csv(file=file, default_store=store, by_user=operator)
    # when
    with (EXAMPLES / "history.csv").open("rb") as file:
        report = history_balances_csv(file=file, by_user=operator)
    # then
    assert report.ok, [(row.line, row.message) for row in report.rejected_rows]
    assert (report.applied, report.skipped) == (3, 1)
    assert ledger_check().ok


# -----------------------------------------------------------------------------
# History: purchases
# -----------------------------------------------------------------------------
PURCHASE_HEADER = "store,receipt_no,member,amount,paid_at"


def test_historical_purchases_are_recorded_without_points_once(member, second, store, other_store):
    # given
    file_bytes = csv_bytes(
        PURCHASE_HEADER,
        f"SH001,H-1,{member.member_no},128.50,2026-03-01 14:05",
        'bj001,H-1,13900001111,"1,000.00",2026/3/2',
        f"SH001,H-2,{member.member_no},¥99,2026-03-03T09:00:00+00:00",
    )
    # when
    report = history_purchases_csv(file=io.BytesIO(file_bytes))
    # then
    assert report.ok
    assert report.applied == 3
    purchases = {(p.store.code, p.receipt_no): p for p in Purchase.objects.select_related("store")}
    first = purchases[("SH001", "H-1")]
    assert (first.member_id, first.amount, first.points_earned, first.terminal_id, first.tier_id) == (
        member.pk,
        Decimal("128.50"),
        0,
        None,
        None,
    )
    assert first.paid_at == datetime(2026, 3, 1, 14, 5, tzinfo=SHANGHAI)
    assert purchases[("BJ001", "H-1")].amount == Decimal("1000.00")
    assert purchases[("BJ001", "H-1")].member_id == second.pk
    assert purchases[("BJ001", "H-1")].paid_at == datetime(2026, 3, 2, tzinfo=SHANGHAI)
    assert purchases[("SH001", "H-2")].paid_at == datetime(2026, 3, 3, 9, 0, tzinfo=ZoneInfo("UTC"))
    assert PointsEntry.objects.count() == 0
    assert PointsAccount.objects.count() == 0
    # when imported again
    again = history_purchases_csv(file=io.BytesIO(file_bytes))
    # then
    assert (again.applied, again.already_applied) == (0, 3)
    assert Purchase.objects.count() == 3
    assert ledger_check().ok


def test_historical_purchases_reject_bad_rows(member, store):
    tomorrow = (timezone.localdate() + timedelta(days=2)).isoformat()
    file = csv_file(
        f"SH001,H-1,{member.member_no},10,2026-01-01",  # 1: good
        f"SH001,H-1,{member.member_no},10,2026-01-01",  # 2: same receipt twice
        f"XX999,H-3,{member.member_no},10,2026-01-01",  # 3: unknown store
        f",H-4,{member.member_no},10,2026-01-01",  # 4: no store
        f"SH001,,{member.member_no},10,2026-01-01",  # 5: no receipt
        "SH001,H-6,,10,2026-01-01",  # 6: no member
        "SH001,H-7,8999999999,10,2026-01-01",  # 7: unknown member
        f"SH001,H-8,{member.member_no},0,2026-01-01",  # 8
        f"SH001,H-9,{member.member_no},1.234,2026-01-01",  # 9
        f"SH001,H-10,{member.member_no},10,{tomorrow}",  # 10: future
        f"SH001,H-11,{member.member_no},10,yesterday",  # 11
        f"SH001,H-12,{member.member_no},10",  # 12: missing value
    )
    # when
    report = history_purchases_csv(file=file)
    # then
    assert rejected(report) == [
        (2, "duplicate_in_file"),
        (3, "unknown_store"),
        (4, "store_required"),
        (5, "receipt_no_required"),
        (6, "member_required"),
        (7, "unknown_member"),
        (8, "invalid_amount"),
        (9, "invalid_amount"),
        (10, "invalid_paid_at"),
        (11, "invalid_paid_at"),
        (12, "wrong_value_count"),
    ]
    assert list(Purchase.objects.values_list("receipt_no", flat=True)) == ["H-1"]


def test_a_receipt_recorded_by_the_till_is_not_imported_again(member, store):
    from members.selectors import IdentifiedMember
    from points.services import purchase_record

    purchase_record(
        store=store, terminal=None, receipt_no="R-1", amount=Decimal("50"), identified=IdentifiedMember(member, None)
    )
    # when
    report = history_purchases_csv(file=csv_file(f"SH001,R-1,{member.member_no},999,2026-01-01"))
    # then
    assert report.already_applied == 1
    assert Purchase.objects.get().amount == Decimal("50.00")


def test_import_history_purchases_command_then_tiers(member, store, tmp_path):
    # given ¥6,000 of purchases in the last 12 months: gold qualification
    recent = (timezone.localdate() - timedelta(days=30)).isoformat()
    path = tmp_path / "purchases.csv"
    path.write_bytes(
        csv_bytes(
            PURCHASE_HEADER,
            f"SH001,H-1,{member.member_no},3000,{recent}",
            f"SH001,H-2,13812345678,3000,{recent} 10:00",
        )
    )
    out = io.StringIO()
    # when imported without evaluation
    call_command("import_history", str(path), kind="purchases", stdout=out)
    # then the user is told to evaluate tiers
    assert "Purchases imported 2" in out.getvalue()
    assert "evaluate_tiers" in out.getvalue()
    member.refresh_from_db()
    assert member.tier.code == "silver"
    # when imported again with --evaluate-tiers: nothing new, so no evaluation either
    out = io.StringIO()
    call_command("import_history", str(path), kind="purchases", evaluate_tiers=True, stdout=out)
    assert "already recorded 2" in out.getvalue()
    # when evaluated
    call_command("evaluate_tiers", stdout=io.StringIO())
    # then
    member.refresh_from_db()
    assert member.tier.code == "gold"
    assert TierChange.objects.filter(member=member, reason="upgrade").count() == 1
    assert PointsEntry.objects.count() == 0
    assert ledger_check().ok


def test_import_history_purchases_with_evaluate_tiers(member, store, tmp_path):
    recent = (timezone.localdate() - timedelta(days=3)).isoformat()
    path = tmp_path / "purchases.csv"
    path.write_bytes(csv_bytes(f"SH001,H-1,{member.member_no},21000,{recent}"))
    out = io.StringIO()
    call_command("import_history", str(path), kind="purchases", evaluate_tiers=True, stdout=out)
    assert "1 upgraded" in out.getvalue()
    member.refresh_from_db()
    assert member.tier.code == "platinum"


def test_large_file_is_applied_in_batches(store, operator):
    # given 7 members and a batch size of 3
    members = [member_enrol(phone=f"1390000{index:04d}", name="")[0] for index in range(7)]
    lines = [f"{member.member_no},{index + 1}" for index, member in enumerate(members)]
    seen: list[int] = []
    # when
    report = bulk_credit_csv(
        file=csv_file(*lines), reason="gift", by_user=operator, batch_size=3, on_batch=lambda r: seen.append(r.total)
    )
    # then
    assert report.applied == 7
    assert seen == [3, 6, 7]
    assert [balance(member) for member in members] == [1, 2, 3, 4, 5, 6, 7]
    assert report.count(Outcome.APPLIED) == 7


def test_dates_are_local_days(member):
    # The local midnight after the last valid day, in the chain's time zone.
    history_balances_csv(file=csv_file(f"{member.member_no},5,{date(2027, 1, 31).isoformat()}"))
    assert PointsLot.objects.get().expires_at == datetime(2027, 1, 31, 16, 0, tzinfo=ZoneInfo("UTC"))
