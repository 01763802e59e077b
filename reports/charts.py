"""Plotly figures of the monthly report.

Each builder takes the rows of a report table (or of a selector) and returns
the figure as a JSON-ready dict (``{"data": [...], "layout": {...}}``) that
the page hands to ``Plotly.newPlot``. Titles, axis and trace names are
translated with gettext when the figure is built, so a chart reads in the
language of the request (Chinese by default, English on request).

Figures carry plain lists (never numpy arrays, which plotly would encode as
base64 ``bdata``), money as floats of the exact ``Decimal`` and rates as
ratios formatted as percentages by the axis: ``gd.data`` in the browser holds
the report's numbers.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import date
from decimal import Decimal
from typing import Any

import plotly.graph_objects as go
from django.utils.translation import gettext
from plotly.colors import sample_colorscale

from reports.exports import KPI_BY_KEY, enrolment_label, month_offset_label

# Chinese first: without a CJK font in this list a browser may draw boxes.
FONT_FAMILY = (
    '-apple-system, "PingFang SC", "Hiragino Sans GB", "Microsoft YaHei", "Noto Sans CJK SC", '
    '"Source Han Sans SC", "WenQuanYi Micro Hei", "Helvetica Neue", Arial, sans-serif'
)
COLORS = ["#417690", "#e8a33d", "#5aa469", "#c0504d", "#8064a2", "#4bacc6", "#9b9b9b"]
MONEY_FORMAT = ",.2f"
COUNT_FORMAT = ",d"
RATE_FORMAT = ".1%"
# Metrics the store comparison can switch between (the first is shown first).
STORE_METRICS = (
    "member_sales",
    "active_members",
    "new_members",
    "purchases",
    "average_order_value",
    "repeat_rate",
    "points_issued",
    "coupon_write_off_rate",
)


def number(value: Any) -> int | float | None:
    """A figure as JSON can carry it: ints stay ints, Decimals become floats."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, (Decimal, float)):
        return float(value)
    return float(value)


def month_label(value: Any) -> str:
    return value.strftime("%Y-%m") if isinstance(value, date) else str(value)


def label(key: str) -> str:
    return str(KPI_BY_KEY[key].label)


def _value_format(key: str) -> str:
    kind = KPI_BY_KEY[key].kind
    return {"money": MONEY_FORMAT, "rate": RATE_FORMAT}.get(kind or "", COUNT_FORMAT)


def _figure(fig: go.Figure, *, title: str, empty: bool = False, **layout: Any) -> dict[str, Any]:
    defaults: dict[str, Any] = {
        "template": "plotly_white",
        "font": {"family": FONT_FAMILY, "size": 12},
        "colorway": COLORS,
        "margin": {"l": 60, "r": 20, "t": 50, "b": 40},
        "legend": {"orientation": "h", "yanchor": "bottom", "y": 1.0, "xanchor": "right", "x": 1},
        "height": 320,
        "separators": ".,",
    }
    fig.update_layout(title={"text": title, "x": 0, "xanchor": "left", "font": {"size": 15}}, **{**defaults, **layout})
    if empty:
        fig.add_annotation(
            text=gettext("No data for this month"),
            showarrow=False,
            xref="paper",
            yref="paper",
            x=0.5,
            y=0.5,
            font={"size": 14, "color": "#888"},
        )
        fig.update_xaxes(visible=False)
        fig.update_yaxes(visible=False)
    # Through JSON: plain lists, nulls and numbers only (the page embeds it).
    return json.loads(fig.to_json())


def _trend_trace(
    trend: Sequence[dict[str, Any]], key: str, *, kind: str = "line", axis: str = "y", color: str | None = None
) -> go.BaseTraceType:
    x = [month_label(row["month"]) for row in trend]
    y = [number(row.get(key)) for row in trend]
    hover = "%{x}<br>" + label(key) + ": %{y:" + _value_format(key) + "}<extra></extra>"
    common: dict[str, Any] = {"x": x, "y": y, "name": label(key), "hovertemplate": hover, "yaxis": axis}
    if color:
        common["marker"] = {"color": color}
    if kind == "bar":
        return go.Bar(**common)
    return go.Scatter(mode="lines+markers", line={"color": color} if color else None, connectgaps=False, **common)


