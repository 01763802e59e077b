"""Security (issue 8) through the real API and admin: what a terminal key, a
member token and a staff sign-in can reach, secrets at rest, brute-force
throttles and their log lines, personal data in responses and logs, and the
erasure of a closed member everywhere the database keeps text.

Each test says which sentence of the issue it proves; the traceability table
is in docs/reliability.md.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from datetime import date, timedelta
from typing import Any

import pytest
from django.apps import apps
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import connection, models
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from django.utils import timezone
from rest_framework.test import APIClient

from campaigns.models import Coupon, CouponEvent, OutboxMessage, WebhookDelivery, WebhookEndpoint
from campaigns.services.notifications import outbox_send
from loyalty.models import IdempotencyKey
from loyalty.roles import CLERK, OPERATOR
from members.models import Member, MemberEvent, MemberToken, StaffProfile, Store, Terminal, TerminalAPIKey, Tier
from members.selectors import member_code_current
from members.services import (
    member_bind_wechat,
    member_close,
    member_enrol,
    member_set_tier,
    member_token_issue,
    member_token_revoke,
    terminal_create,
)
from points.models import PointsEntry, Purchase
from points.services import adjustment_request
from tests.campaigns.factories import BenefitFactory, coupon_give, coupon_snapshot, coupon_state
from tests.campaigns.test_notifications import fake_http_server
from tests.points.factories import ledger_snapshot, points_give

pytestmark = pytest.mark.django_db

IDENTIFY = "/api/v1/terminal/identify"
ENROL = "/api/v1/terminal/members"
PURCHASES = "/api/v1/terminal/purchases"
PHONE = "13812345678"
PHONE_E164 = "+8613812345678"
NAME = "王小明"
BIRTHDAY = date(1987, 6, 5)
OPENID = "oWx-security-openid-7f3a"
PASSWORD = "a-staff-password-1"


def _error(response: Any) -> dict[str, Any]:
    return response.json()["error"]


def _write_off(client: APIClient, code: str, receipt_no: str = "R-1") -> Any:
    return client.post(f"/api/v1/terminal/coupons/{code}/write-off", {"receipt_no": receipt_no}, format="json")


def _purchase(client: APIClient, **body: Any) -> Any:
    body.setdefault("amount", "200.00")
    return client.post(PURCHASES, body, format="json")


def _key_client(key: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {key}")
    return client


def _bearer(raw: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client


def _staff(username: str, role: str | None = OPERATOR, *, store: Store | None = None, staff: bool = True) -> Any:
    user = get_user_model().objects.create_user(username=username, password=PASSWORD, is_staff=staff)
    if role is not None:
        user.groups.add(Group.objects.get(name=role))
    if store is not None:
        StaffProfile.objects.create(user=user, store=store)
    return user


def _signed_in(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _written() -> tuple[Any, ...]:
    """Everything a refused till request must leave as it was."""
    return (
        coupon_snapshot(),
        ledger_snapshot(),
        Purchase.objects.count(),
        CouponEvent.objects.count(),
        IdempotencyKey.objects.count(),
    )


@pytest.fixture
def other_terminal_client(other_store: Store) -> APIClient:
    return _key_client(terminal_create(store=other_store, name="till-bj")[1])


# -----------------------------------------------------------------------------
# "A terminal of store A cannot write off a coupon limited to store B"
# (the write-off endpoint: tests/campaigns/test_apis_coupons.py::
# test_write_off_at_a_store_the_benefit_is_not_for_is_403)
# -----------------------------------------------------------------------------
def test_a_store_b_coupon_in_a_store_a_purchase_is_refused_and_nothing_is_written(
    terminal_client, other_terminal_client, member, other_store
):
    # given a coupon usable only at store B (Beijing), and the member at a store A (Shanghai) till
    coupon = coupon_give(BenefitFactory(stores=[other_store]), member)
    code, _ = member_code_current(member=member)
    before = _written()
    # when
    response = terminal_client.post(
        PURCHASES,
        {"member": code, "receipt_no": "R-A-1", "amount": "200.00", "coupon_codes": [coupon.code]},
        format="json",
        HTTP_IDEMPOTENCY_KEY="sec-purchase-1",
    )
    # then
    assert response.status_code == 403, response.content
    assert _error(response) == {
        "code": "coupon_wrong_store",
        "message": "This coupon cannot be used at this store.",
        "detail": {"store": "SH001"},
    }
    assert _written() == before
    # and the same coupon is accepted in a purchase at store B (the refusal is the store, nothing else)
    code, _ = member_code_current(member=member)
    at_b = _purchase(other_terminal_client, member=code, receipt_no="R-B-1", coupon_codes=[coupon.code])
    assert at_b.status_code == 201, at_b.content
    assert coupon_state(coupon)[0] == "written_off"
    assert Coupon.objects.get(pk=coupon.pk).written_off_store == other_store


def test_a_store_a_clerk_at_the_console_cannot_write_off_a_store_b_coupon(store, member, other_store):
    # given a clerk of store A signed in at the console (CSRF enforced)
    coupon = coupon_give(BenefitFactory(stores=[other_store]), member)
    client = Client(enforce_csrf_checks=True)
    client.force_login(_staff("clerk", CLERK, store=store, staff=False))
    client.get("/console/")
    before = _written()
    # when
    response = client.post(
        f"/api/v1/terminal/coupons/{coupon.code}/write-off",
        data=json.dumps({"receipt_no": "R-1"}),
        content_type="application/json",
        headers={"X-CSRFToken": client.cookies["csrftoken"].value},
    )
    # then
    assert response.status_code == 403
    assert _error(response)["code"] == "coupon_wrong_store"
    assert _written() == before


# -----------------------------------------------------------------------------
# "... nor read a member beyond identify"
# -----------------------------------------------------------------------------
def _api_routes() -> list[tuple[str, str]]:
    """(name, path) of every named route under /api/v1/, with placeholder arguments."""
    found: list[tuple[str, str]] = []

    def walk(patterns: list[Any], prefix: str) -> None:
        for pattern in patterns:
            route = prefix + str(pattern.pattern)
            if isinstance(pattern, URLResolver):
                walk(pattern.url_patterns, route)
            elif isinstance(pattern, URLPattern) and route.startswith("api/v1/") and pattern.name:
                kwargs = {
                    name: 1 if type(converter).__name__ == "IntConverter" else "X"
                    for name, converter in pattern.pattern.converters.items()
                }
                found.append((pattern.name, reverse(pattern.name, kwargs=kwargs)))

    walk(get_resolver().url_patterns, "")
    return found


# Member sign-in is public by design (a WeChat login code, not a key, proves who signs in).
PUBLIC_ROUTES = {"auth-wechat", "auth-register"}


def test_the_route_list_covers_the_member_operator_and_report_apis():
    names = {name for name, _path in _api_routes()}
    assert {"me", "me-code", "me-ledger", "me-coupons", "me-claims", "benefit-list", "benefit-exchange"} <= names
    assert {"operator-adjustment-create", "operator-adjustment-approve", "reports-monthly"} <= names


def test_a_terminal_key_reaches_no_api_but_the_terminal_api(terminal_client, member):
    # given a member with points and a coupon, and every API route that is not the till's
    points_give(member, 300, at=timezone.now() - timedelta(minutes=1))
    coupon = coupon_give(BenefitFactory(), member)
    routes = [(name, path) for name, path in _api_routes() if not name.startswith("terminal-")]
    routes = [(name, path) for name, path in routes if name not in PUBLIC_ROUTES]
    assert len(routes) >= 10
    before = _written()
    # when the till's key is sent to each of them, with every method
    answers = {}
    for name, path in routes:
        for method in ("get", "post", "patch"):
            response = getattr(terminal_client, method)(path, {}, format="json")
            answers[(name, method)] = response
    # then each refuses (401/403, or 405 for a method the route lacks) and shows nothing of the member
    for (name, method), response in answers.items():
        assert response.status_code in (401, 403, 405), (name, method, response.status_code)
        body = response.content.decode()
        assert member.member_no not in body, (name, method)
        assert coupon.code not in body, (name, method)
    assert {name for (name, _m), r in answers.items() if r.status_code in (401, 403)} == {name for name, _ in routes}
    assert _written() == before


def test_a_terminal_key_opens_no_admin_or_report_page(terminal_client, member):
    # when
    pages = [
        terminal_client.get("/admin/members/member/"),
        terminal_client.get(f"/admin/members/member/{member.pk}/change/"),
        terminal_client.get("/reports/"),
        terminal_client.get("/reports/export/kpis.csv?month=2025-03"),
    ]
    # then each sends the till to the admin sign-in page
    for response in pages:
        assert response.status_code == 302
        assert response["Location"].startswith("/admin/login/")


def test_identify_and_enrol_show_only_the_masked_name_and_phone(terminal_client, store):
    # given a member with a full profile and WeChat bound
    member, _ = member_enrol(phone=PHONE, name=NAME, birthday=BIRTHDAY, store=store)
    member_bind_wechat(member=member, openid=OPENID)
    code, _ = member_code_current(member=member)
    # when
    answers = [
        terminal_client.post(IDENTIFY, {"code": code}, format="json"),
        terminal_client.post(IDENTIFY, {"code": member.member_no}, format="json"),
        terminal_client.post(IDENTIFY, {"code": PHONE}, format="json"),
        terminal_client.post(ENROL, {"phone": PHONE}, format="json"),
    ]
    # then
    for response in answers:
        assert response.status_code == 200, response.content
        body = response.json()
        assert set(body) == {"member_no", "name", "phone", "status", "tier", "points", "coupons", "identified_by"}
        assert (body["name"], body["phone"]) == ("王**", "138****5678")
        text = response.content.decode()
        for secret in (PHONE, NAME, BIRTHDAY.isoformat(), OPENID, member.code_secret):
            assert secret not in text


def test_a_purchase_answer_names_the_member_by_number_only(terminal_client, member):
    # when
    response = _purchase(terminal_client, member=PHONE, receipt_no="R-1")
    # then
    assert response.status_code == 201, response.content
    assert response.json()["member_no"] == member.member_no
    assert PHONE not in response.content.decode()
    assert NAME not in response.content.decode()


# -----------------------------------------------------------------------------
# "a member token reaches only its own data"
# -----------------------------------------------------------------------------
def test_a_member_token_reaches_only_its_own_member(member, member_client, store, terminal_client):
    # given another member with points, a coupon and a purchase
    other, _ = member_enrol(phone="13900001111", name="李雷", store=store)
    now = timezone.now()
    points_give(member, 100, at=now - timedelta(minutes=2))
    points_give(other, 700, at=now - timedelta(minutes=2))
    mine = coupon_give(BenefitFactory(), member)
    theirs = coupon_give(BenefitFactory(), other)
    assert _purchase(terminal_client, member="13900001111", receipt_no="R-THEIRS").status_code == 201
    their_entries = set(PointsEntry.objects.filter(member=other).values_list("pk", flat=True))
    # when the member asks for everything, also naming the other member in the query string
    query = {"member": other.member_no, "member_id": other.pk, "member_no": other.member_no}
    me = member_client.get("/api/v1/me", query)
    code = member_client.get("/api/v1/me/code", query)
    coupons = member_client.get("/api/v1/me/coupons", query)
    ledger = member_client.get("/api/v1/me/ledger", query)
    claim = member_client.post("/api/v1/me/claims", {"store": store.code, "receipt_no": "R-THEIRS"}, format="json")
    # then only their own data comes back
    assert me.json()["member_no"] == member.member_no
    assert me.json()["points"]["balance"] == 100
    assert code.json()["code"][:10] == member.member_no
    assert [c["code"] for c in coupons.json()["results"]] == [mine.code]
    assert {entry["id"] for entry in ledger.json()["results"]}.isdisjoint(their_entries)
    assert len(ledger.json()["results"]) == 1
    for response in (me, code, coupons, ledger):
        assert other.member_no not in response.content.decode()
        assert theirs.code not in response.content.decode()
    # and another member's receipt cannot be claimed
    assert claim.status_code in (404, 409), claim.content
    assert Purchase.objects.get(receipt_no="R-THEIRS").member_id == other.pk


def test_a_member_token_reaches_no_terminal_or_operator_api(member_client, member):
    # given
    before = _written()
    # when
    answers = [
        member_client.post(IDENTIFY, {"code": member.member_no}, format="json"),
        member_client.post(PURCHASES, {"member": member.member_no, "receipt_no": "R", "amount": "1"}, format="json"),
        member_client.post("/api/v1/operator/adjustments", {"member": member.member_no, "points": 5}, format="json"),
        member_client.get("/api/v1/reports/monthly", {"month": "2025-03"}),
    ]
    # then
    for response in answers:
        assert response.status_code in (401, 403), response.content
    assert _written() == before


# -----------------------------------------------------------------------------
# "a revoked terminal key is refused at once"
# -----------------------------------------------------------------------------
def test_a_key_revoked_in_the_admin_is_refused_on_the_very_next_request(terminal_with_key, member):
    terminal, key = terminal_with_key
    till = _key_client(key)
    operator = _signed_in(_staff("operator"))
    assert till.post(IDENTIFY, {"code": member.member_no}, format="json").status_code == 200
    # when an operator revokes the terminal in the admin
    revoked = operator.post(
        "/admin/members/terminal/",
        {"action": "revoke_terminals", "_selected_action": [terminal.pk], "post": "yes"},
    )
    response = till.post(IDENTIFY, {"code": member.member_no}, format="json")
    # then the same client's next request is refused: validity is read from the database on every request
    assert revoked.status_code == 302
    assert response.status_code == 401
    assert _error(response)["code"] == "authentication_failed"


def test_a_revoked_key_is_refused_on_every_terminal_endpoint(terminal_with_key, member):
    # given
    terminal, key = terminal_with_key
    till = _key_client(key)
    coupon = coupon_give(BenefitFactory(), member)
    TerminalAPIKey.objects.filter(terminal=terminal).update(revoked=True)
    before = _written()
    # when
    answers = [
        till.post(IDENTIFY, {"code": member.member_no}, format="json"),
        till.post(ENROL, {"phone": "13900002222"}, format="json"),
        _purchase(till, member=member.member_no, receipt_no="R-1"),
        till.post("/api/v1/terminal/purchases/preview", {"amount": "10.00", "receipt_no": "P"}, format="json"),
        till.post("/api/v1/terminal/purchases/R-1/refunds", {"refund_no": "F", "amount": "1.00"}, format="json"),
        _write_off(till, coupon.code),
    ]
    # then
    assert [response.status_code for response in answers] == [401] * len(answers)
    assert _written() == before
    assert not Member.objects.filter(phone="+8613900002222").exists()


# -----------------------------------------------------------------------------
# "API keys and member tokens are stored hashed"
# -----------------------------------------------------------------------------
def _rows_with(text: str) -> list[str]:
    """Tables with a row whose text (every column, JSON and binary included) contains ``text``."""
    tables = []
    escaped = json.dumps(text)[1:-1]
    with connection.cursor() as cursor:
        for model in apps.get_models(include_auto_created=True):
            table = connection.ops.quote_name(model._meta.db_table)
            binary = [
                connection.ops.quote_name(field.column)
                for field in model._meta.concrete_fields
                if isinstance(field, models.BinaryField)
            ]
            condition = "t::text LIKE %s OR t::text LIKE %s"
            params = [f"%{text}%", f"%{escaped}%"]
            for column in binary:
                condition += f" OR convert_from(coalesce({column}, ''::bytea), 'UTF8') LIKE %s"
                params.append(f"%{text}%")
            cursor.execute(f"SELECT count(*) FROM {table} t WHERE {condition}", params)  # noqa: S608
            if cursor.fetchone()[0]:
                tables.append(model._meta.db_table)
    return tables


def test_terminal_keys_and_member_tokens_are_stored_hashed(store, member):
    # given a new terminal key and a new member token, both working
    _, key = terminal_create(store=store, name="till-9")
    token, raw = member_token_issue(member=member)
    assert _key_client(key).post(IDENTIFY, {"code": member.member_no}, format="json").status_code == 200
    assert _bearer(raw).get("/api/v1/me").status_code == 200
    key_prefix, key_secret = key.split(".", 1)
    token_prefix, token_secret = raw.split(".", 1)
    # then no table holds either secret, only its hash
    assert _rows_with(key_secret) == []
    assert _rows_with(token_secret) == []
    assert _rows_with(token_prefix) == ["members_membertoken"]  # the public prefix finds the row
    assert MemberToken.objects.get(pk=token.pk).key_hash == hashlib.sha256(token_secret.encode()).hexdigest()
    stored_key = TerminalAPIKey.objects.get(prefix=key_prefix)
    assert stored_key.hashed_key != key_secret
    assert key_secret not in stored_key.hashed_key


# -----------------------------------------------------------------------------
# "member tokens expire and can be revoked"
# (also tests/members/test_apis_member.py::test_member_api_with_expired_token_is_401,
#  ::test_member_api_with_revoked_token_is_401, ::test_member_api_after_close_is_401)
# -----------------------------------------------------------------------------
def test_a_member_token_expires_after_its_ttl_and_then_is_refused(member, settings):
    # given
    settings.LOYALTY_MEMBER_TOKEN_TTL_DAYS = 30
    issued_at = timezone.now()
    token, raw = member_token_issue(member=member)
    client = _bearer(raw)
    assert client.get("/api/v1/me").status_code == 200
    # then it expires 30 days after issue
    assert timedelta(days=30) <= token.expires_at - issued_at < timedelta(days=30, seconds=5)
    # when that time has come
    MemberToken.objects.filter(pk=token.pk).update(expires_at=timezone.now())
    response = client.get("/api/v1/me")
    # then
    assert response.status_code == 401
    assert _error(response)["code"] == "authentication_failed"


def test_a_revoked_member_token_is_refused_on_the_very_next_request_and_others_keep_working(member):
    # given two sessions of one member
    token, raw = member_token_issue(member=member)
    _, other_raw = member_token_issue(member=member)
    client = _bearer(raw)
    assert client.get("/api/v1/me").status_code == 200
    # when one is revoked
    member_token_revoke(token=token)
    # then
    assert client.get("/api/v1/me/coupons").status_code == 401
    assert _bearer(other_raw).get("/api/v1/me").status_code == 200


def test_a_member_signs_out_and_that_token_stops_working_at_once(member):
    # given two devices signed in
    _, raw = member_token_issue(member=member)
    _, other_raw = member_token_issue(member=member)
    client = _bearer(raw)
    # when one signs out
    response = client.post("/api/v1/auth/logout")
    # then its token is refused from the next request, the other device stays signed in
    assert response.status_code == 204
    assert client.get("/api/v1/me").status_code == 401
    assert client.post("/api/v1/auth/logout").status_code == 401
    assert _bearer(other_raw).get("/api/v1/me").status_code == 200
    assert MemberToken.objects.filter(member=member, revoked_at__isnull=False).count() == 1


def test_sign_out_needs_the_token_it_revokes(anon_client, terminal_client, member):
    # given
    _, raw = member_token_issue(member=member)
    # when
    anonymous = anon_client.post("/api/v1/auth/logout")
    by_terminal = terminal_client.post("/api/v1/auth/logout")
    # then
    assert (anonymous.status_code, by_terminal.status_code) == (401, 401)
    assert _bearer(raw).get("/api/v1/me").status_code == 200


# -----------------------------------------------------------------------------
# "Brute force is throttled: member codes, coupon codes, login;
#  failed attempts are logged with terminal and store"
# (member codes at identify: tests/members/test_apis_terminal.py::
#  test_identify_is_throttled_after_too_many_failures_even_for_a_valid_code)
# -----------------------------------------------------------------------------
def _forged(code: str) -> str:
    return code[:-6] + str((int(code[-6:]) + 1) % 10**6).zfill(6)


def test_forged_member_codes_in_purchases_are_throttled_like_identify(
    terminal_client, terminal, member, settings, caplog
):
    # given as many purchases with forged member codes as allowed
    caplog.set_level(logging.WARNING, logger="loyalty.throttle")
    code, _ = member_code_current(member=member)
    for index in range(settings.LOYALTY_IDENTIFY_FAILURES_LIMIT):
        refused = _purchase(terminal_client, member=_forged(code), receipt_no=f"R-{index}", points_to_use=100)
        assert refused.status_code == 400, refused.content
    before = _written()
    # when the right code comes
    response = terminal_client.post(IDENTIFY, {"code": code}, format="json")
    # then
    assert response.status_code == 429
    assert _error(response)["code"] == "too_many_attempts"
    assert _written() == before
    lines = [record.getMessage() for record in caplog.records if record.name == "loyalty.throttle"]
    expected = f"identify failed: reason=forged terminal={terminal.pk} store=SH001"
    assert lines[:-1] == [expected] * settings.LOYALTY_IDENTIFY_FAILURES_LIMIT
    # and the block, with its end, once
    assert re.fullmatch(rf"identify blocked until \S+: terminal={terminal.pk} store=SH001", lines[-1]), lines[-1]
    blocked_until = Terminal.objects.get(pk=terminal.pk).identify_blocked_until
    assert lines[-1].startswith(f"identify blocked until {blocked_until.isoformat()}")


def test_coupon_codes_are_throttled_at_the_write_off(
    terminal_client, terminal, other_terminal_client, member, settings, caplog
):
    # given as many unknown coupon codes as allowed, from one till
    caplog.set_level(logging.WARNING, logger="loyalty.throttle")
    coupon = coupon_give(BenefitFactory(), member)
    for index in range(settings.LOYALTY_IDENTIFY_FAILURES_LIMIT):
        refused = _write_off(terminal_client, f"GUESS{index:07d}")
        assert refused.status_code == 404
        assert _error(refused)["code"] == "coupon_not_found"
    before = _written()
    # when the till tries a real code
    response = _write_off(terminal_client, coupon.code)
    # then it is refused for now, and nothing is written
    assert response.status_code == 429
    assert _error(response)["code"] == "too_many_attempts"
    assert response["Retry-After"] == str(settings.LOYALTY_IDENTIFY_FAILURES_WINDOW_SECONDS)
    assert _written() == before
    # and every failure was logged with the terminal and its store
    lines = [record.getMessage() for record in caplog.records if record.name == "loyalty.throttle"]
    expected = f"coupon failed: reason=not_found terminal={terminal.pk} store=SH001"
    assert lines[:-1] == [expected] * settings.LOYALTY_IDENTIFY_FAILURES_LIMIT
    # and the block, with its end, once
    assert re.fullmatch(rf"coupon blocked until \S+: terminal={terminal.pk} store=SH001", lines[-1]), lines[-1]
    blocked_until = Terminal.objects.get(pk=terminal.pk).coupon_blocked_until
    assert lines[-1].startswith(f"coupon blocked until {blocked_until.isoformat()}")
    # and another store's till is not affected
    assert _write_off(other_terminal_client, coupon.code).status_code == 200


def test_coupon_codes_guessed_inside_purchases_count_too(terminal_client, member, settings):
    # given unknown coupon codes tried inside purchases
    for index in range(settings.LOYALTY_IDENTIFY_FAILURES_LIMIT):
        code, _ = member_code_current(member=member)
        refused = _purchase(terminal_client, member=code, receipt_no=f"R-{index}", coupon_codes=[f"GUESS{index:07d}"])
        assert refused.status_code == 404, refused.content
        assert _error(refused)["code"] == "coupon_not_found"
    coupon = coupon_give(BenefitFactory(), member)
    before = _written()
    # when
    code, _ = member_code_current(member=member)
    with_coupon = _purchase(terminal_client, member=code, receipt_no="R-OK", coupon_codes=[coupon.code])
    write_off = _write_off(terminal_client, coupon.code)
    # then coupons are refused at this till for now
    assert (with_coupon.status_code, write_off.status_code) == (429, 429)
    assert _written() == before
    # but a purchase without coupons still goes through (the till keeps working)
    assert _purchase(terminal_client, member=member.member_no, receipt_no="R-PLAIN").status_code == 201


def _sign_in(path: str, username: str, password: str, ip: str = "10.1.1.1") -> Any:
    return Client(REMOTE_ADDR=ip).post(path, {"username": username, "password": password})


@pytest.mark.parametrize(("path", "staff"), [("/admin/login/", True), ("/console/login/", False)])
def test_sign_in_is_throttled_per_user_name_and_address(path, staff, store, settings, caplog):
    # given a staff user, and as many wrong passwords from one address as allowed
    caplog.set_level(logging.WARNING, logger="loyalty.throttle")
    _staff("anna", CLERK if not staff else OPERATOR, store=store, staff=staff)
    for _ in range(settings.LOYALTY_LOGIN_FAILURES_LIMIT):
        refused = _sign_in(path, "anna", "wrong")
        assert refused.status_code == 200
        assert "_auth_user_id" not in refused.wsgi_request.session
    # when the right password comes from that address, and from another
    blocked = _sign_in(path, "anna", PASSWORD)
    elsewhere = _sign_in(path, "anna", PASSWORD, ip="10.2.2.2")
    # then the first is refused with the reason, the second signs in
    assert blocked.status_code == 200
    assert "Too many failed attempts. Wait 900 seconds and try again." in blocked.content.decode()
    assert "_auth_user_id" not in blocked.wsgi_request.session
    assert elsewhere.status_code == 302
    lines = [record.getMessage() for record in caplog.records if record.name == "loyalty.throttle"]
    assert lines == ["login failed: username=anna ip=10.1.1.1"] * (settings.LOYALTY_LOGIN_FAILURES_LIMIT + 1)


def test_a_successful_sign_in_starts_the_count_again(settings):
    # given one failure fewer than the limit, then a success
    _staff("anna")
    for _ in range(settings.LOYALTY_LOGIN_FAILURES_LIMIT - 1):
        _sign_in("/admin/login/", "anna", "wrong")
    assert _sign_in("/admin/login/", "anna", PASSWORD).status_code == 302
    # when as many failures again, less one
    for _ in range(settings.LOYALTY_LOGIN_FAILURES_LIMIT - 1):
        _sign_in("/admin/login/", "anna", "wrong")
    # then the right password still works
    assert _sign_in("/admin/login/", "anna", PASSWORD).status_code == 302


def test_sign_in_keeps_working_unthrottled_when_redis_is_down(monkeypatch, settings, caplog):
    # given a cache that fails on every call
    from loyalty import throttle

    class Down:
        def __getattr__(self, name: str) -> Any:
            def fail(*args: Any, **kwargs: Any) -> Any:
                raise ConnectionError("redis down")

            return fail

    _staff("anna")
    monkeypatch.setattr(throttle, "cache", Down())
    caplog.set_level(logging.WARNING, logger="loyalty.throttle")
    # when more wrong passwords than the limit, then the right one
    for _ in range(settings.LOYALTY_LOGIN_FAILURES_LIMIT + 1):
        assert _sign_in("/admin/login/", "anna", "wrong").status_code == 200
    response = _sign_in("/admin/login/", "anna", PASSWORD)
    # then the password is still checked and sign-in works; the outage is logged
    assert response.status_code == 302
    assert "login throttle unavailable (redis down); not throttling" in caplog.text


# -----------------------------------------------------------------------------
# "Personal data: phones and names masked in terminal responses and in logs"
# -----------------------------------------------------------------------------
def test_no_log_line_holds_a_phone_or_a_name(terminal_client, store, settings, caplog, django_capture_on_commit_callbacks):
    # given every logger at DEBUG while a member goes through the till, the messages and failures
    caplog.set_level(logging.DEBUG)
    with django_capture_on_commit_callbacks(execute=True):
        enrolled = terminal_client.post(ENROL, {"phone": PHONE, "name": NAME, "birthday": "1987-06-05"}, format="json")
        member = Member.objects.get(phone=PHONE_E164)
        terminal_client.post(IDENTIFY, {"code": PHONE}, format="json")
        terminal_client.post(IDENTIFY, {"code": "13900009999"}, format="json")  # unknown phone: a failure
        terminal_client.post(ENROL, {"phone": PHONE, "name": "别人"}, format="json")  # phone of another person
        _purchase(terminal_client, member=PHONE, receipt_no="R-1")
    for message in OutboxMessage.objects.filter(member=member):
        outbox_send(message_id=message.pk)
    # and an SMS gateway that refuses the number, quoting it back
    settings.LOYALTY_MESSAGE_CHANNEL = "sms"
    settings.LOYALTY_SMS_GATEWAY_KEY = "k"
    with fake_http_server() as gateway:
        settings.LOYALTY_SMS_GATEWAY_URL = gateway.url
        gateway.default_status = 400
        gateway.body = json.dumps({"error": f"invalid number {PHONE_E164} ({PHONE})"}).encode()
        with django_capture_on_commit_callbacks(execute=True):
            member_set_tier(member=member, tier=Tier.objects.get(code="gold"), by_user=None, reason="VIP")
        sms = OutboxMessage.objects.filter(member=member, channel="sms")
        for message in sms:
            outbox_send(message_id=message.pk)
    # then
    assert enrolled.status_code == 201
    assert sms.exists()
    assert [status for (status,) in sms.values_list("status")] == ["failed"]
    assert sms.get().last_error.endswith('{"error": "invalid number 138****5678 (138****5678)"}')
    assert "138****5678" in caplog.text  # the log channel's line, masked
    for secret in (PHONE, NAME, "1987-06-05"):
        assert secret not in caplog.text, secret


# -----------------------------------------------------------------------------
# "closing a member erases personal data everywhere it is stored"
# -----------------------------------------------------------------------------
def test_closing_a_member_erases_their_personal_data_from_every_table(
    terminal_client, store, settings, django_capture_on_commit_callbacks
):
    # given a member who went through everything that writes rows about them
    operator = _staff("operator")
    WebhookEndpoint.objects.create(name="ERP", url="http://127.0.0.1:9/hook", secret="whsec_x", events=[])
    with django_capture_on_commit_callbacks(execute=False):
        enrolled = terminal_client.post(
            ENROL, {"phone": PHONE, "name": NAME, "birthday": BIRTHDAY.isoformat()}, format="json"
        )
        member = Member.objects.get(phone=PHONE_E164)
        member_bind_wechat(member=member, openid=OPENID)
        _, raw = member_token_issue(member=member)
        me = _bearer(raw)
        me.patch("/api/v1/me", {"name": "王小明明", "gender": "male"}, format="json")
        me.patch("/api/v1/me", {"name": NAME}, format="json")
        me.post("/api/v1/me/check-in", HTTP_IDEMPOTENCY_KEY="check-in-1")
        code, _ = member_code_current(member=member)
        terminal_client.post(
            PURCHASES,
            {"member": code, "receipt_no": "R-1", "amount": "6000.00"},
            format="json",
            HTTP_IDEMPOTENCY_KEY="purchase-1",
        )
        coupon_give(BenefitFactory(), member)
        adjustment_request(member=member, points=50, reason="goodwill", by_user=operator)
    assert enrolled.status_code == 201
    for message in OutboxMessage.objects.filter(member=member):
        outbox_send(message_id=message.pk)
    assert WebhookDelivery.objects.exists()
    secrets = (PHONE, NAME, BIRTHDAY.isoformat(), OPENID)
    assert {secret: bool(_rows_with(secret)) for secret in secrets} == dict.fromkeys(secrets, True)
    # when an operator closes the account in the admin
    response = _signed_in(operator).post(
        f"/admin/members/member/{member.pk}/close/", {"post": "yes", "reason": "客户要求注销"}
    )
    # then no table keeps the phone, the name, the birthday or the WeChat openid
    assert response.status_code == 302
    assert Member.objects.get(pk=member.pk).status == Member.Status.CLOSED
    assert {secret: _rows_with(secret) for secret in secrets} == {secret: [] for secret in secrets}
    # and the ledger and audit trail are kept
    assert PointsEntry.objects.filter(member=member).count() >= 3
    assert MemberEvent.objects.filter(member=member, kind="closed", by_user=operator).exists()


def test_a_closed_members_data_is_in_no_answer_to_a_till(terminal_client, member, operator_for_close):
    # given
    code, _ = member_code_current(member=member)
    member_close(member=member, by_user=operator_for_close, reason="客户要求注销")
    # when
    answers = [
        terminal_client.post(IDENTIFY, {"code": PHONE}, format="json"),
        terminal_client.post(IDENTIFY, {"code": member.member_no}, format="json"),
        terminal_client.post(IDENTIFY, {"code": code}, format="json"),
    ]
    # then
    assert [response.status_code for response in answers] == [404, 404, 400]
    for response in answers:
        assert "138****5678" not in response.content.decode()
        assert "王**" not in response.content.decode()


@pytest.fixture
def operator_for_close() -> Any:
    return _staff("closer")

