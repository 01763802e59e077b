"""The clerk console's pages (members.console) and the terminal API used with a
clerk's session: who may open it, CSRF, and that the clerk acts as the store's
``console`` terminal."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.test import Client

from loyalty.roles import CLERK, OPERATOR
from members.models import Member, StaffProfile, Store, Terminal
from members.selectors import CONSOLE_TERMINAL_NAME, member_code_current
from points.models import PointsAccount, PointsEntry, Purchase

pytestmark = pytest.mark.django_db

CONSOLE = "/console/"
LOGIN = "/console/login/"
LOGOUT = "/console/logout/"
LANGUAGE = "/console/language/"
IDENTIFY = "/api/v1/terminal/identify"
PURCHASES = "/api/v1/terminal/purchases"
PASSWORD = "clerk-password-1"


def _user(username: str, *, role: str | None = CLERK, store: Store | None = None) -> Any:
    user = get_user_model().objects.create_user(username=username, password=PASSWORD)
    if role is not None:
        user.groups.add(Group.objects.get(name=role))
    if store is not None:
        StaffProfile.objects.create(user=user, store=store)
    return user


def _signed_in(user: Any) -> Client:
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    return client


def _csrf_token(client: Client) -> str:
    response = client.get(CONSOLE)
    assert response.status_code == 200
    return client.cookies["csrftoken"].value


def _post_json(client: Client, url: str, body: dict[str, Any], **headers: str) -> Any:
    return client.post(url, data=json.dumps(body), content_type="application/json", headers=headers)


@pytest.fixture
def clerk(store: Store) -> Any:
    return _user("clerk", store=store)


@pytest.fixture
def clerk_client(clerk: Any) -> Client:
    return _signed_in(clerk)


# -----------------------------------------------------------------------------
# Pages
# -----------------------------------------------------------------------------
def test_console_needs_a_signed_in_user():
    # when
    response = Client().get(CONSOLE)

    # then
    assert response.status_code == 302
    assert response["Location"] == f"{LOGIN}?next={CONSOLE}"


def test_login_page_signs_a_clerk_in_and_goes_to_the_console(clerk: Any):
    # given
    client = Client()
    assert client.get(LOGIN).status_code == 200

    # when
    response = client.post(LOGIN, {"username": "clerk", "password": PASSWORD, "next": CONSOLE})

    # then
    assert response.status_code == 302
    assert response["Location"] == CONSOLE
    assert client.get(CONSOLE).status_code == 200


def test_login_page_refuses_a_wrong_password(clerk: Any):
    # when
    response = Client().post(LOGIN, {"username": "clerk", "password": "wrong"})

    # then
    assert response.status_code == 200
    assert response.context["form"].errors
    assert b'role="alert"' in response.content


def test_a_user_without_the_clerk_role_gets_the_explanation(store: Store):
    # given: a store but no role
    client = _signed_in(_user("stranger", role=None, store=store))
    terminals = Terminal.objects.count()

    # when
    response = client.get(CONSOLE)

    # then
    assert response.status_code == 403
    assert response.templates[0].name == "console/not_clerk.html"
    assert response.context["has_permission"] is False
    assert response.context["store"] == store
    assert b"Clerk role" in response.content
    assert Terminal.objects.count() == terminals


def test_a_clerk_without_a_store_gets_the_explanation():
    # given: the role but no staff profile
    client = _signed_in(_user("floating"))

    # when
    response = client.get(CONSOLE)

    # then
    assert response.status_code == 403
    assert response.context["has_permission"] is True
    assert response.context["store"] is None
    assert not Terminal.objects.filter(name=CONSOLE_TERMINAL_NAME).exists()


def test_an_operator_with_a_store_but_not_the_console_permission_is_refused(store: Store):
    # when
    response = _signed_in(_user("operator", role=OPERATOR, store=store)).get(CONSOLE)

    # then
    assert response.status_code == 403


def test_a_clerk_gets_the_console_of_their_store(clerk_client: Client, store: Store):
    # when
    response = clerk_client.get(CONSOLE)

    # then
    assert response.status_code == 200
    assert response.templates[0].name == "console/console.html"
    assert store.name in response.content.decode()
    assert response.context["terminal"] == Terminal.objects.get(store=store, name=CONSOLE_TERMINAL_NAME)
    assert response.context["config"]["urls"]["refund"] == "/api/v1/terminal/purchases/{}/refunds"
    assert response.context["config"]["urls"]["write_off"] == "/api/v1/terminal/coupons/{}/write-off"
    assert 'id="console-config"' in response.content.decode()
    assert "no-cache" in response["Cache-Control"]


def test_the_console_follows_the_chosen_language(clerk_client: Client):
    # given
    token = _csrf_token(clerk_client)

    # when
    response = clerk_client.post(LANGUAGE, {"language": "en", "next": CONSOLE, "csrfmiddlewaretoken": token})

    # then
    assert response.status_code == 302
    assert response["Location"] == CONSOLE
    assert '<html lang="en">' in clerk_client.get(CONSOLE).content.decode()


def test_sign_out_ends_the_session(clerk_client: Client):
    # given
    token = _csrf_token(clerk_client)

    # when
    response = clerk_client.post(LOGOUT, {"csrfmiddlewaretoken": token})

    # then
    assert response.status_code == 302
    assert response["Location"] == LOGIN
    assert clerk_client.get(CONSOLE).status_code == 302


# -----------------------------------------------------------------------------
# The terminal API with the clerk's session
# -----------------------------------------------------------------------------
def test_terminal_api_accepts_a_clerk_session_with_the_csrf_token(clerk_client: Client, member: Member):
    # given
    token = _csrf_token(clerk_client)
    code, _ = member_code_current(member=member)

    # when
    response = _post_json(clerk_client, IDENTIFY, {"code": code}, X_CSRFToken=token, Accept_Language="en")

    # then
    assert response.status_code == 200
    assert response.json()["member_no"] == member.member_no
    assert response.json()["identified_by"] == "code"


def test_terminal_api_refuses_a_clerk_session_without_the_csrf_token(clerk_client: Client, member: Member):
    # given
    _csrf_token(clerk_client)
    code, _ = member_code_current(member=member)
    body = {"member": code, "receipt_no": "R-NO-CSRF", "amount": "100.00"}

    # when
    identify = _post_json(clerk_client, IDENTIFY, {"code": code})
    purchase = _post_json(clerk_client, PURCHASES, body)

    # then
    assert identify.status_code == 403
    assert identify.json()["error"]["code"] == "permission_denied"
    assert purchase.status_code == 403
    assert purchase.json()["error"]["code"] == "permission_denied"
    assert not Purchase.objects.exists()
    assert not PointsEntry.objects.exists()


def test_terminal_api_refuses_a_session_of_a_user_who_is_not_a_clerk(store: Store, member: Member):
    # given
    client = _signed_in(_user("stranger", role=None, store=store))
    client.get(CONSOLE)
    token = client.cookies["csrftoken"].value
    code, _ = member_code_current(member=member)

    # when
    response = _post_json(client, IDENTIFY, {"code": code}, X_CSRFToken=token)

    # then
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "not_authenticated"


def test_a_purchase_from_the_console_is_recorded_at_the_clerks_store(
    clerk_client: Client, member: Member, store: Store, other_store: Store
):
    # given
    token = _csrf_token(clerk_client)
    code, _ = member_code_current(member=member)
    body = {"member": code, "receipt_no": "C-0001", "amount": "128.50"}

    # when
    response = _post_json(clerk_client, PURCHASES, body, X_CSRFToken=token, Idempotency_Key="console-test-1")

    # then
    assert response.status_code == 201
    assert response.json()["points_earned"] == 128
    assert response.json()["balance"] == 128
    purchase = Purchase.objects.select_related("terminal").get()
    assert purchase.store == store
    assert purchase.terminal is not None
    assert purchase.terminal.store == store
    assert purchase.terminal.name == CONSOLE_TERMINAL_NAME
    assert purchase.member == member
    assert purchase.amount == Decimal("128.50")
    assert PointsAccount.objects.get(member=member).balance == 128


def test_a_console_retry_with_the_same_idempotency_key_records_once(clerk_client: Client, member: Member):
    # given
    token = _csrf_token(clerk_client)
    body = {"member": member.member_no, "receipt_no": "C-0002", "amount": "50.00"}
    first = _post_json(clerk_client, PURCHASES, body, X_CSRFToken=token, Idempotency_Key="console-retry-1")

    # when
    again = _post_json(clerk_client, PURCHASES, body, X_CSRFToken=token, Idempotency_Key="console-retry-1")

    # then
    assert first.status_code == again.status_code == 201
    assert again.content == first.content
    assert again["Idempotent-Replayed"] == "true"
    assert Purchase.objects.count() == 1
    assert PointsAccount.objects.get(member=member).balance == 50
