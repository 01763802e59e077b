"""The report's tables, and each of them as CSV and as XLSX.

A table is built once from the KPI selectors (``reports.selectors``) for a
``ReportQuery`` (month, store, tier) and then rendered three ways: as an HTML
table under its chart, as CSV (UTF-8 with a byte-order mark, so that Excel
opens Chinese text correctly) and as XLSX (openpyxl). The cells hold the
selectors' values unchanged: money stays ``Decimal``, rates stay ratios
(0.25, not "25%"), so an export carries exactly the figures of the report.

Three selectors answer for the whole chain only (cohort retention, breakage,
campaigns): those tables are ``chain_only`` and are not offered to users
bound to one store. The others follow the store filter; the tier filter
applies to the KPI tables (cards, trend, by store, tier distribution).
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from django.db import DEFAULT_DB_ALIAS
from django.utils.translation import gettext, pgettext_lazy
from django.utils.translation import gettext_lazy as _

from members.models import Store, Tier
from reports import selectors

# Kinds of cell: they choose the HTML formatting and the XLSX number format.
TEXT = "text"
COUNT = "count"
MONEY = "money"
RATE = "rate"
NUMBER = "number"
MONTH = "month"

XLSX_FORMATS = {COUNT: "#,##0", MONEY: "#,##0.00", RATE: "0.0%", NUMBER: "#,##0.00"}
CSV_CONTENT_TYPE = "text/csv; charset=utf-8"
XLSX_CONTENT_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
FORMATS = ("csv", "xlsx")
# How many months the trend and the cohort tables cover.
TREND_MONTHS = 13
COHORT_MONTHS = 12


@dataclass(frozen=True)
class Column:
    key: str
    label: Any  # a lazy translation, rendered in the language of the request
    # None: the kind differs by row (``Table.row_kinds``).
    kind: str | None = COUNT


# The scalar KPIs of DESIGN.md ("Monthly KPI definitions"), in the order the
# report shows them; ``tier_distribution`` is a table of its own.
KPI_COLUMNS: tuple[Column, ...] = (
    Column("new_members", _("New members")),
    Column("members_at_month_end", _("Members at month end")),
    Column("active_members", _("Active members")),
    Column("repeat_rate", _("Repeat rate"), RATE),
    Column("member_sales", _("Member sales (CNY)"), MONEY),
    Column("purchases", _("Purchases")),
    Column("average_order_value", _("Average order value (CNY)"), MONEY),
    Column("points_issued", _("Points issued")),
    Column("points_redeemed", _("Points redeemed")),
    Column("points_expired", _("Points expired")),
    Column("points_reversed", _("Points reversed")),
    Column("points_outstanding", _("Points outstanding")),
    Column("points_liability_cny", _("Points liability (CNY)"), MONEY),
    Column("points_expiring_next_month", _("Points expiring next month")),
    Column("coupons_issued", _("Coupons issued")),
    Column("coupons_written_off", _("Coupons written off")),
    Column("coupons_expired", _("Coupons expired")),
    Column("coupon_write_off_rate", _("Coupon write-off rate"), RATE),
    Column("upgrades", _("Tier upgrades")),
    Column("downgrades", _("Tier downgrades")),
    Column("sleeping_members", _("Sleeping members")),
    Column("churned_members", _("Churned members")),
)
KPI_BY_KEY = {column.key: column for column in KPI_COLUMNS}

# Labels of the lead columns of the KPI tables.
KNOWN_LABELS: dict[str, Any] = {
    "month": _("Month"),
    "store_code": _("Store code"),
    "store_name": _("Store"),
    "tier_code": _("Tier code"),
    "tier_name": _("Tier"),
    "from": _("From tier"),
    "to": _("To tier"),
    "members": _("Members"),
    "size": _("Members in cohort"),
}


@dataclass(frozen=True)
class ReportQuery:
    """What a report page or an export shows. ``store_locked``: the user is
    bound to ``store`` and may see nothing chain-wide (``TableSpec.chain_only``).
    ``using``: the database the figures are read from (the pages pass
    ``loyalty.dbrouters.reporting_alias()``)."""

    month: date
    store: Store | None = None
    tier: Tier | None = None
    store_locked: bool = False
    using: str = DEFAULT_DB_ALIAS


@dataclass
class Table:
    name: str
    title: Any
    columns: list[Column]
    rows: list[list[Any]]
    # Per-row kind of the cells of columns whose kind is ``None`` (the KPI table's
    # value column holds counts, money and rates).
    row_kinds: list[str] = field(default_factory=list)

    def kind(self, row: int, column: int) -> str:
        kind = self.columns[column].kind
        return kind if kind is not None else self.row_kinds[row]

    def header(self) -> list[str]:
        return [str(column.label) for column in self.columns]


@dataclass(frozen=True)
class TableSpec:
    title: Any
    build: Callable[[ReportQuery], Table]
    chain_only: bool = False


def scope_kwargs(query: ReportQuery) -> dict[str, Any]:
    """The store and tier filters as the selectors take them."""
    return {"store": query.store, "tier": query.tier}


# -----------------------------------------------------------------------------
# Table builders: each takes the query, and optionally the selector's answer
# when the page already has it (one query for the chart and the table).
# -----------------------------------------------------------------------------
Rows = list[dict[str, Any]]


def _kpi_rows(items: Iterable[dict[str, Any]], lead: list[str]) -> list[list[Any]]:
    return [[item.get(key) for key in lead] + [item.get(c.key) for c in KPI_COLUMNS] for item in items]


def kpis_table(query: ReportQuery, kpis: dict[str, Any] | None = None) -> Table:
    if kpis is None:
        kpis = selectors.kpis_monthly(month=query.month, **scope_kwargs(query), using=query.using)
    return Table(
        name="kpis",
        title=TABLES["kpis"].title,
        columns=[
            Column("kpi", pgettext_lazy("report column", "Code"), TEXT),
            Column("name", _("KPI"), TEXT),
            Column("value", pgettext_lazy("report column", "Value"), None),
        ],
        rows=[[c.key, str(c.label), kpis.get(c.key)] for c in KPI_COLUMNS],
        row_kinds=[c.kind or NUMBER for c in KPI_COLUMNS],
    )


def trend_table(query: ReportQuery, trend: Rows | None = None) -> Table:
    if trend is None:
        trend = selectors.kpis_trend(
            end_month=query.month, months=TREND_MONTHS, **scope_kwargs(query), using=query.using
        )
    return Table(
        name="trend",
        title=TABLES["trend"].title,
        columns=[Column("month", KNOWN_LABELS["month"], MONTH), *KPI_COLUMNS],
        rows=_kpi_rows(trend, ["month"]),
    )


def stores_table(query: ReportQuery, rows: Rows | None = None) -> Table:
    """Every store (one store's own for a store-bound user), in the query's tier."""
    if rows is None:
        rows = selectors.kpis_by_store(month=query.month, tier=query.tier, using=query.using)
    if query.store_locked:
        code = query.store.code if query.store else None
        rows = [row for row in rows if row.get("store_code") == code]
    return Table(
        name="stores",
        title=TABLES["stores"].title,
        columns=[
            Column("store_code", KNOWN_LABELS["store_code"], TEXT),
            Column("store_name", KNOWN_LABELS["store_name"], TEXT),
            *KPI_COLUMNS,
        ],
        rows=_kpi_rows(rows, ["store_code", "store_name"]),
    )


def tiers_table(query: ReportQuery, rows: Rows | None = None) -> Table:
    """Every tier, in the query's store."""
    if rows is None:
        rows = selectors.kpis_by_tier(month=query.month, store=query.store, using=query.using)
    return Table(
        name="tiers",
        title=TABLES["tiers"].title,
        columns=[
            Column("tier_code", KNOWN_LABELS["tier_code"], TEXT),
            Column("tier_name", KNOWN_LABELS["tier_name"], TEXT),
            *KPI_COLUMNS,
        ],
        rows=_kpi_rows(rows, ["tier_code", "tier_name"]),
    )


def tier_names(using: str = DEFAULT_DB_ALIAS) -> dict[str, str]:
    """Tier code → name, in rank order."""
    return dict(Tier.objects.using(using).order_by("rank").values_list("code", "name"))


def tier_distribution_table(query: ReportQuery, kpis: dict[str, Any] | None = None) -> Table:
    if kpis is None:
        kpis = selectors.kpis_monthly(month=query.month, **scope_kwargs(query), using=query.using)
    distribution = kpis.get("tier_distribution") or {}
    names = tier_names(query.using)
    return Table(
        name="tier_distribution",
        title=TABLES["tier_distribution"].title,
        columns=[
            Column("tier_code", KNOWN_LABELS["tier_code"], TEXT),
            Column("tier_name", KNOWN_LABELS["tier_name"], TEXT),
            Column("members", KNOWN_LABELS["members"]),
        ],
        rows=[[code, names.get(code, code), members] for code, members in distribution.items()],
    )


def enrolment_label() -> str:
    # ``from`` is None for a member's first tier (enrolment).
    return gettext("Enrolment")


def tier_movement_table(query: ReportQuery, rows: Rows | None = None) -> Table:
    """Moves in the month of the members registered at the query's store."""
    if rows is None:
        rows = selectors.tier_movement_matrix(month=query.month, store=query.store, using=query.using)
    names = tier_names(query.using)
    return Table(
        name="tier_movement",
        title=TABLES["tier_movement"].title,
        columns=[
            Column("from", KNOWN_LABELS["from"], TEXT),
            Column("from_name", _("From tier name"), TEXT),
            Column("to", KNOWN_LABELS["to"], TEXT),
            Column("to_name", _("To tier name"), TEXT),
            Column("members", KNOWN_LABELS["members"]),
        ],
        rows=[
            [
                row["from"],
                enrolment_label() if row["from"] is None else names.get(row["from"], row["from"]),
                row["to"],
                names.get(row["to"], row["to"]),
                row["members"],
            ]
            for row in rows
        ],
    )


def cohort_retention_table(query: ReportQuery, cohorts: Rows | None = None) -> Table:
    if cohorts is None:
        cohorts = selectors.cohort_retention(end_month=query.month, months=COHORT_MONTHS, using=query.using)
    width = max((len(cohort["retention"]) for cohort in cohorts), default=0)
    return Table(
        name="cohort_retention",
        title=TABLES["cohort_retention"].title,
        columns=[
            Column("cohort", _("Registration month"), MONTH),
            Column("size", KNOWN_LABELS["size"]),
            *(Column(f"month_{n}", month_offset_label(n), RATE) for n in range(width)),
        ],
        rows=[
            [cohort["cohort"], cohort["size"], *cohort["retention"], *([None] * (width - len(cohort["retention"])))]
            for cohort in cohorts
        ],
    )


def month_offset_label(n: int) -> str:
    return gettext("Month %(n)s") % {"n": n}


RFM_COLUMNS = (
    Column("group", _("Segment code"), TEXT),
    Column("label", _("Segment"), TEXT),
    Column("members", _("Members")),
    Column("avg_recency_days", _("Average days since last purchase"), NUMBER),
    Column("avg_frequency", _("Average purchases"), NUMBER),
    Column("avg_monetary", _("Average spend (CNY)"), MONEY),
)
BREAKAGE_COLUMNS = (
    Column("cohort", _("Earning month"), MONTH),
    Column("issued", _("Points issued")),
    Column("expired", _("Points expired so far")),
    Column("rate", _("Breakage rate"), RATE),
)
COUPON_COLUMNS = (
    Column("benefit", _("Benefit"), TEXT),
    Column("issued", _("Coupons issued")),
    Column("written_off", _("Coupons written off")),
    Column("rate", _("Write-off rate"), RATE),
)
CAMPAIGN_COLUMNS = (
    Column("campaign", _("Campaign"), TEXT),
    Column("members_reached", _("Members reached")),
    Column("points_issued", _("Points issued")),
    Column("coupons_issued", _("Coupons issued")),
    Column("coupons_written_off", _("Coupons written off")),
    Column("sales_of_reached_members", _("Sales of reached members (CNY)"), MONEY),
)


def rfm_table(query: ReportQuery, rows: Rows | None = None) -> Table:
    rows = rows if rows is not None else selectors.rfm_segment_map(store=query.store, using=query.using)
    return _keyed_table("rfm", rows, RFM_COLUMNS)


def breakage_table(query: ReportQuery, rows: Rows | None = None) -> Table:
    if rows is None:
        rows = selectors.breakage_by_cohort(end_month=query.month, months=COHORT_MONTHS, using=query.using)
    return _keyed_table("breakage", rows, BREAKAGE_COLUMNS)


def coupon_write_off_table(query: ReportQuery, rows: Rows | None = None) -> Table:
    if rows is None:
        rows = selectors.coupon_write_off_by_benefit(month=query.month, store=query.store, using=query.using)
    return _keyed_table("coupon_write_off", rows, COUPON_COLUMNS)


def campaigns_table(query: ReportQuery, rows: Rows | None = None) -> Table:
    rows = rows if rows is not None else selectors.campaign_results_for_month(month=query.month, using=query.using)
    return _keyed_table("campaigns", rows, CAMPAIGN_COLUMNS)


def _kind_of(values: list[Any]) -> str:
    sample = next((value for value in values if value is not None), None)
    if isinstance(sample, (bool, str)):
        return TEXT
    if isinstance(sample, (date, datetime)):
        return MONTH
    if isinstance(sample, int):
        return COUNT
    if isinstance(sample, (Decimal, float)):
        return NUMBER
    return TEXT


def _keyed_table(name: str, items: Iterable[dict[str, Any]], columns: Iterable[Column]) -> Table:
    """A table of the known ``columns``, then of any key a selector added since
    (shown under its own name), in the rows' order."""
    items = list(items)
    columns = list(columns)
    known = {column.key for column in columns}
    for item in items:
        for key in item:
            if key not in known:
                known.add(key)
                columns.append(Column(key, key.replace("_", " "), _kind_of([row.get(key) for row in items])))
    rows = [[_plain(item.get(column.key)) for column in columns] for item in items]
    return Table(name=name, title=TABLES[name].title, columns=columns, rows=rows)


def _plain(value: Any) -> Any:
    """Nested values (lists, dicts) as JSON text: a table cell holds one value."""
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, ensure_ascii=False, default=str)
    return value


