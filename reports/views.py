"""The monthly KPI report pages under /reports/: the dashboard, the exports
of its tables, and the plotly.js library they load.

Who sees what (staff sign in through the admin login):

* the report needs ``reports.selectors.REPORTS_PERMISSION``, which the roles
  table (``loyalty.roles``) gives to Operator, Marketing, Auditor and Store
  manager; anyone else gets a 403;
* Operator, Marketing, Auditor (and superusers) see every store and may
  filter by store and tier;
* a Store manager sees their ``StaffProfile.store`` only: the store filter is
  forced to it, asking for another store is a 403, and the tables whose
  selector cannot be limited to a store (cohort retention, breakage,
  campaigns) are not offered. As in the admin (``members.admin.store_scope``),
  belonging to a store-bound group limits a user even if another group would
  not.

The views only read: figures come from ``reports.selectors`` (answered from
the daily rollups), tables from ``reports.exports``, figures from
``reports.charts``. Figures are read from ``loyalty.dbrouters.reporting_alias()``
(the reporting replica when one is configured, with the day they are built
through read from it too); who may see them (user, groups, staff profile)
and the filter choices are read from the primary.
"""

from __future__ import annotations

import gzip
import hashlib
import re
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from functools import lru_cache
from typing import Any
from urllib.parse import urlencode

from csp.constants import SELF, UNSAFE_INLINE
from csp.decorators import csp_replace
from django import forms
from django.apps import apps
from django.contrib import admin
from django.contrib.admin.views.decorators import staff_member_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBadRequest
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from loyalty.dbrouters import reporting_alias
from members.admin import store_scope
from members.models import Store, Tier
from reports import charts, exports, selectors
from reports.exports import (
    COHORT_MONTHS,
    FORMATS,
    KPI_BY_KEY,
    MONEY,
    MONTH,
    RATE,
    TABLES,
    TREND_MONTHS,
    ReportQuery,
    Table,
)
from reports.selectors import REPORTS_PERMISSION

MONTH_PATTERN = re.compile(r"^(\d{4})-(\d{2})$")
FIRST_MONTH = date(2000, 1, 1)
# The KPI cards, in groups.
CARD_GROUPS: tuple[tuple[Any, tuple[str, ...]], ...] = (
    (
        _("Members"),
        (
            "new_members",
            "members_at_month_end",
            "active_members",
            "repeat_rate",
            "sleeping_members",
            "churned_members",
            "upgrades",
            "downgrades",
        ),
    ),
    (_("Sales"), ("member_sales", "purchases", "average_order_value")),
    (
        _("Points"),
        (
            "points_issued",
            "points_redeemed",
            "points_expired",
            "points_reversed",
            "points_outstanding",
            "points_liability_cny",
            "points_expiring_next_month",
        ),
    ),
    (_("Coupons"), ("coupons_issued", "coupons_written_off", "coupons_expired", "coupon_write_off_rate")),
)


# -----------------------------------------------------------------------------
# Access and filters
# -----------------------------------------------------------------------------
@dataclass(frozen=True)
class ReportAccess:
    """``store``: the one store the user is bound to, or None for every store."""

    store: Store | None

    @property
    def store_locked(self) -> bool:
        return self.store is not None


def report_access(request: HttpRequest) -> ReportAccess:
    """Raises ``PermissionDenied`` for users without the reports permission
    (the roles table gives it to Operator, Marketing, Auditor and Store
    manager), and for a store-bound user without a store."""
    if not request.user.has_perm(REPORTS_PERMISSION):
        raise PermissionDenied
    scope = store_scope(request)
    if scope is None:
        return ReportAccess(store=None)
    if scope.store_id is None:
        raise PermissionDenied
    return ReportAccess(store=Store.objects.get(pk=scope.store_id))


def last_complete_month(today: date | None = None) -> date:
    today = today or timezone.localdate()
    return (today.replace(day=1) - timedelta(days=1)).replace(day=1)


