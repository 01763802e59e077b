"""Building the rollups: safe to re-run, incremental, catching late changes;
snapshots, the tasks and the commands."""

from __future__ import annotations

import io
from datetime import date, timedelta
from decimal import Decimal
from io import StringIO
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from campaigns.models import Coupon
from loyalty.models import Heartbeat
from members.models import Store
from reports.models import (
    CohortActivity,
    DailyRollup,
    ExpiryCohortRollup,
    MonthlyKpiSnapshot,
    MonthlyMemberActivity,
    MonthlyRollup,
    RollupDay,
)
from reports.selectors import KPI_NAMES, kpis_monthly, kpis_monthly_raw, kpis_trend, report_as_of
from reports.services import kpi_snapshot_build, local_midnight, month_bounds, month_first, rollups_build
from tests.points.factories import local
from tests.reports.factories import (
    SEED_UNTIL,
    SEEDED_MONTHS,
    History,
    benefits,
    clock,
    seed_history,
    stores_and_terminals,
)

pytestmark = pytest.mark.django_db

JAN, FEB = date(2026, 1, 1), date(2026, 2, 1)


def _tables() -> dict[str, list[tuple[Any, ...]]]:
    """Every rollup row (without ids or build times), sorted."""

    def rows(model: Any, *fields: str) -> list[tuple[Any, ...]]:
        return sorted(model.objects.values_list(*fields), key=repr)

    daily = [f.name for f in DailyRollup._meta.fields if f.name != "id"]
    daily = [name + "_id" if name in ("store", "tier") else name for name in daily]
    monthly = [
        "month",
        "scope",
        "store_id",
        "tier_id",
        "new_members",
        "members_at_month_end",
        "active_members",
        "repeat_members",
        "points_outstanding",
        "points_expiring_next_month",
        "sleeping_members",
        "churned_members",
        "as_of",
    ]
    return {
        "daily": rows(DailyRollup, *daily),
        "activity": rows(MonthlyMemberActivity, "month", "member_id", "store_id", "tier_id", "purchases"),
        "monthly": rows(MonthlyRollup, *monthly),
        "cohorts": rows(CohortActivity, "cohort", "month", "members"),
        "expiry": rows(ExpiryCohortRollup, "day", "cohort", "points"),
        "days": rows(RollupDay, "day"),
    }


# -----------------------------------------------------------------------------
# Re-runs and incremental builds
# -----------------------------------------------------------------------------
def test_rerun_and_full_rebuild_give_the_same_rows_and_no_duplicates():
    # given the seeded history, built once
    seed_history()
    first = rollups_build(until=SEED_UNTIL)
    built = _tables()
    figures = [kpis_monthly(month=month) for month in SEEDED_MONTHS]
    # when it is built again, incrementally, then rebuilt from the first day
    again = rollups_build(until=SEED_UNTIL)
    after_rerun = _tables()
    rebuilt = rollups_build(until=SEED_UNTIL, since=date(2025, 1, 1))
    # then nothing changed and nothing is there twice
    assert after_rerun == built
    assert _tables() == built
    assert [kpis_monthly(month=month) for month in SEEDED_MONTHS] == figures
    assert first.days[0] == date(2025, 6, 1)  # the first day with data (G's enrolment)
    assert first.days[-1] == date(2026, 4, 30)
    assert len(first.days) == len(rebuilt.days) == (date(2026, 5, 1) - date(2025, 6, 1)).days
    assert again.days == [date(2026, 4, 29), date(2026, 4, 30)]  # only the safety window
    assert (again.months, again.months_unchanged) == ([], [date(2026, 4, 1)])
    assert len(built["daily"]) == len({(row[0], row[1], row[2]) for row in built["daily"]})


