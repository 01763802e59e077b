"""The report pages: who may see what, store scoping, exports (CSV and XLSX)
carrying exactly the selectors' numbers, and bad requests.

A small history is seeded through the real services (purchases back-dated
with ``now=``/``paid_at``, refunds in and across the month), the daily
rollups are built, and every figure the pages or exports show is compared with
what ``reports.selectors`` answers for the same month, store and tier.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.test import Client
from django.utils import timezone, translation

from campaigns.services.segments import segments_compute
from loyalty.roles import AUDITOR, CLERK, MARKETING, OPERATOR, STORE_MANAGER
from members.models import Member, StaffProfile, Store, Tier, TierChange
from points.services import purchase_refund
from reports import exports
from reports.views import display, last_complete_month
from tests.points.factories import MemberFactory, buy, local, member_in_tier

pytestmark = pytest.mark.django_db

MONTH = date(2025, 3, 1)
MONTH_PARAM = "2025-03"
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


@pytest.fixture(autouse=True)
def _restore_language():
    # LocaleMiddleware activates the request's language in this thread.
    with translation.override(translation.get_language()):
        yield


# -----------------------------------------------------------------------------
# Seed: two stores, three members, purchases and refunds in Feb and Mar 2025
# -----------------------------------------------------------------------------
@dataclass
class History:
    shanghai: Store
    beijing: Store
    members: list[Member]


def _registered(member: Member, at: Any) -> Member:
    # member_enrol stamps "now"; the report's history needs earlier registrations
    # (and the enrolment's tier change with them).
    Member.objects.filter(pk=member.pk).update(created_at=at)
    TierChange.objects.filter(member=member).update(created_at=at)
    member.refresh_from_db()
    return member


def _upgraded_at(member: Member, at: Any) -> None:
    # A tier change is stamped "now" too; a back-dated purchase's upgrade belongs at its time.
    TierChange.objects.filter(member=member, reason=TierChange.Reason.UPGRADE).update(created_at=at)


def _refund(store: Store, receipt_no: str, refund_no: str, amount: str, at: Any) -> None:
    purchase_refund(
        store=store, terminal=None, receipt_no=receipt_no, refund_no=refund_no, amount=Decimal(amount), at=at
    )


def seed_history(shanghai: Store, beijing: Store) -> History:
    from reports.services import rollups_build

    a = _registered(MemberFactory(phone="13900000001", store=shanghai), local(2025, 2, 3, 10))
    b = _registered(MemberFactory(phone="13900000002", store=shanghai), local(2025, 2, 20, 15))
    c = _registered(MemberFactory(phone="13900000003", store=beijing), local(2025, 3, 2, 9))
    for member, since in ((a, local(2025, 2, 3, 10)), (b, local(2025, 2, 20, 15)), (c, local(2025, 3, 2, 9))):
        member_in_tier(member, "silver", since=since)
    # February: one purchase, partly refunded in March (a refund across the month boundary)
    buy(store=shanghai, terminal=None, member=a, receipt_no="SH-0201", amount="300.00", at=local(2025, 2, 15, 12))
    # March: a repeat buyer, a refunded purchase, an upgrade to gold, a purchase at another store
    buy(store=shanghai, terminal=None, member=a, receipt_no="SH-0301", amount="200.00", at=local(2025, 3, 5, 11))
    buy(store=shanghai, terminal=None, member=a, receipt_no="SH-0302", amount="150.00", at=local(2025, 3, 20, 18))
    buy(store=shanghai, terminal=None, member=b, receipt_no="SH-0303", amount="1000.00", at=local(2025, 3, 10, 14))
    buy(store=beijing, terminal=None, member=c, receipt_no="BJ-0301", amount="6000.00", at=local(2025, 3, 8, 16))
    _upgraded_at(c, local(2025, 3, 8, 16))
    buy(store=beijing, terminal=None, member=a, receipt_no="BJ-0302", amount="80.00", at=local(2025, 3, 25, 19))
    _refund(shanghai, "SH-0303", "RF-0303", "400.00", local(2025, 3, 12, 10))
    _refund(shanghai, "SH-0201", "RF-0201", "100.00", local(2025, 3, 1, 10))
    segments_compute(as_of=local(2025, 4, 1))  # RFM groups as the nightly job would set them
    rollups_build()
    return History(shanghai=shanghai, beijing=beijing, members=[a, b, c])


@pytest.fixture
def history(store: Store, other_store: Store) -> History:
    return seed_history(store, other_store)


def _selectors() -> Any:
    from reports import selectors

    return selectors


# -----------------------------------------------------------------------------
# Users
# -----------------------------------------------------------------------------
PASSWORD = "report-password-1"


def _user(username: str, *, groups: tuple[str, ...] = (), store: Store | None = None, staff: bool = True) -> Any:
    user = get_user_model().objects.create_user(username=username, password=PASSWORD, is_staff=staff)
    for name in groups:
        group, _ = Group.objects.get_or_create(name=name)
        user.groups.add(group)
    if store is not None or STORE_MANAGER in groups or CLERK in groups:
        StaffProfile.objects.create(user=user, store=store)
    return user


def _client(user: Any, language: str = "en") -> Client:
    client = Client(HTTP_ACCEPT_LANGUAGE=language)
    client.force_login(user)
    return client


def _csv_rows(response: Any) -> list[list[str]]:
    body = response.content
    assert body.startswith(b"\xef\xbb\xbf")  # UTF-8 byte-order mark, for Excel
    return list(csv.reader(io.StringIO(body.decode("utf-8")[1:])))


def _xlsx_rows(response: Any) -> list[list[Any]]:
    from openpyxl import load_workbook

    workbook = load_workbook(io.BytesIO(response.content), read_only=True)
    sheet = workbook.worksheets[0]
    return [list(row) for row in sheet.iter_rows(values_only=True)]


def _same_number(cell: Any, value: Any) -> bool:
    """An XLSX cell holds the selector's value (numbers as numbers, exactly)."""
    if value is None:
        return cell is None
    if isinstance(value, date):
        return cell == value.strftime("%Y-%m")
    if isinstance(value, (int, float, Decimal)) and not isinstance(value, bool):
        return isinstance(cell, (int, float)) and Decimal(str(cell)) == Decimal(str(value))
    return cell == str(value)


