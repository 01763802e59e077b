"""Coupon batches: generation for print (idempotent by reference, stock taken,
code collisions retried), CSV export, and import of third-party codes
(idempotent by file, duplicates and invalid rows reported with their line)."""

from __future__ import annotations

import csv
import hashlib
import io
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from campaigns.errors import InvalidCouponFile, OutOfStock
from campaigns.models import Benefit, Coupon, CouponBatch, CouponEvent
from campaigns.services import batches as batch_services
from campaigns.services.batches import (
    EXPORT_COLUMNS,
    BatchBenefitEnded,
    BatchReferenceRequired,
    BatchReferenceTaken,
    InvalidBatchQuantity,
    RowProblem,
    coupon_batch_csv_write,
    coupon_batch_generate,
    coupon_batch_import,
)
from campaigns.services.coupons import CODE_ALPHABET, CODE_LENGTH, coupon_write_off
from tests.campaigns.factories import BenefitFactory, coupon_give, coupon_snapshot

pytestmark = pytest.mark.django_db

SHANGHAI = ZoneInfo("Asia/Shanghai")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def operator(db: Any) -> Any:
    return get_user_model().objects.create_user(username="op-batch", password="x", is_staff=True)


@pytest.fixture
def benefit(db: Any) -> Benefit:
    return BenefitFactory(name="满100减10元券", total_stock=None, valid_days=30)


def _issued(benefit: Benefit) -> int:
    return Benefit.objects.values_list("issued_count", flat=True).get(pk=benefit.pk)


def _csv(text: str) -> io.BytesIO:
    return io.BytesIO(text.encode("utf-8"))


def _local_midnight_after(day: str) -> datetime:
    start = datetime.fromisoformat(day).replace(tzinfo=SHANGHAI)
    return start + timedelta(days=1)


# -----------------------------------------------------------------------------
# Generation
# -----------------------------------------------------------------------------
def test_generate_creates_bearer_coupons_with_stock_events_and_validity(benefit, operator):
    # given
    at = timezone.now()

    # when
    batch = coupon_batch_generate(benefit=benefit, quantity=25, reference="2026-12-flyer", by_user=operator, at=at)

    # then
    assert (batch.benefit_id, batch.kind, batch.reference, batch.quantity, batch.created_by_id) == (
        benefit.pk,
        CouponBatch.Kind.GENERATED,
        "2026-12-flyer",
        25,
        operator.pk,
    )
    coupons = list(Coupon.objects.filter(batch=batch))
    assert len(coupons) == 25
    assert {c.member_id for c in coupons} == {None}
    assert {c.source for c in coupons} == {Coupon.Source.BATCH}
    assert {c.status for c in coupons} == {Coupon.Status.ISSUED}
    assert {(c.valid_from, c.valid_until, c.issued_at) for c in coupons} == {(at, at + timedelta(days=30), at)}
    codes = [c.code for c in coupons]
    assert len(set(codes)) == 25
    assert all(len(code) == CODE_LENGTH and set(code) <= set(CODE_ALPHABET) for code in codes)
    assert _issued(benefit) == 25
    events = CouponEvent.objects.filter(coupon__batch=batch)
    assert events.count() == 25
    assert set(events.values_list("kind", "by_user_id", "reason", "created_at")) == {
        (CouponEvent.Kind.ISSUED, operator.pk, "batch:2026-12-flyer", at)
    }


def test_generate_is_idempotent_by_reference(benefit, operator):
    # given
    first = coupon_batch_generate(benefit=benefit, quantity=10, reference="R-1", by_user=operator)
    before = coupon_snapshot()

    # when
    again = coupon_batch_generate(benefit=benefit, quantity=10, reference=" R-1 ", by_user=None)

    # then
    assert again.pk == first.pk
    assert coupon_snapshot() == before
    assert CouponBatch.objects.count() == 1
    assert _issued(benefit) == 10


def test_generate_with_a_reference_of_another_batch_is_refused(benefit, operator):
    # given
    coupon_batch_generate(benefit=benefit, quantity=3, reference="R-1", by_user=operator)
    other = BenefitFactory()
    before = coupon_snapshot()

    # when / then
    with pytest.raises(BatchReferenceTaken) as refused:
        coupon_batch_generate(benefit=benefit, quantity=4, reference="R-1", by_user=operator)
    assert refused.value.code == "batch_reference_taken"
    with pytest.raises(BatchReferenceTaken):
        coupon_batch_generate(benefit=other, quantity=3, reference="R-1", by_user=operator)
    assert coupon_snapshot() == before


