"""The monthly KPI dashboard in a real browser, against a live server: a small
history is seeded through the real services (back-dated purchases, refunds in
and across the month), the rollups are built, an Operator signs in through the
admin login, opens the report for March 2025, and reads the same figures that
``reports.selectors.kpis_monthly`` gives for that month, in the KPI cards and
in the data of the drawn charts; then switches the page to English.

Transactional (``live_server`` serves from another thread): the test database
is flushed afterwards, which also empties the default tiers of the data
migration; they are created at the start and put back once the module is done.
"""

from __future__ import annotations

import csv
import importlib
import io
import os
import re
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from playwright.sync_api import expect

from campaigns.services.segments import segments_compute
from loyalty.roles import OPERATOR
from members.models import Member, Store, TierChange
from members.services import store_get_or_create
from points.services import purchase_refund
from reports import exports
from reports.views import display
from tests.points.factories import MemberFactory, buy, local, member_in_tier

pytestmark = pytest.mark.django_db(transaction=True)

MONTH = date(2025, 3, 1)
PASSWORD = "operator-password-1"
# Where to keep a screenshot of the dashboard (for a look at the layout).
SCREENSHOT_ENV = "REPORTS_SCREENSHOT"
CHARTS = (
    "chart-members",
    "chart-repeat-rate",
    "chart-sales",
    "chart-points",
    "chart-liability",
    "chart-tier-distribution",
    "chart-tier-movement",
    "chart-stores",
    "chart-rfm",
    "chart-cohorts",
)


def _create_default_tiers() -> None:
    from django.apps import apps

    importlib.import_module("members.migrations.0002_defaults").create_tiers(apps, None)


@pytest.fixture(scope="module", autouse=True)
def _default_tiers_restored(django_db_blocker: Any) -> Any:
    """After the module's last flush, give later tests their default tiers back."""
    yield
    with django_db_blocker.unblock():
        _create_default_tiers()


@dataclass
class Seeded:
    shanghai: Store
    beijing: Store


def _registered(member: Member, at: Any) -> Member:
    # member_enrol stamps "now"; the report needs registrations (and their
    # enrolment tier changes) in the past.
    Member.objects.filter(pk=member.pk).update(created_at=at)
    TierChange.objects.filter(member=member).update(created_at=at)
    return member_in_tier(member, "silver", since=at)


@pytest.fixture
def seeded(transactional_db: Any) -> Seeded:
    from reports.services import rollups_build

    _create_default_tiers()  # silver 0, gold 5000, platinum 20000
    shanghai, _ = store_get_or_create(code="SH001", name="上海南京西路店")
    beijing, _ = store_get_or_create(code="BJ001", name="北京三里屯店")
    a = _registered(MemberFactory(phone="13900000001", store=shanghai), local(2025, 1, 12, 10))
    b = _registered(MemberFactory(phone="13900000002", store=shanghai), local(2025, 2, 20, 15))
    c = _registered(MemberFactory(phone="13900000003", store=beijing), local(2025, 3, 2, 9))
    d = _registered(MemberFactory(phone="13900000004", store=beijing), local(2025, 3, 18, 9))
    buy(store=shanghai, terminal=None, member=a, receipt_no="SH-0115", amount="120.00", at=local(2025, 1, 15, 12))
    buy(store=shanghai, terminal=None, member=a, receipt_no="SH-0215", amount="300.00", at=local(2025, 2, 15, 12))
    buy(store=shanghai, terminal=None, member=b, receipt_no="SH-0221", amount="88.00", at=local(2025, 2, 21, 12))
    buy(store=shanghai, terminal=None, member=a, receipt_no="SH-0305", amount="200.00", at=local(2025, 3, 5, 11))
    buy(store=shanghai, terminal=None, member=a, receipt_no="SH-0320", amount="150.00", at=local(2025, 3, 20, 18))
    buy(store=shanghai, terminal=None, member=b, receipt_no="SH-0310", amount="1000.00", at=local(2025, 3, 10, 14))
    buy(store=beijing, terminal=None, member=c, receipt_no="BJ-0308", amount="6000.00", at=local(2025, 3, 8, 16))
    # The upgrade this purchase made is stamped "now": put it at the purchase.
    TierChange.objects.filter(member=c, reason=TierChange.Reason.UPGRADE).update(created_at=local(2025, 3, 8, 16))
    buy(store=beijing, terminal=None, member=d, receipt_no="BJ-0319", amount="45.50", at=local(2025, 3, 19, 16))
    buy(store=beijing, terminal=None, member=a, receipt_no="BJ-0325", amount="80.00", at=local(2025, 3, 25, 19))
    for receipt, refund, amount, at in (
        ("SH-0310", "RF-0310", "400.00", local(2025, 3, 12, 10)),
        ("SH-0215", "RF-0215", "100.00", local(2025, 3, 1, 10)),  # a February purchase refunded in March
    ):
        purchase_refund(
            store=shanghai, terminal=None, receipt_no=receipt, refund_no=refund, amount=Decimal(amount), at=at
        )
    segments_compute(as_of=local(2025, 4, 1))  # RFM groups as the nightly job would set them
    rollups_build()

    operators, _ = Group.objects.get_or_create(name=OPERATOR)
    operator = get_user_model().objects.create_user(username="operator", password=PASSWORD, is_staff=True)
    operator.groups.add(operators)
    return Seeded(shanghai=shanghai, beijing=beijing)