# -----------------------------------------------------------------------------
# Access
# -----------------------------------------------------------------------------
def test_anonymous_users_are_sent_to_the_admin_login(client):
    # when
    response = client.get(f"/reports/?month={MONTH_PARAM}")
    export = client.get(f"/reports/export/kpis.csv?month={MONTH_PARAM}")
    # then
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/?next=/reports/")
    assert export.status_code == 302
    assert export["Location"].startswith("/admin/login/")


@pytest.mark.parametrize("role", [OPERATOR, MARKETING, AUDITOR])
def test_chain_roles_see_every_store_and_the_chain_wide_sections(history, role):
    # given
    client = _client(_user("chain", groups=(role,)))
    # when
    response = client.get(f"/reports/?month={MONTH_PARAM}")
    # then
    assert response.status_code == 200
    html = response.content.decode()
    for chart in ("chart-members", "chart-stores", "chart-tier-movement", "chart-rfm", "chart-cohorts"):
        assert f'id="{chart}"' in html
    assert {store.code for store in response.context["stores"]} == {"SH001", "BJ001"}
    assert response.context["store_locked"] is False
    kpis = _selectors().kpis_monthly(month=MONTH)
    assert response.context["query"].store is None
    assert {card.key: card.value for _, cards in response.context["card_groups"] for card in cards} == {
        column.key: kpis[column.key] for column in exports.KPI_COLUMNS
    }


def test_the_seeded_month_has_figures(history):
    # A guard on the seed itself: the comparisons below are not of empty reports.
    kpis = _selectors().kpis_monthly(month=MONTH)
    assert kpis["purchases"] > 0
    assert kpis["member_sales"] > 0
    assert kpis["active_members"] > 0
    assert kpis["new_members"] > 0
    assert kpis["upgrades"] > 0
    assert _selectors().tier_movement_matrix(month=MONTH)


def test_a_superuser_sees_every_store(history):
    # given
    root = get_user_model().objects.create_superuser("root", "root@example.cn", PASSWORD)
    # when
    response = _client(root).get(f"/reports/?month={MONTH_PARAM}&store=BJ001")
    # then
    assert response.status_code == 200
    assert response.context["query"].store == history.beijing