class ReportFilterForm(forms.Form):
    month = forms.CharField(required=False)
    store = forms.ModelChoiceField(queryset=Store.objects.all(), to_field_name="code", required=False)
    tier = forms.ModelChoiceField(queryset=Tier.objects.all(), to_field_name="code", required=False)

    def clean_month(self) -> date:
        text = (self.cleaned_data.get("month") or "").strip()
        if not text:
            return last_complete_month()
        match = MONTH_PATTERN.match(text)
        if match is None or not 1 <= int(match.group(2)) <= 12:
            raise forms.ValidationError(_("Enter a month as YYYY-MM."), code="invalid_month")
        month = date(int(match.group(1)), int(match.group(2)), 1)
        if not FIRST_MONTH <= month <= timezone.localdate().replace(day=1):
            raise forms.ValidationError(_("Choose a month between 2000-01 and this month."), code="month_out_of_range")
        return month


class BadReportRequest(Exception):
    def __init__(self, form: ReportFilterForm) -> None:
        super().__init__("invalid report filters")
        self.form = form


def report_query(request: HttpRequest, access: ReportAccess) -> ReportQuery:
    """The month, store and tier of the request, checked against ``access``.
    Raises ``BadReportRequest`` (400) and ``PermissionDenied`` (another store)."""
    form = ReportFilterForm(request.GET)
    if not form.is_valid():
        raise BadReportRequest(form)
    store = form.cleaned_data["store"]
    if access.store_locked:
        if store is not None and store.pk != access.store.pk:  # type: ignore[union-attr]
            raise PermissionDenied
        store = access.store
    return ReportQuery(
        month=form.cleaned_data["month"],
        store=store,
        tier=form.cleaned_data["tier"],
        store_locked=access.store_locked,
        using=reporting_alias(),
    )


def query_string(query: ReportQuery) -> str:
    params = {"month": query.month.strftime("%Y-%m")}
    if query.store is not None:
        params["store"] = query.store.code
    if query.tier is not None:
        params["tier"] = query.tier.code
    return urlencode(params)


# -----------------------------------------------------------------------------
# Display
# -----------------------------------------------------------------------------
def display(value: Any, kind: str | None) -> str:
    """A figure as the page shows it; exports keep the exact value."""
    if value is None or value == "":
        return "—"
    if kind == MONTH and isinstance(value, date):
        return value.strftime("%Y-%m")
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
        return str(value)
    if kind == RATE:
        return f"{float(value):.1%}"
    if kind == MONEY:
        amount = Decimal(str(value)).quantize(Decimal("0.01"))
        return f"-¥{-amount:,}" if amount < 0 else f"¥{amount:,}"
    if isinstance(value, float):
        return f"{value:,.2f}"
    # Integers with thousands separators; a Decimal with the places the selector gave it.
    return f"{value:,}"


@dataclass
class Card:
    key: str
    label: str
    value: Any
    text: str
    raw: str
    previous: str | None = None
    change: str | None = None
    change_sign: int = 0


@dataclass
class TableView:
    name: str
    title: str
    header: list[tuple[str, bool]]  # (label, numeric)
    rows: list[list[tuple[str, bool]]]  # (text, numeric)
    csv_url: str
    xlsx_url: str


@dataclass
class Chart:
    id: str
    figure: dict[str, Any]

    @property
    def data_id(self) -> str:
        return f"{self.id}-figure"


@dataclass
class Section:
    id: str
    title: str
    charts: list[Chart] = field(default_factory=list)
    tables: list[TableView] = field(default_factory=list)
    note: str = ""


def _change(current: Any, previous: Any) -> tuple[str | None, int]:
    if not isinstance(current, (int, float, Decimal)) or not isinstance(previous, (int, float, Decimal)):
        return None, 0
    if previous == 0:
        return None, 0
    ratio = (Decimal(str(current)) - Decimal(str(previous))) / abs(Decimal(str(previous)))
    sign = (ratio > 0) - (ratio < 0)
    return f"{'+' if sign > 0 else ''}{float(ratio):.1%}", sign


def kpi_cards(kpis: dict[str, Any], previous: dict[str, Any] | None) -> list[tuple[str, list[Card]]]:
    groups = []
    for title, keys in CARD_GROUPS:
        cards = []
        for key in keys:
            column = KPI_BY_KEY[key]
            value = kpis.get(key)
            before = previous.get(key) if previous else None
            change, sign = _change(value, before)
            cards.append(
                Card(
                    key=key,
                    label=str(column.label),
                    value=value,
                    text=display(value, column.kind),
                    raw=exports.cell_text(value, column.kind or ""),
                    previous=display(before, column.kind) if previous else None,
                    change=change,
                    change_sign=sign,
                )
            )
        groups.append((str(title), cards))
    return groups


