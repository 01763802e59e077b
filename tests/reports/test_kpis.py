"""The monthly KPIs: the rollup-based figures equal an independent computation
from raw rows, and a hand-made scenario gives exactly the expected numbers."""

from __future__ import annotations

from datetime import date
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import pytest
from django.db.models import F
from django.utils import timezone

from campaigns.models import Coupon
from members.models import Store, Tier
from reports.selectors import (
    KPI_NAMES,
    breakage_by_cohort,
    campaign_results_for_month,
    cohort_retention,
    coupon_write_off_by_benefit,
    kpis_by_store,
    kpis_by_tier,
    kpis_monthly,
    kpis_monthly_raw,
    kpis_trend,
    rfm_segment_map,
    tier_movement_matrix,
)
from reports.services import rollups_build
from tests.points.factories import local
from tests.reports.factories import (
    SEED_UNTIL,
    SEEDED_MONTHS,
    History,
    Timeline,
    benefits,
    seed_history,
    stores_and_terminals,
)

pytestmark = pytest.mark.django_db

JAN, FEB, MAR = date(2026, 1, 1), date(2026, 2, 1), date(2026, 3, 1)


@pytest.fixture
def history() -> History:
    history = seed_history()
    rollups_build(until=SEED_UNTIL)
    return history


# -----------------------------------------------------------------------------
# Rollups = raw rows, on the seeded history
# -----------------------------------------------------------------------------
def test_rollup_kpis_equal_raw_kpis_for_every_month_overall_by_store_by_tier_and_both(history):
    # given the eight seeded months, the three stores and the three tiers
    stores = [None, *Store.objects.order_by("code")]
    tiers = [None, *Tier.objects.order_by("rank")]
    # when every KPI is computed both ways for every cell
    differences = []
    for month in SEEDED_MONTHS:
        for store in stores:
            for tier in tiers:
                from_rollups = kpis_monthly(month=month, store=store, tier=tier)
                from_rows = kpis_monthly_raw(month=month, store=store, tier=tier)
                differences += [
                    (month, store and store.code, tier and tier.code, name, from_rollups[name], from_rows[name])
                    for name in KPI_NAMES
                    if from_rollups[name] != from_rows[name]
                ]
    # then they agree exactly, and the KPIs are all there
    assert differences == []
    assert list(kpis_monthly(month=JAN)) == list(KPI_NAMES)


def test_seeded_history_has_every_case_the_comparison_must_cover(history):
    # then January holds the claimed receipt (paid in January, claimed in
    # February) and the purchase of 23:30 on 31 January
    january = kpis_monthly(month=JAN)
    # C 400, D 1000, A 6000, B 80, the claimed R-X1 250, A 100 at 23:30 on the 31st; H's 60 refunded
    assert january["purchases"] == 6
    assert january["member_sales"] == Decimal("7770.00")
    # February: 670 sold, 750 refunded (C's 400 of January, the claimed receipt's 50, D's 300)
    february = kpis_monthly(month=FEB)
    assert february["member_sales"] == Decimal("-80.00")
    assert february["purchases"] == 3
    assert february["average_order_value"] == Decimal("-26.67")
    # the refunds of February reverse 400 (C) + 300 (D) earned points; D's clawback leaves D at -150
    assert february["points_reversed"] == 700
    assert february["coupons_written_off"] == -1  # C's coupon given back by the refund
    # March: A's refund gives back 400 used points and takes 244 earned ones; F's takes 99
    assert kpis_monthly(month=MAR)["points_reversed"] == -57
    # a closed member leaves the month-end count and the outstanding points
    assert january["members_at_month_end"] == 7
    assert february["members_at_month_end"] == 7  # F joined, C closed
    assert february["tier_distribution"] == {"silver": 5, "gold": 1, "platinum": 1}
    assert february["upgrades"] == 1
    assert kpis_monthly(month=MAR)["downgrades"] == 1


def test_trend_by_store_and_by_tier_are_the_monthly_kpis_of_each_cell(history):
    # when
    trend = kpis_trend(end_month=date(2026, 4, 1), months=13)
    by_store = kpis_by_store(month=FEB)
    by_tier = kpis_by_tier(month=FEB)
    # then
    assert [row["month"] for row in trend] == [date(2025, 4, 1) + _months(n) for n in range(13)]
    assert trend[-3] == {"month": FEB, **kpis_monthly(month=FEB)}
    assert trend[0] == {"month": date(2025, 4, 1), **kpis_monthly(month=date(2025, 4, 1))}
    assert [row["store_code"] for row in by_store] == ["BJ001", "GZ001", "SH001"]
    for row in by_store:
        assert row == {
            "store_code": row["store_code"],
            "store_name": Store.objects.get(code=row["store_code"]).name,
            **kpis_monthly(month=FEB, store=row["store_code"]),
        }
    assert [row["tier_code"] for row in by_tier] == ["silver", "gold", "platinum"]
    for row in by_tier:
        assert row == {
            "tier_code": row["tier_code"],
            "tier_name": Tier.objects.get(code=row["tier_code"]).name,
            **kpis_monthly(month=FEB, tier=row["tier_code"]),
        }
    assert kpis_by_store(month=FEB)[1]["purchases"] == 0  # GZ001 has no activity