@pytest.mark.parametrize(
    "user_kwargs",
    [
        pytest.param({"groups": ()}, id="staff-without-role"),
        pytest.param({"groups": (CLERK,), "store": "SH001"}, id="clerk"),
        pytest.param({"groups": (STORE_MANAGER,)}, id="store-manager-without-store"),
    ],
)
def test_other_staff_are_refused(store, user_kwargs):
    # given
    kwargs = dict(user_kwargs)
    if kwargs.get("store"):
        kwargs["store"] = store
    client = _client(_user("someone", **kwargs))
    # when
    page = client.get(f"/reports/?month={MONTH_PARAM}")
    export = client.get(f"/reports/export/kpis.csv?month={MONTH_PARAM}")
    # then
    assert page.status_code == 403
    assert export.status_code == 403


def test_a_non_staff_user_in_a_report_group_is_sent_to_the_login(store):
    # given: the report is part of the admin, whose login requires is_staff
    client = _client(_user("outsider", groups=(OPERATOR,), staff=False))
    # when
    response = client.get(f"/reports/?month={MONTH_PARAM}")
    # then
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


def test_a_store_manager_sees_their_own_store_only(history):
    # given
    manager = _user("manager", groups=(STORE_MANAGER,), store=history.shanghai)
    client = _client(manager)
    # when
    response = client.get(f"/reports/?month={MONTH_PARAM}")
    # then: the store filter is forced to the manager's store
    assert response.status_code == 200
    assert response.context["query"].store == history.shanghai
    assert response.context["store_locked"] is True
    assert response.context["stores"] == [history.shanghai]
    kpis = _selectors().kpis_monthly(month=MONTH, store=history.shanghai)
    cards = {card.key: card for _, group in response.context["card_groups"] for card in group}
    assert {key: card.value for key, card in cards.items()} == {c.key: kpis[c.key] for c in exports.KPI_COLUMNS}
    html = response.content.decode()
    assert f'id="kpi-member_sales" data-value="{kpis["member_sales"]}"' in html
    # and the store's own tier movements and segments, but nothing chain-wide
    figures = {chart.id: chart.figure for section in response.context["sections"] for chart in section.charts}
    assert set(figures) == {
        "chart-members",
        "chart-repeat-rate",
        "chart-sales",
        "chart-points",
        "chart-liability",
        "chart-tier-distribution",
        "chart-tier-movement",
        "chart-rfm",
    }
    rfm = _selectors().rfm_segment_map(store=history.shanghai)
    assert figures["chart-rfm"]["data"][0]["values"] == [row["members"] for row in rfm if row["members"]]
    assert sum(row["members"] for row in rfm) == 2  # the Shanghai members
    tables = {table.name for section in response.context["sections"] for table in section.tables}
    assert tables == {"trend", "tier_distribution", "tier_movement", "tiers", "rfm", "coupon_write_off"}
    assert "北京三里屯店" not in html


def test_a_store_manager_asking_for_another_store_is_refused(history):
    # given
    client = _client(_user("manager", groups=(STORE_MANAGER,), store=history.shanghai))
    # when
    page = client.get(f"/reports/?month={MONTH_PARAM}&store=BJ001")
    export = client.get(f"/reports/export/kpis.csv?month={MONTH_PARAM}&store=BJ001")
    own = client.get(f"/reports/export/kpis.csv?month={MONTH_PARAM}&store=SH001")
    # then
    assert page.status_code == 403
    assert export.status_code == 403
    assert own.status_code == 200


@pytest.mark.parametrize("table", [name for name, spec in exports.TABLES.items() if spec.chain_only])
def test_a_store_manager_cannot_export_chain_wide_tables(history, table):
    # given
    client = _client(_user("manager", groups=(STORE_MANAGER,), store=history.shanghai))
    # when
    response = client.get(f"/reports/export/{table}.csv?month={MONTH_PARAM}")
    # then
    assert response.status_code == 403