def table_view(table: Table, query: ReportQuery) -> TableView:
    numeric = [column.kind not in (exports.TEXT, MONTH) for column in table.columns]
    params = query_string(query)
    return TableView(
        name=table.name,
        title=str(table.title),
        header=list(zip(table.header(), numeric, strict=True)),
        rows=[
            [(display(value, table.kind(r, c)), numeric[c]) for c, value in enumerate(row)]
            for r, row in enumerate(table.rows)
        ],
        csv_url=reverse("report_pages:export", args=[table.name, "csv"]) + "?" + params,
        xlsx_url=reverse("report_pages:export", args=[table.name, "xlsx"]) + "?" + params,
    )


# -----------------------------------------------------------------------------
# Views
# -----------------------------------------------------------------------------
def _bad_request_page(request: HttpRequest, access: ReportAccess, form: ReportFilterForm) -> TemplateResponse:
    context = _page_context(request, access)
    context.update(errors=[str(error) for errors in form.errors.values() for error in errors], month_value="")
    return TemplateResponse(request, "reports/dashboard.html", context, status=400)


def _page_context(request: HttpRequest, access: ReportAccess) -> dict[str, Any]:
    stores = Store.objects.order_by("code")
    if access.store_locked:
        stores = stores.filter(pk=access.store.pk)  # type: ignore[union-attr]
    return {
        **admin.site.each_context(request),
        "title": gettext("Monthly KPI report"),
        "reports_app_name": apps.get_app_config("reports").verbose_name,
        "stores": list(stores),
        "tiers": list(Tier.objects.order_by("rank")),
        "store_locked": access.store_locked,
        "plotly_url": reverse("report_pages:plotly_js") + "?v=" + plotly_version(),
        "errors": [],
    }


# plotly.js inserts <style> elements of its own when it loads, which no nonce
# can reach: on this page <style> elements need not carry the nonce. Scripts
# still do (the site-wide policy in settings).
@csp_replace({"style-src": [SELF, UNSAFE_INLINE]})
@require_GET
@never_cache
@staff_member_required
def dashboard(request: HttpRequest) -> HttpResponse:
    access = report_access(request)
    try:
        query = report_query(request, access)
    except BadReportRequest as error:
        return _bad_request_page(request, access, error.form)
    scope = exports.scope_kwargs(query)
    using = query.using
    kpis = selectors.kpis_monthly(month=query.month, **scope, using=using)
    trend = selectors.kpis_trend(end_month=query.month, months=TREND_MONTHS, **scope, using=using)
    previous = trend[-2] if len(trend) >= 2 else None
    # Notes on what a filter does not reach.
    not_by_tier = gettext("Not filtered by tier.") if query.tier else ""
    chain_wide = gettext("All stores, all tiers.") if query.store or query.tier else ""

    distribution = exports.tier_distribution_table(query, kpis)
    movement = selectors.tier_movement_matrix(month=query.month, store=query.store, using=using)
    by_store = selectors.kpis_by_store(month=query.month, tier=query.tier, using=using)
    rfm = selectors.rfm_segment_map(store=query.store, using=using)
    sections = [
        Section(
            id="trends",
            title=gettext("13-month trends"),
            charts=[
                Chart("chart-members", charts.members_trend(trend)),
                Chart("chart-repeat-rate", charts.repeat_rate_trend(trend)),
                Chart("chart-sales", charts.sales_trend(trend)),
                Chart("chart-points", charts.points_trend(trend)),
                Chart("chart-liability", charts.liability_trend(trend)),
            ],
            tables=[table_view(exports.trend_table(query, trend), query)],
        ),
        Section(
            id="tiers",
            title=gettext("Tiers"),
            charts=[
                Chart("chart-tier-distribution", charts.tier_distribution(distribution.rows)),
                Chart("chart-tier-movement", charts.tier_movement(movement, exports.tier_names(using))),
            ],
            tables=[
                table_view(distribution, query),
                table_view(exports.tier_movement_table(query, movement), query),
                table_view(exports.tiers_table(query), query),
            ],
            note=gettext("Tier movements and KPIs by tier are not filtered by tier.") if query.tier else "",
        ),
    ]
    if not query.store_locked:
        sections.append(
            Section(
                id="stores",
                title=gettext("Stores"),
                charts=[Chart("chart-stores", charts.store_comparison(by_store))],
                tables=[table_view(exports.stores_table(query, by_store), query)],
            )
        )
    sections.append(
        Section(
            id="rfm",
            title=gettext("RFM segments"),
            charts=[Chart("chart-rfm", charts.rfm_segments(rfm))],
            tables=[table_view(exports.rfm_table(query, rfm), query)],
            note=" ".join(filter(None, [gettext("As of the last nightly segmentation."), not_by_tier])),
        )
    )
    if not query.store_locked:
        cohorts = selectors.cohort_retention(end_month=query.month, months=COHORT_MONTHS, using=using)
        sections.append(
            Section(
                id="cohorts",
                title=gettext("Cohorts"),
                charts=[Chart("chart-cohorts", charts.cohort_retention(cohorts))],
                tables=[
                    table_view(exports.cohort_retention_table(query, cohorts), query),
                    table_view(exports.breakage_table(query), query),
                ],
                note=chain_wide,
            )
        )
    coupons = Section(
        id="coupons-campaigns",
        title=gettext("Coupons and campaigns") if not query.store_locked else gettext("Coupons"),
        tables=[table_view(exports.coupon_write_off_table(query), query)],
        note=not_by_tier,
    )
    if not query.store_locked:
        coupons.tables.append(table_view(exports.campaigns_table(query), query))
        coupons.note = " ".join(filter(None, [not_by_tier, gettext("Campaign results are for all stores.")]))
    sections.append(coupons)

    context = _page_context(request, access)
    context.update(
        query=query,
        month_value=query.month.strftime("%Y-%m"),
        # How fresh the figures are, from the database they come from (a replica may lag).
        built_through=selectors.built_through(using=using),
        card_groups=kpi_cards(kpis, previous),
        kpi_table=table_view(exports.kpis_table(query, kpis), query),
        sections=sections,
        export_query=query_string(query),
    )
    return TemplateResponse(request, "reports/dashboard.html", context)