def _figure_data(page: Any, chart_id: str) -> list[dict[str, Any]]:
    """The traces plotly drew in ``chart_id`` (``gd.data``), as plain JSON."""
    return page.evaluate(
        """(id) => document.getElementById(id).data.map((trace) => ({
            name: trace.name === undefined ? null : trace.name,
            x: trace.x ? Array.from(trace.x) : null,
            y: trace.y ? Array.from(trace.y) : null,
            labels: trace.labels ? Array.from(trace.labels) : null,
            values: trace.values ? Array.from(trace.values) : null,
            customdata: trace.customdata ? Array.from(trace.customdata) : null,
        }))""",
        chart_id,
    )


def test_an_operator_reads_the_months_figures_on_the_dashboard(
    live_server: Any, page: Any, seeded: Seeded, tmp_path: Path
):
    from reports import selectors

    kpis = selectors.kpis_monthly(month=MONTH)
    trend = selectors.kpis_trend(end_month=MONTH, months=13)
    by_store = selectors.kpis_by_store(month=MONTH)
    assert kpis["purchases"] > 0  # the seed reached the report

    # given: the operator opens the report for March 2025 and signs in through the admin login
    url = f"{live_server.url}/reports/?month=2025-03"
    page.goto(url)
    expect(page).to_have_url(re.compile(r"/admin/login/\?next="))
    page.locator("#id_username").fill("operator")
    page.locator("#id_password").fill(PASSWORD)
    page.locator("#id_password").press("Enter")
    expect(page).to_have_url(url)

    # then: every chart is drawn (plotly's SVG in each chart's div)
    expect(page.locator("#report")).to_have_attribute("data-charts-rendered", "true", timeout=30_000)
    drawn = page.evaluate("Array.from(document.querySelectorAll('#report [data-figure]')).map((div) => div.id)")
    assert sorted(drawn) == sorted(CHARTS)
    for chart in CHARTS:
        expect(page.locator(f"#{chart}")).to_have_attribute("data-rendered", "true")
        assert page.locator(f"#{chart} svg.main-svg").count() >= 1, chart
    expect(page.locator("#filter-month")).to_have_value("2025-03")

    # and: the cards show kpis_monthly's figures, exactly (data-value) and formatted (text)
    for column in exports.KPI_COLUMNS:
        card = page.locator(f"#kpi-{column.key}")
        expect(card).to_have_attribute("data-value", exports.cell_text(kpis[column.key], column.kind or ""))
        expect(card.locator(".kpi-value")).to_have_text(display(kpis[column.key], column.kind))

    # and: the charts' data are the same figures
    members = _figure_data(page, "chart-members")
    assert members[0]["x"] == [item["month"].strftime("%Y-%m") for item in trend]
    assert members[0]["x"][-1] == "2025-03"
    assert members[0]["y"][-1] == kpis["members_at_month_end"]
    assert members[1]["y"][-1] == kpis["active_members"]
    assert members[2]["y"][-1] == kpis["new_members"]
    assert members[0]["y"] == [item["members_at_month_end"] for item in trend]
    sales = _figure_data(page, "chart-sales")
    assert Decimal(str(sales[0]["y"][-1])) == kpis["member_sales"]
    assert Decimal(str(sales[1]["y"][-1])) == Decimal(str(kpis["average_order_value"]))
    points = _figure_data(page, "chart-points")
    assert [trace["y"][-1] for trace in points] == [
        kpis["points_issued"],
        kpis["points_redeemed"],
        kpis["points_expired"],
    ]
    distribution = _figure_data(page, "chart-tier-distribution")[0]
    shown = dict(zip(distribution["customdata"], distribution["values"], strict=True))
    assert shown == {code: n for code, n in kpis["tier_distribution"].items() if code in shown}
    assert sum(shown.values()) == sum(kpis["tier_distribution"].values())
    stores = _figure_data(page, "chart-stores")[0]
    assert stores["customdata"] == [item["store_code"] for item in by_store]
    assert [Decimal(str(y)) for y in stores["y"]] == [item["member_sales"] for item in by_store]

    screenshot = Path(os.environ.get(SCREENSHOT_ENV) or tmp_path / "reports-dashboard.png")
    page.screenshot(path=str(screenshot), full_page=True)

    # and: the month's KPI export, downloaded in the operator's session, carries the same figures
    href = page.locator("#export-kpis-csv").get_attribute("href")
    assert href == "/reports/export/kpis.csv?month=2025-03"
    response = page.context.request.get(live_server.url + href)
    assert response.status == 200
    rows = list(csv.reader(io.StringIO(response.body().decode("utf-8-sig"))))
    assert {row[0]: row[2] for row in rows[1:]} == {
        column.key: exports.cell_text(kpis[column.key], column.kind or "") for column in exports.KPI_COLUMNS
    }

    # when: the page is switched to English
    page.locator("#language-select").select_option("en")

    # then: the same month, charts titled in English, the same numbers
    expect(page).to_have_url(url)
    expect(page.locator("html")).to_have_attribute("lang", "en")
    expect(page.locator("#report")).to_have_attribute("data-charts-rendered", "true", timeout=30_000)
    expect(page.locator("#chart-members .gtitle")).to_have_text("Members")
    expect(page.locator("#kpi-members_at_month_end .kpi-label")).to_have_text("Members at month end")
    assert _figure_data(page, "chart-members")[0]["y"][-1] == kpis["members_at_month_end"]
    page.screenshot(path=str(screenshot.with_name(screenshot.stem + "-en.png")), full_page=True)