def test_a_store_managers_exports_are_their_store_only(history):
    # given
    client = _client(_user("manager", groups=(STORE_MANAGER,), store=history.shanghai))
    selectors = _selectors()
    # when
    kpis_rows = _csv_rows(client.get(f"/reports/export/kpis.csv?month={MONTH_PARAM}"))
    stores_rows = _csv_rows(client.get(f"/reports/export/stores.csv?month={MONTH_PARAM}"))
    # then: the figures are the store's, and the comparison lists the store alone
    kpis = selectors.kpis_monthly(month=MONTH, store=history.shanghai)
    assert {row[0]: row[2] for row in kpis_rows[1:]} == {
        c.key: exports.cell_text(kpis[c.key], c.kind or "") for c in exports.KPI_COLUMNS
    }
    assert [row[0] for row in stores_rows[1:]] == ["SH001"]
    # and the tables that can be limited to a store are
    moves = _csv_rows(client.get(f"/reports/export/tier_movement.csv?month={MONTH_PARAM}"))
    own_moves = selectors.tier_movement_matrix(month=MONTH, store=history.shanghai)
    assert [(row[0], row[2], int(row[4])) for row in moves[1:]] == [
        (m["from"] or "", m["to"], m["members"]) for m in own_moves
    ]
    tiers = _csv_rows(client.get(f"/reports/export/tiers.csv?month={MONTH_PARAM}"))
    by_tier = selectors.kpis_by_tier(month=MONTH, store=history.shanghai)
    assert [row[2:] for row in tiers[1:]] == [
        [exports.cell_text(item[c.key], "") for c in exports.KPI_COLUMNS] for item in by_tier
    ]


def test_an_operator_filters_by_store_and_tier(history):
    # given
    client = _client(_user("operator", groups=(OPERATOR,)))
    gold = Tier.objects.get(code="gold")
    # when
    response = client.get(f"/reports/?month={MONTH_PARAM}&store=BJ001&tier=gold")
    # then
    assert response.status_code == 200
    kpis = _selectors().kpis_monthly(month=MONTH, store=history.beijing, tier=gold)
    cards = {card.key: card.value for _, group in response.context["card_groups"] for card in group}
    assert cards == {c.key: kpis[c.key] for c in exports.KPI_COLUMNS}


def test_the_admin_index_links_to_the_report_for_report_users(store):
    # given
    root = get_user_model().objects.create_superuser("root", "root@example.cn", PASSWORD)
    clerk = _user("clerk", groups=(CLERK,), store=store)
    marketing = _user("marketing", groups=(MARKETING,))
    manager = _user("manager", groups=(STORE_MANAGER,), store=store)
    # when
    pages = {
        name: _client(user).get("/admin/").content.decode()
        for name, user in [("root", root), ("marketing", marketing), ("manager", manager), ("clerk", clerk)]
    }
    # then
    for name in ("root", "marketing", "manager"):
        assert 'id="reports-link"' in pages[name], name
        assert 'href="/reports/"' in pages[name], name
    assert 'id="reports-link"' not in pages["clerk"]


# -----------------------------------------------------------------------------
# Month, store and tier parameters
# -----------------------------------------------------------------------------
def test_without_a_month_the_last_complete_month_is_shown(store):
    # given
    client = _client(_user("operator", groups=(OPERATOR,)))
    # when
    response = client.get("/reports/")
    # then
    today = timezone.localdate()
    expected = date(today.year - (today.month == 1), (today.month - 2) % 12 + 1, 1)
    assert response.status_code == 200
    assert response.context["query"].month == expected == last_complete_month()
    assert f'value="{expected:%Y-%m}"' in response.content.decode()


@pytest.mark.parametrize(
    "params",
    [
        "month=2025-13",
        "month=2025-00",
        "month=march",
        "month=2025-3-1",
        "month=1999-12",
        "month=2999-01",
        "month=2025-03&store=NOPE",
        "month=2025-03&tier=diamond",
    ],
)
def test_bad_parameters_are_a_400(store, params):
    # given
    client = _client(_user("operator", groups=(OPERATOR,)))
    # when
    page = client.get(f"/reports/?{params}")
    export = client.get(f"/reports/export/trend.csv?{params}")
    xlsx = client.get(f"/reports/export/trend.xlsx?{params}")
    # then
    assert page.status_code == 400
    assert export.status_code == 400
    assert xlsx.status_code == 400
    assert page.context["errors"]
    assert 'id="report-errors"' in page.content.decode()