def test_incremental_build_adds_only_the_new_days_and_equals_a_full_rebuild():
    # given a member buying on 10 January, rolled up through the 10th
    stores, terminals = stores_and_terminals()
    h = History(stores=stores, terminals=terminals, benefits=benefits())
    with clock(local(2026, 1, 2, 9)):
        h.enrol("A", "SH001", "13500000001")
    with clock(local(2026, 1, 10, 12)):
        h.buy("A", "SH001", "I-1", "100.00", at=local(2026, 1, 10, 12))
    rollups_build(until=date(2026, 1, 11))
    marks = dict(RollupDay.objects.values_list("day", "built_at"))
    # when the member buys again on the 12th and the build runs through the 12th
    with clock(local(2026, 1, 12, 12)):
        h.buy("A", "BJ001", "I-2", "50.00", at=local(2026, 1, 12, 12))
    result = rollups_build(until=date(2026, 1, 13))
    # then only the new days (11th, 12th) are built; the 10th is left alone
    assert result.days == [date(2026, 1, 11), date(2026, 1, 12)]
    new_marks = dict(RollupDay.objects.values_list("day", "built_at"))
    assert {day: at for day, at in new_marks.items() if day <= date(2026, 1, 10)} == marks
    # the month's activity row was upserted: one member, two purchases at two stores
    assert sorted(MonthlyMemberActivity.objects.values_list("store__code", "purchases")) == [("BJ001", 1), ("SH001", 1)]
    january = kpis_monthly(month=JAN)
    assert (january["active_members"], january["repeat_rate"], january["purchases"]) == (1, Decimal("1.0000"), 2)
    assert january == kpis_monthly_raw(month=JAN, as_of=local(2026, 1, 13))
    # and a full rebuild gives the same rows
    incremental = _tables()
    rollups_build(until=date(2026, 1, 13), since=date(2026, 1, 1))
    assert _tables() == incremental


def test_current_month_is_as_of_the_end_of_the_last_built_day():
    # given purchases on the 10th and the 12th, built through the 10th only
    stores, terminals = stores_and_terminals()
    h = History(stores=stores, terminals=terminals, benefits=benefits())
    with clock(local(2026, 1, 2, 9)):
        h.enrol("A", "SH001", "13500000002")
    with clock(local(2026, 1, 10, 12)):
        h.buy("A", "SH001", "J-1", "100.00", at=local(2026, 1, 10, 12))
    with clock(local(2026, 1, 12, 12)):
        h.buy("A", "SH001", "J-2", "70.00", at=local(2026, 1, 12, 12))
    # when
    rollups_build(until=date(2026, 1, 11))
    # then the month so far counts the 10th, not the 12th
    assert report_as_of(month=JAN) == local(2026, 1, 11)
    january = kpis_monthly(month=JAN)
    assert (january["purchases"], january["points_outstanding"]) == (1, 100)
    assert january == kpis_monthly_raw(month=JAN, as_of=local(2026, 1, 11))


def _recent_history() -> tuple[History, Any]:
    """A member and an anonymous receipt in the last weeks (real dates: the
    late changes below are recorded now, as in production)."""
    stores, terminals = stores_and_terminals()
    h = History(stores=stores, terminals=terminals, benefits=benefits())
    now = timezone.now()
    with clock(now - timedelta(days=20)):
        h.enrol("A", "SH001", "13500000003")
    anonymous_paid = now - timedelta(days=10)
    with clock(anonymous_paid):
        h.buy(None, "SH001", "L-1", "120.00", at=anonymous_paid)
    return h, anonymous_paid


def test_late_claim_and_offline_purchase_rebuild_their_past_days():
    # given the rollups built through yesterday
    from points.services import purchase_claim

    h, anonymous_paid = _recent_history()
    rollups_build()
    today = timezone.localdate()
    # when the receipt of 10 days ago is claimed now, and a purchase paid 6 days
    # ago is recorded now (queued offline)
    purchase_claim(member=h.member("A"), store=h.stores["SH001"], receipt_no="L-1")
    offline_paid = timezone.now() - timedelta(days=6)
    from members.selectors import IdentifiedMember
    from points.services import purchase_record

    purchase_record(
        store=h.stores["BJ001"],
        terminal=h.terminals["BJ001"],
        receipt_no="L-2",
        amount=Decimal("80.00"),
        paid_at=offline_paid,
        identified=IdentifiedMember(member=h.member("A"), code_step=None, offline=True),
    )
    result = rollups_build()
    # then both past days are rebuilt besides the safety window
    claimed_day = timezone.localdate(anonymous_paid)
    offline_day = timezone.localdate(offline_paid)
    assert result.days == sorted({claimed_day, offline_day, today - timedelta(days=2), today - timedelta(days=1)})
    # and every month touched equals the raw computation as of today's midnight
    for month in {month_first(claimed_day), month_first(offline_day)}:
        as_of = min(month_bounds(month)[1], local_midnight(today))
        from_rollups = kpis_monthly(month=month)
        assert from_rollups == kpis_monthly_raw(month=month, as_of=as_of)
    assert sum(kpis_monthly(month=m)["purchases"] for m in {month_first(claimed_day), month_first(offline_day)}) == 2