@require_GET
@never_cache
@staff_member_required
def export(request: HttpRequest, table: str, fmt: str) -> HttpResponse:
    if table not in TABLES or fmt not in FORMATS:
        raise Http404
    access = report_access(request)
    try:
        query = report_query(request, access)
    except BadReportRequest as error:
        messages = "; ".join(str(message) for errors in error.form.errors.values() for message in errors)
        return HttpResponseBadRequest(messages, content_type="text/plain; charset=utf-8")
    if TABLES[table].chain_only and query.store_locked:
        raise PermissionDenied
    data = exports.table_build(table, query)
    if fmt == "csv":
        response = HttpResponse(exports.table_csv(data), content_type=exports.CSV_CONTENT_TYPE)
    else:
        response = HttpResponse(exports.table_xlsx(data), content_type=exports.XLSX_CONTENT_TYPE)
    response["Content-Disposition"] = f'attachment; filename="{exports.export_filename(table, query, fmt)}"'
    return response


# -----------------------------------------------------------------------------
# plotly.js, served from here: report machines have no internet access
# -----------------------------------------------------------------------------
def plotly_version() -> str:
    return _plotly_bundle()[2]


@lru_cache(maxsize=1)
def _plotly_bundle() -> tuple[bytes, bytes, str]:
    """(plain, gzipped, version tag) of the bundled plotly.min.js, read once."""
    from plotly.offline import get_plotlyjs

    plain = get_plotlyjs().encode("utf-8")
    return plain, gzip.compress(plain, compresslevel=6), hashlib.sha256(plain).hexdigest()[:12]


@require_GET
def plotly_js(request: HttpRequest) -> HttpResponse:
    """The library only, no data: public, cached for a year (the URL carries
    the content hash, so a new plotly version is a new URL)."""
    plain, zipped, version = _plotly_bundle()
    etag = f'"{version}"'
    if request.headers.get("If-None-Match") == etag:
        response = HttpResponse(status=304)
    elif "gzip" in request.headers.get("Accept-Encoding", ""):
        response = HttpResponse(zipped, content_type="text/javascript; charset=utf-8")
        response["Content-Encoding"] = "gzip"
    else:
        response = HttpResponse(plain, content_type="text/javascript; charset=utf-8")
    response["Cache-Control"] = "public, max-age=31536000, immutable"
    response["ETag"] = etag
    response["Vary"] = "Accept-Encoding"
    return response