def _month_axis() -> dict[str, Any]:
    return {"type": "category", "tickangle": -45}


# -----------------------------------------------------------------------------
# 13-month trends
# -----------------------------------------------------------------------------
def members_trend(trend: Sequence[dict[str, Any]]) -> dict[str, Any]:
    fig = go.Figure(
        [
            _trend_trace(trend, "members_at_month_end", color=COLORS[0]),
            _trend_trace(trend, "active_members", color=COLORS[1]),
            _trend_trace(trend, "new_members", kind="bar", color=COLORS[2]),
        ]
    )
    return _figure(
        fig,
        title=gettext("Members"),
        empty=not trend,
        xaxis=_month_axis(),
        yaxis={"tickformat": ",d", "rangemode": "tozero"},
    )


def repeat_rate_trend(trend: Sequence[dict[str, Any]]) -> dict[str, Any]:
    fig = go.Figure([_trend_trace(trend, "repeat_rate", color=COLORS[3])])
    return _figure(
        fig,
        title=label("repeat_rate"),
        empty=not trend,
        xaxis=_month_axis(),
        yaxis={"tickformat": ".0%", "rangemode": "tozero"},
        showlegend=False,
    )


def sales_trend(trend: Sequence[dict[str, Any]]) -> dict[str, Any]:
    fig = go.Figure(
        [
            _trend_trace(trend, "member_sales", kind="bar", color=COLORS[0]),
            _trend_trace(trend, "average_order_value", axis="y2", color=COLORS[1]),
        ]
    )
    return _figure(
        fig,
        title=gettext("Member sales and average order value (CNY)"),
        empty=not trend,
        xaxis=_month_axis(),
        yaxis={"title": {"text": label("member_sales")}, "tickformat": ",.0f", "rangemode": "tozero"},
        yaxis2={
            "title": {"text": label("average_order_value")},
            "overlaying": "y",
            "side": "right",
            "tickformat": ",.0f",
            "rangemode": "tozero",
            "showgrid": False,
        },
    )


def points_trend(trend: Sequence[dict[str, Any]]) -> dict[str, Any]:
    fig = go.Figure(
        [
            _trend_trace(trend, "points_issued", kind="bar", color=COLORS[0]),
            _trend_trace(trend, "points_redeemed", kind="bar", color=COLORS[2]),
            _trend_trace(trend, "points_expired", kind="bar", color=COLORS[3]),
        ]
    )
    return _figure(
        fig,
        title=gettext("Points issued, redeemed and expired"),
        empty=not trend,
        barmode="group",
        xaxis=_month_axis(),
        yaxis={"tickformat": ",d", "rangemode": "tozero"},
    )


def liability_trend(trend: Sequence[dict[str, Any]]) -> dict[str, Any]:
    fig = go.Figure(
        [
            _trend_trace(trend, "points_liability_cny", color=COLORS[4]),
            _trend_trace(trend, "points_outstanding", axis="y2", color=COLORS[6]),
        ]
    )
    fig.update_traces(selector={"name": label("points_outstanding")}, line={"dash": "dot"})
    return _figure(
        fig,
        title=gettext("Points liability at month end"),
        empty=not trend,
        xaxis=_month_axis(),
        yaxis={"title": {"text": label("points_liability_cny")}, "tickformat": ",.0f", "rangemode": "tozero"},
        yaxis2={
            "title": {"text": label("points_outstanding")},
            "overlaying": "y",
            "side": "right",
            "tickformat": ",d",
            "rangemode": "tozero",
            "showgrid": False,
        },
    )