def test_a_rebuild_of_an_earlier_range_leaves_later_dirty_days_to_the_next_run():
    # given the rollups built through yesterday, then a purchase paid 6 days ago recorded now
    from members.selectors import IdentifiedMember
    from points.services import purchase_record

    h, _ = _recent_history()
    rollups_build()
    today = timezone.localdate()
    paid = timezone.now() - timedelta(days=6)
    purchase_record(
        store=h.stores["SH001"],
        terminal=None,
        receipt_no="M-1",
        amount=Decimal("60.00"),
        paid_at=paid,
        identified=IdentifiedMember(member=h.member("A"), code_step=None, offline=True),
    )
    # when an operator rebuilds an earlier range first
    manual = rollups_build(since=today - timedelta(days=20), until=today - timedelta(days=8))
    nightly = rollups_build()
    # then the purchase's day is left to, and found by, the next run
    assert timezone.localdate(paid) not in manual.days
    assert timezone.localdate(paid) in nightly.days
    month = month_first(timezone.localdate(paid))
    assert kpis_monthly(month=month) == kpis_monthly_raw(month=month, as_of=min(month_bounds(month)[1], local_midnight(today)))


def test_rows_dated_in_the_past_rebuild_their_day_and_month_but_unchanged_months_are_skipped():
    # given the seeded history built through April; a re-run leaves March alone
    seed_history()
    rollups_build(until=SEED_UNTIL)
    assert rollups_build(until=SEED_UNTIL).months == []
    # when an operator's coupon and a bonus are recorded now but dated 10 March
    from campaigns.services.coupons import coupon_issue
    from members.models import Member
    from points.models import PointsEntry
    from points.services import Refs, points_credit

    member = Member.objects.get(name="会员B")
    coupon_issue(
        benefit=Coupon.objects.filter(member=member).first().benefit,
        member=member,
        source="operator",
        at=local(2026, 3, 10, 9),
        check_eligibility=False,
    )
    points_credit(
        member=member, points=30, kind=PointsEntry.Kind.BONUS, refs=Refs(source="operator"), at=local(2026, 3, 10, 9)
    )
    result = rollups_build(until=SEED_UNTIL)
    # then 10 March and every month from March on are rebuilt
    assert result.days == [date(2026, 3, 10), date(2026, 4, 29), date(2026, 4, 30)]
    assert result.months == [date(2026, 3, 1), date(2026, 4, 1)]
    for month in (date(2026, 3, 1), date(2026, 4, 1)):
        assert kpis_monthly(month=month) == kpis_monthly_raw(month=month)
    assert kpis_monthly(month=date(2026, 3, 1))["coupons_issued"] == 1


def test_member_import_with_an_old_registration_date_rebuilds_the_months_since():
    # given rollups built through yesterday for a chain with one member
    from members.imports import member_import_csv
    from members.services import member_enrol

    stores, _ = stores_and_terminals()
    with clock(local(2026, 1, 5, 10)):
        member_enrol(phone="13500000004", name="甲", store=stores["SH001"])
    rollups_build()
    assert kpis_monthly(month=JAN)["new_members"] == 1
    # when a member registered on 15 January 2026 is imported now
    csv = "phone,name,store,registered_at\n13500000005,乙,SH001,2026-01-15\n".encode()
    report = member_import_csv(file=io.BytesIO(csv))
    assert report.imported == 1
    result = rollups_build()
    # then January is rebuilt, and every month since counts the member
    assert date(2026, 1, 15) in result.days
    assert result.months[0] == JAN
    assert kpis_monthly(month=JAN)["new_members"] == 2
    assert kpis_monthly(month=FEB)["members_at_month_end"] == 2
    for month in (JAN, FEB):
        assert kpis_monthly(month=month) == kpis_monthly_raw(month=month)


def test_build_records_its_run_for_health_and_the_next_run():
    # given
    seed_history()
    # when
    rollups_build(until=SEED_UNTIL)
    # then
    beat = Heartbeat.objects.get(name="reports_rollups")
    assert beat.detail["until"] == "2026-05-01"
    assert beat.detail["days"] == 334
    assert beat.detail["watermarks"]["purchase"] > 0
    assert set(beat.detail["watermarks"]) == {
        "purchase", "refund", "entry", "coupon", "coupon_event", "tier_change", "member"
    }
    assert beat.detail["months"][-1] == "2026-04-01"


def test_an_empty_database_builds_nothing():
    # when
    result = rollups_build()
    # then
    assert (result.days, result.months) == ([], [])
    assert kpis_monthly(month=JAN) == kpis_monthly_raw(month=JAN)
    assert not DailyRollup.objects.exists()


def test_month_kpis_take_the_same_few_queries_whatever_the_span(django_assert_num_queries):
    # given
    seed_history()
    rollups_build(until=SEED_UNTIL)
    # then: tiers, daily sums, month rows, tier distribution; a store code adds its lookup
    with django_assert_num_queries(4):
        kpis_monthly(month=FEB)
    with django_assert_num_queries(4):
        kpis_trend(end_month=date(2026, 4, 1), months=13)
    with django_assert_num_queries(5):
        kpis_monthly(month=FEB, store="SH001")