@pytest.mark.parametrize("path", ["/reports/export/nope.csv", "/reports/export/kpis.pdf", "/reports/export/kpis.json"])
def test_unknown_tables_and_formats_are_a_404(store, path):
    # given
    client = _client(_user("operator", groups=(OPERATOR,)))
    # when
    response = client.get(f"{path}?month={MONTH_PARAM}")
    # then
    assert response.status_code == 404


# -----------------------------------------------------------------------------
# Exports: content type, and exactly the selectors' numbers
# -----------------------------------------------------------------------------
@pytest.fixture
def operator_client(history: History) -> Client:
    return _client(_user("operator", groups=(OPERATOR,)))


def test_kpis_csv_equals_the_selector(operator_client, history):
    # when
    response = operator_client.get(f"/reports/export/kpis.csv?month={MONTH_PARAM}&store=SH001")
    # then
    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"] == 'attachment; filename="kpis-2025-03-SH001.csv"'
    rows = _csv_rows(response)
    kpis = _selectors().kpis_monthly(month=MONTH, store=history.shanghai)
    assert rows[0] == ["Code", "KPI", "Value"]
    assert [row[0] for row in rows[1:]] == [c.key for c in exports.KPI_COLUMNS]
    for (key, _name, value), column in zip(rows[1:], exports.KPI_COLUMNS, strict=True):
        expected = kpis[key]
        assert value == ("" if expected is None else str(expected)), key
        if expected is not None:
            assert Decimal(value) == Decimal(str(expected))
        assert _name == str(column.label)


def test_trend_csv_and_xlsx_equal_the_selector(operator_client, history):
    # given
    trend = _selectors().kpis_trend(end_month=MONTH, months=13)
    keys = ["month", *(c.key for c in exports.KPI_COLUMNS)]
    # when
    as_csv = operator_client.get(f"/reports/export/trend.csv?month={MONTH_PARAM}")
    as_xlsx = operator_client.get(f"/reports/export/trend.xlsx?month={MONTH_PARAM}")
    # then
    assert as_xlsx.status_code == 200
    assert as_xlsx["Content-Type"] == XLSX
    assert as_xlsx["Content-Disposition"] == 'attachment; filename="trend-2025-03.xlsx"'
    csv_rows = _csv_rows(as_csv)
    xlsx_rows = _xlsx_rows(as_xlsx)
    assert len(csv_rows) == len(xlsx_rows) == 14
    assert csv_rows[0] == [str(exports.KNOWN_LABELS["month"])] + [str(c.label) for c in exports.KPI_COLUMNS]
    assert list(xlsx_rows[0]) == csv_rows[0]
    assert csv_rows[-1][0] == MONTH_PARAM
    for csv_row, xlsx_row, item in zip(csv_rows[1:], xlsx_rows[1:], trend, strict=True):
        assert csv_row == [exports.cell_text(item[key], exports.MONTH if key == "month" else "") for key in keys]
        assert all(_same_number(cell, item[key]) for cell, key in zip(xlsx_row, keys, strict=True)), item["month"]
    # and the month itself is kpis_monthly's
    kpis = _selectors().kpis_monthly(month=MONTH)
    assert csv_rows[-1][1:] == [exports.cell_text(kpis[c.key], "") for c in exports.KPI_COLUMNS]


def test_stores_csv_and_xlsx_equal_the_selector(operator_client, history):
    # given
    by_store = _selectors().kpis_by_store(month=MONTH)
    keys = ["store_code", "store_name", *(c.key for c in exports.KPI_COLUMNS)]
    # when
    csv_rows = _csv_rows(operator_client.get(f"/reports/export/stores.csv?month={MONTH_PARAM}"))
    xlsx_rows = _xlsx_rows(operator_client.get(f"/reports/export/stores.xlsx?month={MONTH_PARAM}"))
    # then
    assert {row[0] for row in csv_rows[1:]} >= {"SH001", "BJ001"}
    assert "上海南京西路店" in {row[1] for row in csv_rows[1:]}
    for csv_row, xlsx_row, item in zip(csv_rows[1:], xlsx_rows[1:], by_store, strict=True):
        assert csv_row == [exports.cell_text(item[key], "") for key in keys]
        assert all(_same_number(cell, item[key]) for cell, key in zip(xlsx_row, keys, strict=True))