def _months(n: int) -> Any:
    from dateutil.relativedelta import relativedelta

    return relativedelta(months=n)


def test_other_report_tables_of_the_seeded_history(history):
    # when
    matrix = tier_movement_matrix(month=FEB)
    by_benefit = coupon_write_off_by_benefit(month=JAN)
    retention = cohort_retention(end_month=FEB, months=3)
    breakage = breakage_by_cohort(end_month=FEB, months=3)
    campaigns = campaign_results_for_month(month=JAN)
    # then: February's moves are E's and F's enrolment and B's manual upgrade
    assert matrix == [
        {"from": None, "to": "silver", "members": 1},
        {"from": "silver", "to": "platinum", "members": 1},
    ]
    assert tier_movement_matrix(month=JAN) == [
        {"from": None, "to": "silver", "members": 2},  # D and E (E at 23:30 on 31 January)
        {"from": "silver", "to": "gold", "members": 1},
    ]
    # January: 6 campaign coupons + B's coupon + D's exchange; A's campaign coupon and
    # C's gift coupon (issued in December) were written off
    assert by_benefit == [
        {"benefit": "60天礼品券", "issued": 0, "written_off": 1, "rate": Decimal("0")},
        {"benefit": "满100减10元券", "issued": 7, "written_off": 1, "rate": Decimal("0.1429")},
        {"benefit": "积分兑换保温杯", "issued": 1, "written_off": 0, "rate": Decimal("0")},
    ]
    assert sum(row["issued"] for row in by_benefit) == kpis_monthly(month=JAN)["coupons_issued"]
    assert sum(row["written_off"] for row in by_benefit) == kpis_monthly(month=JAN)["coupons_written_off"]
    # cohorts: December is B and C, January D and E (at 23:30 on the 31st), February F
    assert [row["cohort"] for row in retention] == [date(2025, 12, 1), JAN, FEB]
    december, january, february = retention
    assert december["size"] == 2  # B and C
    assert december["retention"] == [Decimal("0.5000"), Decimal("1.0000"), Decimal("0.0000")]
    assert january == {"cohort": JAN, "size": 2, "retention": [Decimal("0.5000"), Decimal("1.0000")]}
    assert february == {"cohort": FEB, "size": 1, "retention": [Decimal("0.0000")]}
    # breakage: December's lots of A (300) and B (150) expired; A's 200 were spent
    # and H's 60 refunded. January: B's 200 + 80, A's 5600 (6000 − 800 spent +
    # 400 given back by a refund) and A's 125. February: B's claim (200), A's
    # 368 (612 − 244 refunded), E's 75 (125 − 50 adjusted)
    assert breakage == [
        {"cohort": date(2025, 12, 1), "issued": 710, "expired": 450, "rate": Decimal("0.6338")},
        {"cohort": JAN, "issued": 7805, "expired": 6005, "rate": Decimal("0.7694")},
        {"cohort": FEB, "issued": 987, "expired": 643, "rate": Decimal("0.6515")},
    ]
    assert campaigns == [{"campaign": "一月发券", **_results(history)}]
    assert campaign_results_for_month(month=MAR) == []


def _results(history: History) -> dict[str, Any]:
    from campaigns.services.campaigns import campaign_results

    return campaign_results(campaign=history.campaign)


def test_rfm_segment_map_lists_every_group_with_its_averages(history):
    # given the nightly segmentation run as of the end of the seeded history
    from campaigns.services.segments import segments_compute
    from members.models import Member
    from points.models import Purchase

    as_of = local(2026, 5, 1)
    scored = segments_compute(as_of=as_of).scored
    # when
    rows = rfm_segment_map()
    # then every group is listed, in the model's order
    assert [row["group"] for row in rows] == [group.value for group in Member.RfmGroup]
    assert sum(row["members"] for row in rows) == scored == 5  # A, B, D, E, H (F's purchase was refunded)
    # and each group's averages are those of its members' purchases in the last 12 months
    for row in rows:
        members = list(Member.objects.filter(rfm_group=row["group"]).exclude(status="closed"))
        assert row["members"] == len(members)
        assert row["label"] == str(Member.RfmGroup(row["group"]).label)
        if not members:
            assert (row["avg_recency_days"], row["avg_frequency"], row["avg_monetary"]) == (None, None, None)
            continue
        bought = Purchase.objects.filter(
            member__in=members, paid_at__gt=local(2025, 5, 1), paid_at__lte=as_of, refunded_amount__lt=F("amount")
        )
        recency = sum((as_of.date() - timezone.localtime(m.last_purchase_at).date()).days for m in members)
        net = sum(p.amount - p.refunded_amount for p in bought)
        assert row["avg_recency_days"] == (Decimal(recency) / len(members)).quantize(Decimal("0.1"), ROUND_HALF_UP)
        assert row["avg_frequency"] == (Decimal(bought.count()) / len(members)).quantize(Decimal("0.01"), ROUND_HALF_UP)
        assert row["avg_monetary"] == (net / len(members)).quantize(Decimal("0.01"), ROUND_HALF_UP)