def test_generate_respects_stock_all_or_nothing(member, operator):
    # given: 5 in stock, 2 already issued to a member
    benefit = BenefitFactory(total_stock=5)
    coupon_give(benefit, member)
    coupon_give(benefit, member)
    before = coupon_snapshot()

    # when: 4 more do not fit
    with pytest.raises(OutOfStock):
        coupon_batch_generate(benefit=benefit, quantity=4, reference="too-many", by_user=operator)

    # then: nothing written, the reference is still free
    assert coupon_snapshot() == before
    assert not CouponBatch.objects.exists()

    # when: exactly the stock left
    batch = coupon_batch_generate(benefit=benefit, quantity=3, reference="too-many", by_user=operator)

    # then
    assert batch.coupons.count() == 3
    assert _issued(benefit) == 5
    with pytest.raises(OutOfStock):
        coupon_batch_generate(benefit=benefit, quantity=1, reference="one-more", by_user=operator)
    assert _issued(benefit) == 5


def test_generate_refused_when_stock_is_taken_meanwhile(benefit, operator, monkeypatch):
    # given: the pre-check sees enough stock, but an exchange takes the last unit before the batch commits
    Benefit.objects.filter(pk=benefit.pk).update(total_stock=3)
    monkeypatch.setattr(batch_services, "_stock_left", lambda benefit: 3)
    Benefit.objects.filter(pk=benefit.pk).update(issued_count=1)
    before = coupon_snapshot()

    # when / then
    with pytest.raises(OutOfStock):
        coupon_batch_generate(benefit=benefit, quantity=3, reference="race", by_user=operator)
    assert coupon_snapshot() == before
    assert not CouponBatch.objects.exists()


def test_generate_with_fixed_validity_uses_the_benefit_dates(operator):
    # given
    start = timezone.now() - timedelta(days=1)
    end = timezone.now() + timedelta(days=60)
    benefit = BenefitFactory(validity=Benefit.Validity.FIXED, valid_from=start, valid_until=end)

    # when
    batch = coupon_batch_generate(benefit=benefit, quantity=2, reference="fixed", by_user=operator)

    # then
    assert set(batch.coupons.values_list("valid_from", "valid_until")) == {(start, end)}


def test_generate_refused_for_a_benefit_whose_fixed_validity_ended(operator):
    # given
    benefit = BenefitFactory(
        validity=Benefit.Validity.FIXED,
        valid_from=timezone.now() - timedelta(days=30),
        valid_until=timezone.now() - timedelta(days=1),
    )

    # when / then
    with pytest.raises(BatchBenefitEnded):
        coupon_batch_generate(benefit=benefit, quantity=2, reference="late", by_user=operator)
    assert not Coupon.objects.exists()
    assert _issued(benefit) == 0


@pytest.mark.parametrize(
    ("quantity", "reference", "error"),
    [
        (0, "ok", InvalidBatchQuantity),
        (batch_services.MAX_BATCH_QUANTITY + 1, "ok", InvalidBatchQuantity),
        (5, "", BatchReferenceRequired),
        (5, "x" * 101, BatchReferenceRequired),
    ],
)
def test_generate_rejects_bad_input(benefit, operator, quantity, reference, error):
    with pytest.raises(error):
        coupon_batch_generate(benefit=benefit, quantity=quantity, reference=reference, by_user=operator)
    assert not CouponBatch.objects.exists()
    assert _issued(benefit) == 0


def test_generate_draws_codes_again_on_a_collision(benefit, member, operator, monkeypatch):
    # given: the first code drawn is one that already exists
    existing = coupon_give(benefit, member)
    real = batch_services.coupon_code_new
    drawn = iter([existing.code])
    monkeypatch.setattr(batch_services, "coupon_code_new", lambda: next(drawn, None) or real())

    # when
    batch = coupon_batch_generate(benefit=benefit, quantity=3, reference="collide", by_user=operator)

    # then
    codes = set(batch.coupons.values_list("code", flat=True))
    assert len(codes) == 3
    assert existing.code not in codes
    assert Coupon.objects.get(pk=existing.pk).batch_id is None
    assert CouponEvent.objects.filter(coupon__batch=batch).count() == 3
    assert _issued(benefit) == 4


