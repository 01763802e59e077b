"""GET /api/v1/reports/monthly: shape, permissions (store managers see their
own store only) and refusals."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from rest_framework.test import APIClient

from loyalty.roles import AUDITOR, CLERK, MARKETING, OPERATOR, STORE_MANAGER
from members.models import StaffProfile, Store
from reports.selectors import KPI_NAMES, kpis_monthly
from reports.services import rollups_build
from tests.reports.factories import SEED_UNTIL, seed_history

pytestmark = pytest.mark.django_db

URL = "/api/v1/reports/monthly"
FEB = date(2026, 2, 1)


@pytest.fixture
def history() -> Any:
    history = seed_history()
    rollups_build(until=SEED_UNTIL)
    return history


def _staff(username: str, role: str | None, store: Store | None = None, *, staff: bool = True) -> Any:
    user = get_user_model().objects.create_user(username=username, password="x", is_staff=staff)
    if role is not None:
        user.groups.add(Group.objects.get(name=role))
    if store is not None or role in (STORE_MANAGER, CLERK):
        StaffProfile.objects.create(user=user, store=store)
    return user


def _client(user: Any) -> APIClient:
    client = APIClient()
    client.force_login(user)
    return client


def _as_json(kpis: dict[str, Any]) -> dict[str, Any]:
    """The selector's figures as the API renders them: Decimals as strings."""
    return {name: str(value) if not isinstance(value, int | dict) else value for name, value in kpis.items()}


# -----------------------------------------------------------------------------
# Shape
# -----------------------------------------------------------------------------
def test_operator_gets_every_kpi_of_the_month_with_decimal_strings(history):
    # when
    response = _client(_staff("op", OPERATOR)).get(URL, {"month": "2026-02"})
    # then
    assert response.status_code == 200, response.content
    body = response.json()
    assert list(body) == ["month", "store", "tier", "as_of", *KPI_NAMES]
    assert (body["month"], body["store"], body["tier"]) == ("2026-02", None, None)
    assert body["as_of"] == "2026-03-01T00:00:00+08:00"
    assert {name: body[name] for name in KPI_NAMES} == _as_json(kpis_monthly(month=FEB))
    assert body["member_sales"] == "-80.00"
    assert body["repeat_rate"] == "0.0000"
    assert body["points_liability_cny"] == "63.42"
    assert body["tier_distribution"] == {"silver": 5, "gold": 1, "platinum": 1}


@pytest.mark.parametrize("role", [OPERATOR, MARKETING, AUDITOR])
def test_chain_wide_roles_filter_by_store_and_tier(history, role):
    # when
    response = _client(_staff("reader", role)).get(URL, {"month": "2026-02", "store": "BJ001", "tier": "silver"})
    # then
    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["store"], body["tier"]) == ("BJ001", "silver")
    assert {name: body[name] for name in KPI_NAMES} == _as_json(kpis_monthly(month=FEB, store="BJ001", tier="silver"))


def test_a_month_without_data_is_all_zeros(history):
    # when
    body = _client(_staff("op", OPERATOR)).get(URL, {"month": "2024-01"}).json()
    # then
    assert body["purchases"] == 0
    assert body["member_sales"] == "0.00"
    assert body["tier_distribution"] == {"silver": 0, "gold": 0, "platinum": 0}


# -----------------------------------------------------------------------------
# Store managers
# -----------------------------------------------------------------------------
def test_store_manager_without_store_parameter_gets_their_own_store(history):
    # given
    manager = _staff("manager", STORE_MANAGER, history.stores["SH001"])
    # when
    response = _client(manager).get(URL, {"month": "2026-02"})
    # then
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["store"] == "SH001"
    assert {name: body[name] for name in KPI_NAMES} == _as_json(kpis_monthly(month=FEB, store="SH001"))


def test_store_manager_may_ask_for_their_store_and_a_tier(history):
    # given
    manager = _staff("manager", STORE_MANAGER, history.stores["SH001"])
    # when
    response = _client(manager).get(URL, {"month": "2026-02", "store": "SH001", "tier": "gold"})
    # then
    assert response.status_code == 200
    assert response.json()["points_outstanding"] == kpis_monthly(month=FEB, store="SH001", tier="gold")[
        "points_outstanding"
    ]


@pytest.mark.parametrize("store", ["BJ001", "NOPE"])
def test_store_manager_is_refused_another_store(history, store):
    # given
    manager = _staff("manager", STORE_MANAGER, history.stores["SH001"])
    # when
    response = _client(manager).get(URL, {"month": "2026-02", "store": store})
    # then
    if store == "NOPE":  # an unknown code is invalid input for everyone
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "invalid_input"
        return
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "permission_denied"


def test_store_manager_without_a_store_is_refused(history):
    # given
    manager = _staff("manager", STORE_MANAGER, None)
    # when
    response = _client(manager).get(URL, {"month": "2026-02"})
    # then
    assert response.status_code == 403


# -----------------------------------------------------------------------------
# Refusals
# -----------------------------------------------------------------------------
@pytest.mark.parametrize("params", [{"month": "2026-13"}, {"month": "2026-1"}, {"month": "Feb"}, {}, {"month": "1999-12"}])
def test_bad_month_is_400(history, params):
    # when
    response = _client(_staff("op", OPERATOR)).get(URL, params)
    # then
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_input"
    assert "month" in error["detail"]


def test_unknown_tier_is_400(history):
    # when
    response = _client(_staff("op", OPERATOR)).get(URL, {"month": "2026-02", "tier": "diamond"})
    # then
    assert response.status_code == 400
    assert "tier" in response.json()["error"]["detail"]


@pytest.mark.parametrize(
    ("role", "staff"),
    [(CLERK, True), (None, True), (OPERATOR, False)],
    ids=["clerk", "staff-without-role", "not-staff"],
)
def test_users_without_the_report_permission_are_refused(history, role, staff):
    # given
    user = _staff("someone", role, staff=staff)
    if role == CLERK:
        StaffProfile.objects.filter(user=user).update(store=history.stores["SH001"])
    # when
    response = _client(user).get(URL, {"month": "2026-02"})
    # then
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "permission_denied"


def test_anonymous_is_refused():
    # when
    response = APIClient().get(URL, {"month": "2026-02"})
    # then
    assert response.status_code in (401, 403)
    assert response.json()["error"]["code"] == "not_authenticated"


def test_schema_documents_the_operation(anon_client):
    # when
    schema = anon_client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    # then
    operation = schema["paths"][URL]["get"]
    assert {parameter["name"] for parameter in operation["parameters"]} == {"month", "store", "tier"}
    assert {"200", "400", "403"} <= set(operation["responses"])