# -----------------------------------------------------------------------------
# A small hand-made month, with every number worked out
# -----------------------------------------------------------------------------
@pytest.fixture
def small() -> History:
    """Three members; January: 3 purchases, 2 coupons (one written off);
    February: a refund of a January purchase, a coupon expiry, a closing."""
    stores, terminals = stores_and_terminals()
    h = History(stores=stores, terminals=terminals, benefits=benefits())
    from members.services import member_close
    from tests.points.factories import OperatorFactory

    h.operator = OperatorFactory(username="small-operator")
    t = Timeline()
    t.at(local(2025, 12, 20, 10), lambda: h.enrol("M3", "SH001", "13700000003"))
    t.at(local(2026, 1, 2, 10), lambda: h.enrol("M1", "SH001", "13700000001"))
    t.at(local(2026, 1, 3, 10), lambda: h.enrol("M2", "BJ001", "13700000002"))
    t.at(local(2026, 1, 5, 12), lambda: h.buy("M1", "SH001", "S-1", "100.00", at=local(2026, 1, 5, 12)))
    t.at(local(2026, 1, 6, 10), lambda: h.grant("c1", "cash", "M1", at=local(2026, 1, 6, 10)))
    t.at(local(2026, 1, 10, 15), lambda: h.buy("M2", "BJ001", "S-2", "200.00", at=local(2026, 1, 10, 15)))
    t.at(local(2026, 1, 11, 10), lambda: h.grant("c2", "cash", "M2", at=local(2026, 1, 11, 10)))
    t.at(
        local(2026, 1, 20, 18), lambda: h.buy("M1", "BJ001", "S-3", "50.00", coupons=["c1"], at=local(2026, 1, 20, 18))
    )
    t.at(local(2026, 2, 2, 11), lambda: h.refund("BJ001", "S-2", "SF-2", "80.00", at=local(2026, 2, 2, 11)))
    t.at(local(2026, 2, 10, 9), lambda: member_close(member=h.member("M3"), by_user=h.operator, reason="注销"))
    t.nightly(date(2026, 1, 1), date(2026, 3, 1))
    t.run()
    rollups_build(until=date(2026, 3, 2))
    return h


def _kpis(**values: Any) -> dict[str, Any]:
    zero = dict.fromkeys(KPI_NAMES, 0)
    zero.update(
        repeat_rate=Decimal("0.0000"),
        member_sales=Decimal("0.00"),
        average_order_value=Decimal("0.00"),
        points_liability_cny=Decimal("0.00"),
        coupon_write_off_rate=Decimal("0.0000"),
    )
    return {**zero, **values}


def _both(**kwargs: Any) -> dict[str, Any]:
    from_rollups = kpis_monthly(**kwargs)
    assert kpis_monthly_raw(**kwargs) == from_rollups
    return from_rollups


def test_small_scenario_january_overall_and_by_store(small):
    # then, the whole chain: M1 (2 purchases) and M2 bought; M3 registered in
    # December and never bought: past the 30-day welcome, sleeping
    assert _both(month=JAN) == _kpis(
        new_members=2,
        members_at_month_end=3,
        active_members=2,
        repeat_rate=Decimal("0.5000"),
        member_sales=Decimal("350.00"),
        purchases=3,
        average_order_value=Decimal("116.67"),
        points_issued=350,
        points_outstanding=350,
        points_liability_cny=Decimal("3.50"),
        coupons_issued=2,
        coupons_written_off=1,
        coupon_write_off_rate=Decimal("0.5000"),
        tier_distribution={"silver": 3, "gold": 0, "platinum": 0},
        sleeping_members=1,
    )
    # SH001: M1's first purchase; members registered there are M1 and M3, with M1's 150 points
    assert _both(month=JAN, store="SH001") == _kpis(
        new_members=1,
        members_at_month_end=2,
        active_members=1,
        member_sales=Decimal("100.00"),
        purchases=1,
        average_order_value=Decimal("100.00"),
        points_issued=150,
        points_outstanding=150,
        points_liability_cny=Decimal("1.50"),
        coupons_issued=1,
        coupons_written_off=1,
        coupon_write_off_rate=Decimal("1.0000"),
        tier_distribution={"silver": 2, "gold": 0, "platinum": 0},
        sleeping_members=1,
    )
    # BJ001: M1's second purchase (made there) and M2's; M2 registered there
    assert _both(month=JAN, store="BJ001") == _kpis(
        new_members=1,
        members_at_month_end=1,
        active_members=2,
        member_sales=Decimal("250.00"),
        purchases=2,
        average_order_value=Decimal("125.00"),
        points_issued=200,
        points_outstanding=200,
        points_liability_cny=Decimal("2.00"),
        coupons_issued=1,
        tier_distribution={"silver": 1, "gold": 0, "platinum": 0},
    )
    assert _both(month=JAN, tier="gold") == _kpis(tier_distribution={"silver": 0, "gold": 0, "platinum": 0})