# -----------------------------------------------------------------------------
# Export
# -----------------------------------------------------------------------------
def test_csv_export_lists_every_code_with_benefit_and_local_validity(benefit, operator):
    # given
    at = datetime(2026, 12, 1, 2, 30, tzinfo=ZoneInfo("UTC"))
    batch = coupon_batch_generate(benefit=benefit, quantity=3, reference="print", by_user=operator, at=at)
    out = io.StringIO()

    # when
    count = coupon_batch_csv_write(batches=[batch], out=out)

    # then
    rows = list(csv.reader(io.StringIO(out.getvalue())))
    assert count == 3
    assert rows[0] == list(EXPORT_COLUMNS) == ["code", "benefit", "valid_from", "valid_until"]
    codes = list(batch.coupons.order_by("pk").values_list("code", flat=True))
    assert rows[1:] == [[code, "满100减10元券", "2026-12-01 10:30:00", "2026-12-31 10:30:00"] for code in codes]


def test_generate_command_writes_the_csv_and_is_idempotent(benefit, operator, tmp_path):
    # given
    out = tmp_path / "codes.csv"
    stdout = io.StringIO()

    # when
    call_command(
        "generate_coupons",
        "--benefit",
        str(benefit.pk),
        "--quantity",
        "4",
        "--reference",
        "cmd-1",
        "--csv",
        str(out),
        "--user",
        operator.username,
        stdout=stdout,
    )

    # then
    batch = CouponBatch.objects.get(reference="cmd-1")
    assert batch.created_by_id == operator.pk
    text = out.read_text(encoding="utf-8-sig")
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == list(EXPORT_COLUMNS)
    assert sorted(row[0] for row in rows[1:]) == sorted(batch.coupons.values_list("code", flat=True))
    assert "4" in stdout.getvalue()

    # when: the same reference again
    again = tmp_path / "again.csv"
    call_command(
        "generate_coupons",
        "--benefit",
        str(benefit.pk),
        "--quantity",
        "4",
        "--reference",
        "cmd-1",
        "--csv",
        str(again),
        stdout=io.StringIO(),
    )

    # then: nothing new, same codes
    assert Coupon.objects.count() == 4
    assert again.read_text(encoding="utf-8-sig") == text


def test_generate_command_fails_when_out_of_stock(operator, tmp_path):
    # given
    benefit = BenefitFactory(total_stock=2)

    # when / then
    with pytest.raises(CommandError, match="out_of_stock") as failed:
        call_command(
            "generate_coupons",
            "--benefit",
            str(benefit.pk),
            "--quantity",
            "3",
            "--reference",
            "x",
            "--csv",
            str(tmp_path / "x.csv"),
            stdout=io.StringIO(),
        )
    assert failed.value.returncode == 1
    assert not Coupon.objects.exists()
    assert not (tmp_path / "x.csv").exists()


def test_generate_command_unknown_benefit_fails(db):
    with pytest.raises(CommandError):
        call_command("generate_coupons", "--benefit", "999999", "--quantity", "1", "--reference", "x")


# -----------------------------------------------------------------------------
# Import
# -----------------------------------------------------------------------------
def test_import_creates_normalised_bearer_coupons_as_one_batch(benefit, operator):
    # given
    content = "code,valid_until\nJD-2027-0001-a7k9,2027-12-31\n jd 2027 0002 b3m4 ,\nXYZ123,2027-06-30 18:00\n"
    at = timezone.now()

    # when
    report = coupon_batch_import(benefit=benefit, file=_csv(content), by_user=operator, at=at)

    # then
    assert report.ok
    assert (report.imported, report.total, report.already_imported) == (3, 3, False)
    batch = report.batch
    assert batch is not None
    assert (batch.kind, batch.quantity, batch.reference, batch.created_by_id) == (
        CouponBatch.Kind.IMPORTED,
        3,
        hashlib.sha256(content.encode()).hexdigest(),
        operator.pk,
    )
    coupons = {c.code: c for c in batch.coupons.all()}
    assert set(coupons) == {"JD20270001A7K9", "JD20270002B3M4", "XYZ123"}
    assert coupons["JD20270001A7K9"].valid_until == _local_midnight_after("2027-12-31")
    assert coupons["JD20270002B3M4"].valid_until == at + timedelta(days=30)
    assert coupons["XYZ123"].valid_until == datetime(2027, 6, 30, 18, 0, tzinfo=SHANGHAI)
    assert {(c.member_id, c.source, c.status, c.valid_from) for c in coupons.values()} == {
        (None, Coupon.Source.IMPORT, Coupon.Status.ISSUED, at)
    }
    assert _issued(benefit) == 3
    assert CouponEvent.objects.filter(coupon__batch=batch, kind=CouponEvent.Kind.ISSUED, by_user=operator).count() == 3