# ``chain_only``: the selector has no store filter; a store-bound user does not
# get the table. Tables whose selector takes a store follow the store filter.
TABLES: dict[str, TableSpec] = {
    "kpis": TableSpec(_("Monthly KPIs"), kpis_table),
    "trend": TableSpec(_("13-month trend"), trend_table),
    "stores": TableSpec(_("KPIs by store"), stores_table),
    "tiers": TableSpec(_("KPIs by tier"), tiers_table),
    "tier_distribution": TableSpec(_("Tier distribution at month end"), tier_distribution_table),
    "tier_movement": TableSpec(_("Tier movements"), tier_movement_table),
    "coupon_write_off": TableSpec(_("Coupon write-off by benefit"), coupon_write_off_table),
    "rfm": TableSpec(_("RFM segments"), rfm_table),
    "cohort_retention": TableSpec(_("Cohort retention"), cohort_retention_table, chain_only=True),
    "breakage": TableSpec(_("Points breakage by earning cohort"), breakage_table, chain_only=True),
    "campaigns": TableSpec(_("Campaign results"), campaigns_table, chain_only=True),
}


def table_build(name: str, query: ReportQuery) -> Table:
    """Precondition: ``name`` is in ``TABLES``, and not chain-only for a
    store-locked query (the view checks both)."""
    return TABLES[name].build(query)