# -----------------------------------------------------------------------------
# Tiers
# -----------------------------------------------------------------------------
def tier_distribution(rows: Sequence[Sequence[Any]]) -> dict[str, Any]:
    """``rows``: the tier distribution table's (code, name, members); tiers
    without members are left out of the ring (the table lists them)."""
    rows = [row for row in rows if row[2]]
    if not rows:
        return _figure(go.Figure(), title=gettext("Tier distribution at month end"), empty=True)
    fig = go.Figure(
        [
            go.Pie(
                labels=[row[1] for row in rows],
                values=[number(row[2]) for row in rows],
                customdata=[row[0] for row in rows],
                hole=0.45,
                sort=False,
                direction="clockwise",
                textinfo="label+value+percent",
                hovertemplate="%{label}: %{value:,d} (%{percent})<extra></extra>",
                marker={"colors": ["#a7a9ac", "#d4af37", "#5b6770", *COLORS]},
            )
        ]
    )
    return _figure(fig, title=gettext("Tier distribution at month end"), showlegend=False)


def tier_movement(rows: Iterable[dict[str, Any]], tiers: dict[str, str]) -> dict[str, Any]:
    """A from → to heatmap; ``tiers``: code → name in rank order. A ``from``
    of None (a member's first tier) is the top row, "Enrolment"."""
    rows = list(rows)
    to_codes: list[str] = list(tiers)
    for row in rows:
        for code in (row["from"], row["to"]):
            if code is not None and code not in to_codes:
                to_codes.append(code)
    from_codes: list[str | None] = [None, *to_codes] if any(row["from"] is None for row in rows) else [*to_codes]
    z: list[list[int]] = [[0] * len(to_codes) for _ in from_codes]
    for row in rows:
        z[from_codes.index(row["from"])][to_codes.index(row["to"])] += int(row["members"])
    fig = go.Figure(
        [
            go.Heatmap(
                z=z,
                x=[tiers.get(code, code) for code in to_codes],
                y=[enrolment_label() if code is None else tiers.get(code, code) for code in from_codes],
                colorscale="Blues",
                zmin=0,
                texttemplate="%{z:,d}",
                hovertemplate=gettext("From") + " %{y} → " + gettext("to") + " %{x}: %{z:,d}<extra></extra>",
                showscale=False,
            )
        ]
    )
    return _figure(
        fig,
        title=gettext("Tier movements in the month (from → to)"),
        empty=not rows,
        xaxis={"title": {"text": gettext("To tier")}, "type": "category", "side": "bottom"},
        yaxis={"title": {"text": gettext("From tier")}, "type": "category", "autorange": "reversed"},
    )