def test_import_is_idempotent_by_file(benefit, operator):
    # given
    content = "code\nAAA111\nBBB222\n"
    first = coupon_batch_import(benefit=benefit, file=_csv(content), by_user=operator)
    before = coupon_snapshot()

    # when
    again = coupon_batch_import(benefit=benefit, file=_csv(content), by_user=operator)

    # then
    assert again.already_imported
    assert again.batch is not None
    assert again.batch.pk == first.batch.pk
    assert again.imported == 0
    assert again.ok
    assert coupon_snapshot() == before
    assert CouponBatch.objects.count() == 1


def test_import_reports_duplicates_with_their_lines(benefit, member, operator):
    # given: a code issued before (as the till would read it), and one repeated in the file
    existing = coupon_give(benefit, member)
    content = f"code\nNEW-001\n{existing.code.lower()}\nnew001\nNEW002\n"

    # when
    report = coupon_batch_import(benefit=benefit, file=_csv(content), by_user=operator)

    # then
    assert not report.ok
    assert report.imported == 2
    assert sorted(report.batch.coupons.values_list("code", flat=True)) == ["NEW001", "NEW002"]
    assert [(row.line, row.problem) for row in report.rejected_rows] == [
        (3, RowProblem.DUPLICATE),
        (4, RowProblem.DUPLICATE_IN_FILE),
    ]
    assert report.rejected_rows[1].message == "This code already appears on line 2 of the file."
    assert Coupon.objects.get(pk=existing.pk).batch_id is None


def test_import_reports_invalid_rows_with_their_lines(benefit, operator):
    # given
    long_code = "A" * 65
    content = (
        "code,valid_until\n"
        "GOOD-1,\n"  # line 2
        ",2027-01-01\n"  # 3: empty
        f"{long_code},\n"  # 4: too long
        "AB_12,\n"  # 5: underscore
        "券码1,\n"  # 6: not A-Z
        "GOOD-2,31/12/2027\n"  # 7: date format
        "GOOD-3,2020-01-01\n"  # 8: already past
        "---,\n"  # 9: only dashes
        "GOOD-4,2027-01-01\n"  # 10
    )

    # when
    report = coupon_batch_import(benefit=benefit, file=_csv(content), by_user=operator)

    # then
    assert [(row.line, row.problem) for row in report.invalid] == [
        (3, RowProblem.EMPTY),
        (4, RowProblem.TOO_LONG),
        (5, RowProblem.INVALID_CHARACTERS),
        (6, RowProblem.INVALID_CHARACTERS),
        (7, RowProblem.INVALID_VALID_UNTIL),
        (8, RowProblem.EXPIRED),
        (9, RowProblem.EMPTY),
    ]
    assert report.invalid[1].message == "The code is longer than 64 characters."
    assert report.invalid[4].message.startswith("“31/12/2027” is not a valid end of validity")
    assert report.total == 9
    assert sorted(report.batch.coupons.values_list("code", flat=True)) == ["GOOD1", "GOOD4"]
    assert _issued(benefit) == 2


def test_import_of_only_rejected_rows_creates_no_batch(benefit, operator):
    # given
    content = "code\nAB_1\n\n"

    # when
    report = coupon_batch_import(benefit=benefit, file=_csv(content), by_user=operator)
    again = coupon_batch_import(benefit=benefit, file=_csv(content), by_user=operator)

    # then: reported again, since nothing was imported
    assert report.batch is None
    assert not report.ok
    assert not again.already_imported
    assert again.rejected == 1
    assert not CouponBatch.objects.exists()


def test_import_without_enough_stock_writes_nothing(operator):
    # given
    benefit = BenefitFactory(total_stock=2)
    before = coupon_snapshot()

    # when / then
    with pytest.raises(OutOfStock):
        coupon_batch_import(benefit=benefit, file=_csv("code\nA1\nA2\nA3\n"), by_user=operator)
    assert coupon_snapshot() == before
    assert not CouponBatch.objects.exists()