# -----------------------------------------------------------------------------
# Renderings
# -----------------------------------------------------------------------------
def cell_text(value: Any, kind: str) -> str:
    """A cell as CSV text: exact values (Decimal as is, rates as ratios)."""
    if value is None:
        return ""
    if kind == MONTH and isinstance(value, (date, datetime)):
        return value.strftime("%Y-%m")
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def table_csv(table: Table) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(table.header())
    for r, row in enumerate(table.rows):
        writer.writerow([cell_text(value, table.kind(r, c)) for c, value in enumerate(row)])
    # The BOM tells Excel the file is UTF-8; without it Chinese opens as mojibake.
    return ("\ufeff" + buffer.getvalue()).encode("utf-8")


SHEET_TITLE_FORBIDDEN = re.compile(r"[\[\]:*?/\\]")


def table_xlsx(table: Table) -> bytes:
    from openpyxl import Workbook
    from openpyxl.cell import WriteOnlyCell
    from openpyxl.styles import Font

    workbook = Workbook(write_only=True)
    sheet = workbook.create_sheet(SHEET_TITLE_FORBIDDEN.sub(" ", str(table.title))[:31] or table.name)
    widths = [max(8, min(40, _display_width(label) + 2)) for label in table.header()]
    for index, width in enumerate(widths):
        sheet.column_dimensions[_column_letter(index)].width = width
    sheet.freeze_panes = "A2"
    bold = Font(bold=True)
    header = []
    for label in table.header():
        cell = WriteOnlyCell(sheet, value=label)
        cell.font = bold
        header.append(cell)
    sheet.append(header)
    for r, row in enumerate(table.rows):
        cells = []
        for c, value in enumerate(row):
            kind = table.kind(r, c)
            cell = WriteOnlyCell(sheet, value=_xlsx_value(value, kind))
            if kind in XLSX_FORMATS and isinstance(value, (int, float, Decimal)) and not isinstance(value, bool):
                cell.number_format = XLSX_FORMATS[kind]
            cells.append(cell)
        sheet.append(cells)
    output = io.BytesIO()
    workbook.save(output)
    return output.getvalue()


def _xlsx_value(value: Any, kind: str) -> Any:
    if value is None or isinstance(value, (int, float, Decimal)):
        return value
    if kind == MONTH and isinstance(value, (date, datetime)):
        return value.strftime("%Y-%m")
    return str(value)


def _column_letter(index: int) -> str:
    from openpyxl.utils import get_column_letter

    return get_column_letter(index + 1)


def _display_width(text: str) -> int:
    # A CJK character takes about two Latin character widths in Excel.
    return sum(2 if ord(char) > 0x2E80 else 1 for char in text)


def export_filename(table: str, query: ReportQuery, fmt: str) -> str:
    parts = [table, query.month.strftime("%Y-%m")]
    if query.store is not None:
        parts.append(query.store.code)
    if query.tier is not None:
        parts.append(query.tier.code)
    return re.sub(r"[^A-Za-z0-9_.-]", "_", "-".join(parts)) + "." + fmt