# -----------------------------------------------------------------------------
# Stores, RFM, cohorts
# -----------------------------------------------------------------------------
def store_comparison(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Bars per store for one KPI, with buttons to switch the KPI."""
    names = [str(row.get("store_name") or row.get("store_code")) for row in rows]
    first = STORE_METRICS[0]

    def values(key: str) -> list[Any]:
        return [number(row.get(key)) for row in rows]

    fig = go.Figure(
        [
            go.Bar(
                x=names,
                y=values(first),
                customdata=[row.get("store_code") for row in rows],
                name=label(first),
                marker={"color": COLORS[0]},
                hovertemplate="%{x}: %{y:" + _value_format(first) + "}<extra></extra>",
            )
        ]
    )
    buttons = [
        {
            "label": label(key),
            "method": "update",
            "args": [
                {
                    "y": [values(key)],
                    "name": [label(key)],
                    "hovertemplate": ["%{x}: %{y:" + _value_format(key) + "}<extra></extra>"],
                },
                {"yaxis.tickformat": {"rate": ".0%", "money": ",.0f"}.get(KPI_BY_KEY[key].kind or "", ",d")},
            ],
        }
        for key in STORE_METRICS
    ]
    return _figure(
        fig,
        title=gettext("Store comparison"),
        empty=not rows,
        xaxis={"type": "category"},
        yaxis={"tickformat": ",.0f", "rangemode": "tozero"},
        margin={"l": 60, "r": 20, "t": 60, "b": 60},
        updatemenus=[
            {
                "type": "dropdown",
                "buttons": buttons,
                "active": 0,
                "x": 1,
                "xanchor": "right",
                "y": 1.03,
                "yanchor": "bottom",
                "showactive": True,
            }
        ],
    )


def _shades(values: Sequence[float | int]) -> list[str]:
    """Blues from light to dark along ``values`` (kept off both ends, so that
    the text on each shade stays readable)."""
    low, high = min(values, default=0), max(values, default=0)
    spread = high - low
    return sample_colorscale("Blues", [0.2 + 0.6 * ((value - low) / spread if spread else 0.5) for value in values])


def rfm_segments(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Segments as a treemap: area = members, shade = average spend. Empty
    segments are left out (a treemap cannot draw an area of 0)."""
    rows = [row for row in rows if row.get("members")]
    hover = (
        "<b>%{label}</b><br>"
        + gettext("Members")
        + ": %{value:,d}<br>"
        + gettext("Average days since last purchase")
        + ": %{customdata[0]:,.0f}<br>"
        + gettext("Average purchases")
        + ": %{customdata[1]:,.1f}<br>"
        + gettext("Average spend (CNY)")
        + ": %{customdata[2]:,.2f}<extra></extra>"
    )
    if not rows:
        return _figure(go.Figure(), title=gettext("RFM segment map"), empty=True)
    fig = go.Figure(
        [
            go.Treemap(
                labels=[str(row.get("label") or row.get("group")) for row in rows],
                ids=[str(row.get("group")) for row in rows],
                parents=[""] * len(rows),
                values=[number(row.get("members")) or 0 for row in rows],
                customdata=[
                    [
                        number(row.get("avg_recency_days")),
                        number(row.get("avg_frequency")),
                        number(row.get("avg_monetary")),
                    ]
                    for row in rows
                ],
                # Explicit colours (darker = higher average spend): with a numeric
                # colour scale plotly paints the implicit root node dark grey.
                marker={"colors": _shades([number(row.get("avg_monetary")) or 0 for row in rows])},
                texttemplate="%{label}<br>%{value:,d}<br>¥%{customdata[2]:,.2f}",
                root={"color": "rgba(0,0,0,0)"},
                pathbar={"visible": False},
                tiling={"pad": 2},
                hovertemplate=hover,
            )
        ]
    )
    return _figure(
        fig,
        title=gettext("RFM segment map"),
        margin={"l": 10, "r": 10, "t": 50, "b": 10},
        height=380,
    )


def cohort_retention(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Registration cohorts down, months since registration across."""
    width = max((len(row["retention"]) for row in rows), default=0)
    # A month without registrations has no share to show (not 0%).
    z = [
        [number(share) if row["size"] else None for share in row["retention"]]
        + [None] * (width - len(row["retention"]))
        for row in rows
    ]
    y = [f"{month_label(row['cohort'])} ({row['size']:,})" for row in rows]
    fig = go.Figure(
        [
            go.Heatmap(
                z=z,
                x=[month_offset_label(n) for n in range(width)],
                y=y,
                zmin=0,
                zmax=1,
                colorscale="Blues",
                texttemplate="%{z:.0%}",
                hovertemplate="%{y}, %{x}: %{z:.1%}<extra></extra>",
                colorbar={"tickformat": ".0%"},
                hoverongaps=False,
            )
        ]
    )
    return _figure(
        fig,
        title=gettext("Cohort retention (share of each registration month active N months later)"),
        empty=not rows,
        xaxis={"type": "category", "side": "top"},
        yaxis={"type": "category", "autorange": "reversed"},
        margin={"l": 120, "r": 20, "t": 80, "b": 20},
        height=max(320, 60 + 26 * len(rows)),
    )