@pytest.mark.parametrize("content", ["", "\n\n", "number,valid_until\n1,2027-01-01\n"])
def test_import_refuses_unreadable_files(benefit, operator, content):
    with pytest.raises(InvalidCouponFile):
        coupon_batch_import(benefit=benefit, file=_csv(content), by_user=operator)
    assert not Coupon.objects.exists()


def test_import_refuses_a_file_imported_for_another_benefit(benefit, operator):
    # given
    coupon_batch_import(benefit=benefit, file=_csv("code\nONE1\n"), by_user=operator)

    # when / then
    with pytest.raises(BatchReferenceTaken):
        coupon_batch_import(benefit=BenefitFactory(), file=_csv("code\nONE1\n"), by_user=operator)
    assert Coupon.objects.count() == 1


def test_import_reads_headerless_and_gbk_files(benefit, operator):
    # given
    headerless = "ab12\ncd34,2027-05-01\n"
    gbk = "券码,到期日期,备注\nEF56,2027-05-01,第一批\n".encode("gbk")

    # when
    plain = coupon_batch_import(benefit=benefit, file=_csv(headerless), by_user=operator)
    chinese = coupon_batch_import(benefit=benefit, file=io.BytesIO(gbk), by_user=operator)

    # then
    assert (plain.imported, plain.header) == (2, False)
    assert (chinese.imported, chinese.header, chinese.encoding, chinese.ignored_columns) == (1, True, "GBK", ["备注"])
    assert Coupon.objects.get(code="CD34").valid_until == _local_midnight_after("2027-05-01")
    assert Coupon.objects.get(code="EF56").valid_until == _local_midnight_after("2027-05-01")


def test_imported_code_is_written_off_as_typed_at_the_till(benefit, operator, store, terminal):
    # given
    coupon_batch_import(benefit=benefit, file=_csv("code\nJD-2027-0009\n"), by_user=operator)

    # when
    coupon = coupon_write_off(code="jd-2027-0009", store=store, terminal=terminal, receipt_no="R-9")

    # then
    assert (coupon.code, coupon.status) == ("JD20270009", Coupon.Status.WRITTEN_OFF)


def test_example_file_imports(benefit, operator):
    # given
    path = REPO / "docs" / "examples" / "coupons_import.csv"

    # when
    with path.open("rb") as file:
        report = coupon_batch_import(benefit=benefit, file=file, by_user=operator)

    # then
    assert report.ok
    assert report.imported == 4


def test_import_command_reports_rejected_rows_and_exits_non_zero(benefit, operator, tmp_path):
    # given
    path = tmp_path / "codes.csv"
    path.write_text("code\nOK-1\nBAD_1\nOK-2\n", encoding="utf-8")
    stdout = io.StringIO()

    # when
    with pytest.raises(CommandError) as failed:
        call_command("import_coupons", str(path), "--benefit", str(benefit.pk), stdout=stdout)

    # then: the good rows are in, the bad one is named by its line
    assert failed.value.returncode == 1
    assert sorted(Coupon.objects.values_list("code", flat=True)) == ["OK1", "OK2"]
    assert "line 3: invalid_characters" in stdout.getvalue()

    # when: the same file again
    stdout = io.StringIO()
    call_command("import_coupons", str(path), "--benefit", str(benefit.pk), stdout=stdout)

    # then
    assert "already imported" in stdout.getvalue()
    assert Coupon.objects.count() == 2


def test_import_command_clean_file_exits_zero(benefit, tmp_path):
    # given
    path = tmp_path / "codes.csv"
    path.write_text("code\nOK-1\n", encoding="utf-8")

    # when
    call_command("import_coupons", str(path), "--benefit", str(benefit.pk), stdout=io.StringIO())

    # then
    assert Coupon.objects.filter(code="OK1", source=Coupon.Source.IMPORT).exists()


def test_import_command_unreadable_file_fails(benefit, tmp_path):
    # given
    path = tmp_path / "codes.csv"
    path.write_text("number,valid_until\n1,2027-01-01\n", encoding="utf-8")

    # when / then
    with pytest.raises(CommandError, match="invalid_coupon_file"):
        call_command("import_coupons", str(path), "--benefit", str(benefit.pk), stdout=io.StringIO())
    with pytest.raises(CommandError):
        call_command("import_coupons", str(tmp_path / "missing.csv"), "--benefit", str(benefit.pk))