# -----------------------------------------------------------------------------
# Snapshots, tasks, commands
# -----------------------------------------------------------------------------
def test_snapshot_records_built_at_and_a_rebuild_replaces_its_data():
    # given
    seed_history()
    rollups_build(until=SEED_UNTIL)
    # when
    before = timezone.now()
    snapshot = kpi_snapshot_build(month=date(2026, 2, 17))
    # then
    assert snapshot.month == FEB
    assert before <= snapshot.built_at <= timezone.now()
    stored = MonthlyKpiSnapshot.objects.get(month=FEB)
    assert stored.data["month"] == "2026-02"
    assert set(stored.data["kpis"]) == set(KPI_NAMES)
    assert stored.data["kpis"]["member_sales"] == "-80.00"
    assert [row["store_code"] for row in stored.data["by_store"]] == ["BJ001", "GZ001", "SH001"]
    assert set(stored.data) >= {"by_tier", "tier_movement", "coupon_write_off_by_benefit", "campaigns"}
    # when the month changes (a late refund of February) and the snapshot is rebuilt
    from points.services import purchase_refund

    with clock(local(2026, 2, 27, 10)):
        purchase_refund(
            store=Store.objects.get(code="SH001"), terminal=None, receipt_no="R-E1", refund_no="F-E1", amount=Decimal("20.00")
        )
    rollups_build(until=SEED_UNTIL, since=FEB)
    rebuilt = kpi_snapshot_build(month=FEB)
    # then the one row of the month is replaced, with a later build time
    assert MonthlyKpiSnapshot.objects.filter(month=FEB).count() == 1
    assert rebuilt.pk == snapshot.pk
    assert rebuilt.built_at > snapshot.built_at
    assert MonthlyKpiSnapshot.objects.get(month=FEB).data["kpis"]["member_sales"] == "-100.00"


def test_nightly_task_builds_the_new_days():
    # given
    from reports.tasks import build_rollups_task

    _recent_history()
    # when
    days = build_rollups_task.delay().get()
    # then
    assert days == len(RollupDay.objects.all())
    assert RollupDay.objects.order_by("-day").first().day == timezone.localdate() - timedelta(days=1)


def test_monthly_task_builds_the_previous_months_snapshot():
    # given
    from reports.tasks import build_monthly_snapshot_task

    _recent_history()
    # when
    month = build_monthly_snapshot_task.delay().get()
    # then
    previous = month_first(month_first(timezone.localdate()) - timedelta(days=1))
    assert month == f"{previous:%Y-%m}"
    snapshot = MonthlyKpiSnapshot.objects.get(month=previous)
    assert snapshot.data["kpis"] == _json(kpis_monthly(month=previous))


def _json(kpis: dict[str, Any]) -> dict[str, Any]:
    import json

    from django.core.serializers.json import DjangoJSONEncoder

    return json.loads(json.dumps(kpis, cls=DjangoJSONEncoder))


def _run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_build_monthly_report_command_rebuilds_the_month_then_its_snapshot():
    # given
    seed_history()
    rollups_build(until=SEED_UNTIL)
    DailyRollup.objects.filter(day__gte=JAN, day__lt=FEB).delete()  # damaged rollups of January
    # when
    output = _run("build_monthly_report", "--month", "2026-01")
    # then
    assert "Rebuilt 31 days of 2026-01" in output
    assert kpis_monthly(month=JAN) == kpis_monthly_raw(month=JAN)
    snapshot = MonthlyKpiSnapshot.objects.get(month=JAN)
    assert snapshot.data["kpis"] == _json(kpis_monthly(month=JAN))


@pytest.mark.parametrize("month", ["2026-13", "2026-1", "January", "2999-01"])
def test_build_monthly_report_command_refuses_a_bad_month(month):
    # when / then
    with pytest.raises(CommandError):
        _run("build_monthly_report", "--month", month)
    assert not MonthlyKpiSnapshot.objects.exists()


def test_build_rollups_command_builds_and_reports():
    # given
    seed_history()
    # when
    output = _run("build_rollups", "--until", "2026-05-01")
    again = _run("build_rollups", "--until", "2026-05-01", "--since", "2026-04-01")
    # then
    assert output.startswith("Built 334 days and 11 months")
    assert again.startswith("Built 30 days and 1 months")
    assert kpis_monthly(month=FEB) == kpis_monthly_raw(month=FEB)
    with pytest.raises(CommandError):
        _run("build_rollups", "--since", "yesterday")