def test_small_scenario_february_refund_expiry_and_closing(small):
    # then: no purchase, the refund of a January purchase lowers February,
    # M2's unused coupon expired (valid through 10 February), M3 closed
    assert _both(month=FEB) == _kpis(
        members_at_month_end=2,
        member_sales=Decimal("-80.00"),
        points_reversed=80,
        points_outstanding=270,
        points_liability_cny=Decimal("2.70"),
        coupons_expired=1,
        tier_distribution={"silver": 2, "gold": 0, "platinum": 0},
    )
    assert _both(month=FEB, store="BJ001")["member_sales"] == Decimal("-80.00")
    assert _both(month=FEB, store="SH001")["member_sales"] == Decimal("0.00")
    # January is unchanged by February's refund
    assert _both(month=JAN)["member_sales"] == Decimal("350.00")
    assert Coupon.objects.filter(status=Coupon.Status.EXPIRED).count() == 1


# -----------------------------------------------------------------------------
# Month boundaries and refunds across months
# -----------------------------------------------------------------------------
def test_month_is_the_calendar_month_in_shanghai():
    # given a purchase at 23:30 on 31 January in Shanghai (15:30 UTC) and one
    # at 00:10 on 1 February (16:10 UTC on 31 January)
    stores, terminals = stores_and_terminals()
    h = History(stores=stores, terminals=terminals, benefits=benefits())
    t = Timeline()
    t.at(local(2026, 1, 31, 23, 0), lambda: h.enrol("A", "SH001", "13600000001"))
    t.at(local(2026, 1, 31, 23, 30), lambda: h.buy("A", "SH001", "B-1", "100.00", at=local(2026, 1, 31, 23, 30)))
    t.at(local(2026, 2, 1, 0, 10), lambda: h.enrol("B", "SH001", "13600000002"))
    t.at(local(2026, 2, 1, 0, 10), lambda: h.buy("B", "SH001", "B-2", "30.00", at=local(2026, 2, 1, 0, 10)))
    t.run()
    # when
    rollups_build(until=date(2026, 2, 2))
    # then
    january, february = _both(month=JAN), kpis_monthly(month=FEB)
    assert kpis_monthly_raw(month=FEB, as_of=local(2026, 2, 2)) == february
    assert (january["new_members"], january["purchases"], january["member_sales"]) == (1, 1, Decimal("100.00"))
    assert (february["new_members"], february["purchases"], february["member_sales"]) == (1, 1, Decimal("30.00"))
    assert local(2026, 1, 31, 23, 30).utcoffset().total_seconds() == 8 * 3600


def test_refund_made_in_a_later_month_lowers_that_month_only():
    # given a purchase in January refunded in part in March
    stores, terminals = stores_and_terminals()
    h = History(stores=stores, terminals=terminals, benefits=benefits())
    t = Timeline()
    t.at(local(2026, 1, 2, 9), lambda: h.enrol("A", "BJ001", "13600000003"))
    t.at(local(2026, 1, 9, 12), lambda: h.buy("A", "BJ001", "C-1", "300.00", at=local(2026, 1, 9, 12)))
    t.at(local(2026, 3, 1, 0, 5), lambda: h.refund("BJ001", "C-1", "CF-1", "120.00", at=local(2026, 3, 1, 0, 5)))
    t.run()
    # when
    rollups_build(until=date(2026, 3, 10))
    # then
    assert _both(month=JAN)["member_sales"] == Decimal("300.00")
    assert _both(month=FEB)["member_sales"] == Decimal("0.00")
    march = kpis_monthly(month=MAR)
    assert (march["member_sales"], march["purchases"], march["points_reversed"]) == (Decimal("-120.00"), 0, 120)
    assert kpis_monthly_raw(month=MAR, as_of=local(2026, 3, 10)) == march