def test_tier_tables_equal_the_selector(operator_client, history):
    # given
    selectors = _selectors()
    kpis = selectors.kpis_monthly(month=MONTH)
    movement = selectors.tier_movement_matrix(month=MONTH)
    by_tier = selectors.kpis_by_tier(month=MONTH)
    # when
    distribution = _csv_rows(operator_client.get(f"/reports/export/tier_distribution.csv?month={MONTH_PARAM}"))
    moves = _xlsx_rows(operator_client.get(f"/reports/export/tier_movement.xlsx?month={MONTH_PARAM}"))
    tiers = _csv_rows(operator_client.get(f"/reports/export/tiers.csv?month={MONTH_PARAM}"))
    # then
    assert {row[0]: int(row[2]) for row in distribution[1:]} == kpis["tier_distribution"]
    assert [(row[0], row[2], row[4]) for row in moves[1:]] == [(m["from"], m["to"], m["members"]) for m in movement]
    assert [row[0] for row in tiers[1:]] == [item["tier_code"] for item in by_tier]
    assert [row[2:] for row in tiers[1:]] == [
        [exports.cell_text(item[c.key], "") for c in exports.KPI_COLUMNS] for item in by_tier
    ]


def test_cohort_and_rfm_tables_equal_the_selector(operator_client, history):
    # given
    selectors = _selectors()
    cohorts = selectors.cohort_retention(end_month=MONTH, months=12)
    rfm = selectors.rfm_segment_map()
    # when
    cohort_rows = _xlsx_rows(operator_client.get(f"/reports/export/cohort_retention.xlsx?month={MONTH_PARAM}"))
    rfm_rows = _csv_rows(operator_client.get(f"/reports/export/rfm.csv?month={MONTH_PARAM}"))
    # then
    assert len(cohort_rows) == len(cohorts) + 1
    for row, cohort in zip(cohort_rows[1:], cohorts, strict=True):
        assert _same_number(row[0], cohort["cohort"])
        assert row[1] == cohort["size"]
        shares = list(row[2:])[: len(cohort["retention"])]
        assert all(_same_number(cell, share) for cell, share in zip(shares, cohort["retention"], strict=True))
    keys = list(rfm[0]) if rfm else []
    assert list(rfm_rows[1:]) == [[exports.cell_text(item[key], "") for key in keys] for item in rfm]


@pytest.mark.parametrize("table", sorted(exports.TABLES))
@pytest.mark.parametrize("fmt", ["csv", "xlsx"])
def test_every_table_exports_in_both_formats(operator_client, table, fmt):
    # when
    response = operator_client.get(f"/reports/export/{table}.{fmt}?month={MONTH_PARAM}")
    # then
    assert response.status_code == 200
    assert response["Content-Type"] == (exports.CSV_CONTENT_TYPE if fmt == "csv" else XLSX)
    rows = _csv_rows(response) if fmt == "csv" else _xlsx_rows(response)
    table_rows = exports.table_build(table, exports.ReportQuery(month=MONTH)).rows
    assert len([row for row in rows if row]) == len(table_rows) + bool(rows and rows[0])


def test_exports_are_in_the_language_asked_for(history):
    # given
    operator = _user("operator", groups=(OPERATOR,))
    # when
    english = _csv_rows(_client(operator, "en").get(f"/reports/export/kpis.csv?month={MONTH_PARAM}"))
    with translation.override("zh-hans"):
        chinese_label = str(exports.KPI_BY_KEY["members_at_month_end"].label)
    chinese = _csv_rows(_client(operator, "zh-hans").get(f"/reports/export/kpis.csv?month={MONTH_PARAM}"))
    # then: labels follow the language, figures do not change
    assert english[2][1] == "Members at month end"
    assert chinese[2][1] == chinese_label
    assert [row[2] for row in english][1:] == [row[2] for row in chinese][1:]


# -----------------------------------------------------------------------------
# The page: language, numbers as shown, and the local plotly.js
# -----------------------------------------------------------------------------
def test_the_page_follows_the_language(operator_client):
    # when
    chinese = operator_client.get(f"/reports/?month={MONTH_PARAM}", HTTP_ACCEPT_LANGUAGE="zh-CN,zh;q=0.9")
    english = operator_client.get(f"/reports/?month={MONTH_PARAM}", HTTP_ACCEPT_LANGUAGE="en")
    # then
    assert chinese.status_code == english.status_code == 200
    assert '<html lang="zh-hans"' in chinese.content.decode()
    assert '<html lang="en"' in english.content.decode()
    assert "Members at month end" in english.content.decode()
    members_chart = next(
        chart.figure
        for section in english.context["sections"]
        for chart in section.charts
        if chart.id == "chart-members"
    )
    assert members_chart["layout"]["title"]["text"] == "Members"
    assert [trace["name"] for trace in members_chart["data"]] == [
        "Members at month end",
        "Active members",
        "New members",
    ]


def test_charts_carry_the_selectors_numbers(operator_client, history):
    # given
    selectors = _selectors()
    trend = selectors.kpis_trend(end_month=MONTH, months=13)
    # when
    response = operator_client.get(f"/reports/?month={MONTH_PARAM}")
    # then
    figures = {chart.id: chart.figure for section in response.context["sections"] for chart in section.charts}
    members = figures["chart-members"]["data"]
    assert members[0]["x"] == [item["month"].strftime("%Y-%m") for item in trend]
    assert members[0]["y"] == [item["members_at_month_end"] for item in trend]
    sales = figures["chart-sales"]["data"][0]["y"]
    assert sales == [float(item["member_sales"]) for item in trend]
    stores = figures["chart-stores"]["data"][0]
    by_store = selectors.kpis_by_store(month=MONTH)
    assert stores["customdata"] == [item["store_code"] for item in by_store]
    assert stores["y"] == [float(item["member_sales"]) for item in by_store]


def test_cards_show_the_figures_formatted(operator_client, history):
    # when
    response = operator_client.get(f"/reports/?month={MONTH_PARAM}")
    # then
    kpis = _selectors().kpis_monthly(month=MONTH)
    html = response.content.decode()
    for column in exports.KPI_COLUMNS:
        raw = exports.cell_text(kpis[column.key], column.kind or "")
        assert f'id="kpi-{column.key}" data-value="{raw}"' in html
    cards = {card.key: card.text for _, group in response.context["card_groups"] for card in group}
    assert cards["member_sales"] == f"¥{kpis['member_sales']:,.2f}"
    assert cards["purchases"] == f"{kpis['purchases']:,}"


@pytest.mark.parametrize(
    ("value", "kind", "text"),
    [
        (1234567, exports.COUNT, "1,234,567"),
        (Decimal("12345.6"), exports.MONEY, "¥12,345.60"),
        (Decimal("-400.00"), exports.MONEY, "-¥400.00"),
        (Decimal("24.0"), exports.NUMBER, "24.0"),
        (Decimal("1234.56"), exports.NUMBER, "1,234.56"),
        (Decimal("0.3333"), exports.RATE, "33.3%"),
        (None, exports.RATE, "—"),
        (date(2025, 3, 1), exports.MONTH, "2025-03"),
        ("上海", exports.TEXT, "上海"),
    ],
)
def test_display_formats(value, kind, text):
    assert display(value, kind) == text


def test_plotly_js_is_served_locally_with_long_caching(client):
    # when: no sign-in needed (a library, no data)
    plain = client.get("/reports/plotly.min.js")
    zipped = client.get("/reports/plotly.min.js", HTTP_ACCEPT_ENCODING="gzip, deflate")
    again = client.get("/reports/plotly.min.js", HTTP_IF_NONE_MATCH=plain["ETag"])
    # then
    assert plain.status_code == 200
    assert plain["Content-Type"] == "text/javascript; charset=utf-8"
    assert "max-age=31536000" in plain["Cache-Control"]
    assert b"plotly" in plain.content[:2000].lower()
    assert len(plain.content) > 1_000_000
    assert zipped["Content-Encoding"] == "gzip"
    assert len(zipped.content) < len(plain.content) / 2
    assert again.status_code == 304


def test_the_page_loads_plotly_from_this_server(operator_client):
    # when
    html = operator_client.get(f"/reports/?month={MONTH_PARAM}").content.decode()
    # then: no CDN (report machines have no internet)
    assert '<script src="/reports/plotly.min.js?v=' in html
    assert "cdn.plot.ly" not in html
    assert '<script src="http' not in html
