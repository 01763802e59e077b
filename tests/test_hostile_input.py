"""Malformed and hostile values in every field of every write endpoint (issue 8).

Each case sends one request that would succeed (``test_the_valid_request_*``
proves it does, and that the snapshot sees what it writes) with one value made
hostile: huge, negative, fractional, NaN or infinite amounts and points, far
past or future dates, SQL and script strings, emoji, NUL, unpaired
surrogates, full-width digits, overlong strings, wrong JSON types; or the whole
body made hostile (10 MB, wrong content types, invalid or deeply nested JSON);
or a hostile header (Authorization, Idempotency-Key) or path value. Every one
must be a 4xx in the error envelope with the expected stable code, and write
nothing: purchases, refunds, ledger entries, lots, balances, coupons and their
history, members and their history, tokens, outbox messages, idempotency keys,
check-ins and adjustments are all compared before and after.

Decisions, as the API implements them:

- Phones: full-width digits (``１３８…``, as a Chinese IME types them) are
  normalised to the same number (``phone_normalise``): enrolling or
  identifying by them finds the member who has that phone.
- Receipt and refund numbers: ASCII letters, digits and ``- _ . /`` only;
  full-width digits are refused (``invalid_input``): the number must match
  what the till printed, byte for byte.
- Amounts: a JSON number or a plain decimal string; exponent notation,
  full-width digits, NaN and Infinity are refused.
- Names: letters of any script, marks, spaces and ``' ’ - . · ・``. Markup,
  SQL punctuation, digits, emoji and control or direction-changing characters
  are refused. Free text elsewhere (an adjustment's reason) is stored verbatim:
  SQL in it is data, never executed.
- Endpoints without a body (check-in, exchange) ignore one; their hostile
  inputs are the Idempotency-Key header, the token and the path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core import signing
from django.db import connection, transaction
from django.utils import timezone
from rest_framework.test import APIClient

from campaigns.models import Coupon, CouponEvent, OutboxMessage
from loyalty.models import IdempotencyKey
from loyalty.roles import OPERATOR
from members.apis import WECHAT_SESSION_SALT
from members.models import Member, MemberEvent, MemberToken, Tier
from members.selectors import member_code_current
from members.services import member_token_issue
from points.models import (
    CheckIn,
    PointsAccount,
    PointsAdjustment,
    PointsAllocation,
    PointsEntry,
    PointsLot,
    Purchase,
    Refund,
)
from tests.api_errors import envelope_problem
from tests.campaigns.factories import BenefitFactory, coupon_give
from tests.points.factories import buy, points_give

pytestmark = pytest.mark.django_db

TEN_MB = 10 * 1024 * 1024


def snapshot() -> dict[str, Any]:
    """Every row a terminal or member request can write."""
    return {
        "purchases": list(Purchase.objects.order_by("pk").values_list("pk", "member_id", "refunded_amount")),
        "refunds": list(Refund.objects.order_by("pk").values_list("pk", "amount")),
        "entries": list(PointsEntry.objects.order_by("pk").values_list("pk", "kind", "points")),
        "allocations": PointsAllocation.objects.count(),
        "lots": list(PointsLot.objects.order_by("pk").values_list("pk", "remaining")),
        "accounts": list(PointsAccount.objects.order_by("pk").values_list("member_id", "balance", "pending", "debt")),
        "coupons": list(Coupon.objects.order_by("pk").values_list("pk", "status", "member_id")),
        "coupon_events": CouponEvent.objects.count(),
        "members": list(
            Member.objects.order_by("pk").values_list(
                "pk", "phone", "name", "birthday", "gender", "marketing_consent", "wechat_openid", "status"
            )
        ),
        "member_events": MemberEvent.objects.count(),
        "tokens": MemberToken.objects.count(),
        "outbox": OutboxMessage.objects.count(),
        "idempotency_keys": IdempotencyKey.objects.count(),
        "check_ins": CheckIn.objects.count(),
        "adjustments": PointsAdjustment.objects.count(),
    }


@dataclass
class World:
    member: Member
    clients: dict[str, APIClient]
    coupon_code: str
    benefit_id: int


@pytest.fixture(scope="module")
def world_rows(django_db_setup: Any, django_db_blocker: Any) -> Any:
    """A member with 5,000 points, a purchase to refund (R-BASE), one recorded
    without a member to claim (R-CLAIM), an issued coupon, a benefit, a
    terminal key, a member token and an operator: built once for the module in
    a transaction rolled back at its end. Each test runs in a savepoint inside
    it (pytest-django's ``db``), so every test sees exactly these rows."""
    from members.services import member_enrol, store_get_or_create, terminal_create
    from tests.conftest import restore_migration_data

    with django_db_blocker.unblock():
        outer = transaction.atomic()
        outer.__enter__()
        try:
            if not Tier.objects.exists():
                restore_migration_data()
            store, _ = store_get_or_create(code="SH001", name="上海南京西路店")
            terminal, key = terminal_create(store=store, name="till-1")
            member, _ = member_enrol(phone="13812345678", name="王小明", store=store)
            now = timezone.now()
            points_give(member, 5000, at=now - timedelta(days=1))
            buy(
                store=store,
                terminal=terminal,
                member=member,
                receipt_no="R-BASE",
                amount="100.00",
                at=now - timedelta(hours=1),
            )
            buy(
                store=store,
                terminal=terminal,
                member=None,
                receipt_no="R-CLAIM",
                amount="50.00",
                at=now - timedelta(hours=1),
            )
            benefit = BenefitFactory(points_price=100)
            coupon = coupon_give(benefit, member)
            _, token = member_token_issue(member=member)
            operator = get_user_model().objects.create_user(username="operator", is_staff=True)
            operator.groups.add(Group.objects.get(name=OPERATOR))
            yield {
                "member": member.pk,
                "key": key,
                "token": token,
                "operator": operator.pk,
                "coupon": coupon.code,
                "benefit": benefit.pk,
            }
        finally:
            transaction.set_rollback(True)
            outer.__exit__(None, None, None)


@pytest.fixture
def world(world_rows: dict[str, Any], db: Any) -> World:
    clients = {"terminal": APIClient(), "member": APIClient(), "operator": APIClient(), "anon": APIClient()}
    clients["terminal"].credentials(HTTP_AUTHORIZATION=f"Api-Key {world_rows['key']}")
    clients["member"].credentials(HTTP_AUTHORIZATION=f"Bearer {world_rows['token']}")
    clients["operator"].force_login(get_user_model().objects.get(pk=world_rows["operator"]))
    return World(
        member=Member.objects.get(pk=world_rows["member"]),
        clients=clients,
        coupon_code=world_rows["coupon"],
        benefit_id=world_rows["benefit"],
    )


def _code(world: World) -> str:
    return member_code_current(member=world.member)[0]


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    client: str
    writes: bool  # whether the valid request writes rows (reads and previews do not)
    idempotent: bool  # whether it takes an Idempotency-Key

    def body(self, world: World) -> dict[str, Any] | None:
        return VALID_BODIES[self.path](world) if self.path in VALID_BODIES else None


IDENTIFY = Endpoint("POST", "/api/v1/terminal/identify", "terminal", writes=False, idempotent=False)
ENROL = Endpoint("POST", "/api/v1/terminal/members", "terminal", writes=True, idempotent=False)
PREVIEW = Endpoint("POST", "/api/v1/terminal/purchases/preview", "terminal", writes=False, idempotent=False)
PURCHASE = Endpoint("POST", "/api/v1/terminal/purchases", "terminal", writes=True, idempotent=True)
REFUND = Endpoint("POST", "/api/v1/terminal/purchases/R-BASE/refunds", "terminal", writes=True, idempotent=True)
WRITE_OFF = Endpoint("POST", "/api/v1/terminal/coupons/{coupon}/write-off", "terminal", writes=True, idempotent=True)
CLAIM = Endpoint("POST", "/api/v1/me/claims", "member", writes=True, idempotent=True)
EXCHANGE = Endpoint("POST", "/api/v1/benefits/{benefit}/exchange", "member", writes=True, idempotent=True)
CHECK_IN = Endpoint("POST", "/api/v1/me/check-in", "member", writes=True, idempotent=True)
PROFILE = Endpoint("PATCH", "/api/v1/me", "member", writes=True, idempotent=False)
REGISTER = Endpoint("POST", "/api/v1/auth/register", "anon", writes=True, idempotent=False)
LOGIN = Endpoint("POST", "/api/v1/auth/wechat", "anon", writes=False, idempotent=False)
ADJUST = Endpoint("POST", "/api/v1/operator/adjustments", "operator", writes=True, idempotent=True)

ENDPOINTS = {
    "identify": IDENTIFY,
    "enrol": ENROL,
    "preview": PREVIEW,
    "purchase": PURCHASE,
    "refund": REFUND,
    "write_off": WRITE_OFF,
    "claim": CLAIM,
    "exchange": EXCHANGE,
    "check_in": CHECK_IN,
    "profile": PROFILE,
    "register": REGISTER,
    "login": LOGIN,
    "adjust": ADJUST,
}
WITH_BODY = [name for name, endpoint in ENDPOINTS.items() if endpoint not in (EXCHANGE, CHECK_IN)]

VALID_BODIES = {
    IDENTIFY.path: lambda w: {"code": _code(w)},
    ENROL.path: lambda w: {
        "phone": "13900001111",
        "name": "李四",
        "birthday": "1990-05-01",
        "gender": "female",
        "marketing_consent": True,
        "referral_code": "",
    },
    PREVIEW.path: lambda w: {"member": _code(w), "receipt_no": "P-1", "amount": "128.50", "points_to_use": 100},
    PURCHASE.path: lambda w: {
        "member": _code(w),
        "receipt_no": "H-1",
        "amount": "128.50",
        "paid_at": timezone.now().isoformat(),
        "lines": [{"sku": "A1", "qty": 1, "price": "128.50"}],
        "points_to_use": 100,
        "coupon_codes": [],
    },
    REFUND.path: lambda w: {"refund_no": "RF-1", "amount": "10.00"},
    WRITE_OFF.path: lambda w: {"receipt_no": "W-1"},
    CLAIM.path: lambda w: {"store": "SH001", "receipt_no": "R-CLAIM"},
    PROFILE.path: lambda w: {"name": "新名字", "birthday": "1990-05-01", "gender": "male", "marketing_consent": True},
    REGISTER.path: lambda w: {
        "wechat_session": signing.dumps({"openid": "o-new"}, salt=WECHAT_SESSION_SALT),
        "phone": "13900002222",
        "name": "赵六",
        "birthday": "1991-02-03",
        "gender": "male",
        "marketing_consent": False,
        "referral_code": "",
    },
    LOGIN.path: lambda w: {"code": "dev-o-new"},
    ADJUST.path: lambda w: {"member_no": w.member.member_no, "points": 100, "reason": "goodwill"},
}


def send(
    world: World,
    endpoint: Endpoint,
    *,
    body: Any = None,
    raw: bytes | None = None,
    content_type: str = "application/json",
    path: str | None = None,
    client: APIClient | None = None,
    **headers: Any,
) -> Any:
    """``body`` as JSON (NaN and Infinity as the non-standard literals), or ``raw`` bytes."""
    url = (path or endpoint.path).format(coupon=world.coupon_code, benefit=world.benefit_id)
    if raw is None:
        raw = b"" if body is None else json.dumps(body).encode()
    client = client or world.clients[endpoint.client]
    return client.generic(endpoint.method, url, raw, content_type=content_type, **headers)


def assert_refused(response: Any, status: int, code: str, field: str | None = None) -> None:
    assert response.status_code == status, response.content[:500]
    problem = envelope_problem(response.status_code, response["Content-Type"], response.content)
    assert problem is None, problem
    error = response.json()["error"]
    assert error["code"] == code, error
    if field is not None:
        assert field in error["detail"], error


def _tables_intact() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass('members_member'), to_regclass('points_purchase')")
        assert None not in cursor.fetchone()


# -----------------------------------------------------------------------------
# Controls: the unmodified request succeeds, and the snapshot sees its writes
# -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(ENDPOINTS))
def test_the_valid_request_succeeds_and_the_snapshot_sees_its_writes(world, name):
    # given
    endpoint = ENDPOINTS[name]
    before = snapshot()
    # when
    response = send(world, endpoint, body=endpoint.body(world))
    # then
    assert response.status_code in (200, 201), response.content[:500]
    assert (snapshot() != before) is endpoint.writes


# -----------------------------------------------------------------------------
# One hostile field in an otherwise valid body
# -----------------------------------------------------------------------------
INVALID = (400, "invalid_input")
MALFORMED = (400, "malformed_request")

AMOUNTS = {
    "1e30": 1e30,
    "10**40": 10**40,
    "20-nines": "99999999999999999999.99",
    "negative": "-1.00",
    "zero": "0",
    "sub-cent": "0.001",
    "nan-string": "NaN",
    "infinity-string": "Infinity",
    "minus-infinity-string": "-Infinity",
    "exponent": "1e3",
    "full-width": "１２８.５０",
    "bool": True,
    "list": [],
    "object": {},
    "null": None,
    "empty": "",
    "sql": "1; DROP TABLE points_purchase",
}
POINTS = {
    "negative": -1,
    "fraction": 1.5,
    "fraction-string": "1.5",
    "nan-string": "NaN",
    "10**40": 10**40,
    "1e30": 1e30,
    "bool": True,
    "5000-digits": "9" * 5000,
}
NON_JSON_NUMBERS = {
    "nan-literal": float("nan"),
    "infinity-literal": float("inf"),
    "minus-infinity-literal": -float("inf"),
}
PAID_AT_REFUSED = {
    "year-1": "0001-01-01T00:00:00Z",
    "epoch": "1970-01-01T00:00:00Z",
    "year-2100": "2100-01-01T00:00:00Z",
}
PAID_AT_INVALID = {
    "year-1-at-plus-14": "0001-01-01T00:00:00+14:00",
    "year-9999": "9999-12-31T23:59:59Z",
    "year-9999-at-minus-12": "9999-12-31T23:59:59-12:00",
    "year-0": "0000-01-01T00:00:00Z",
    "year-99999": "99999-01-01T00:00:00Z",
    "feb-30": "2024-02-30T10:00:00Z",
    "offset-99h": "2024-01-01T00:00:00+99:00",
    "garbage": "not-a-date",
    "number": 1e30,
}
DATES = {
    "year-1": "0001-01-01",
    "year-9999": "9999-12-31",
    "year-0": "0000-01-01",
    "year-99999": "99999-01-01",
    "negative-year": "-2000-01-01",
    "feb-30": "2024-02-30",
    "month-13": "2024-13-01",
    "next-year": f"{timezone.now().year + 1}-01-01",
    "number": 19900501,
    "nan": "NaN",
}
TEXT = {
    "nul": "a\x00b",
    "surrogate": "\ud800",
    "overlong": "x" * 10000,
    "list": ["a"],
    "object": {"a": 1},
    "null": None,
}
LOOKALIKES = {
    "sql": "'; DROP TABLE members_member; --",
    "script": "<script>alert(1)</script>",
    "emoji": "😀🎉",
    "right-to-left-override": "\u202etxt",
    "full-width-digits": "１２３４５６",
}


def _cases() -> list[Any]:
    cases: list[Any] = []

    def add(endpoint: str, field: str, values: dict[str, Any], expected: tuple[int, str], *, in_detail: bool = True):
        for label, value in values.items():
            status, code = expected
            detail_field = field if in_detail and code == "invalid_input" else None
            cases.append(
                pytest.param(endpoint, field, value, status, code, detail_field, id=f"{endpoint}-{field}-{label}")
            )

    for endpoint in ("preview", "purchase", "refund"):
        add(endpoint, "amount", AMOUNTS, INVALID)
        add(endpoint, "amount", NON_JSON_NUMBERS, MALFORMED)
    for endpoint in ("preview", "purchase"):
        add(endpoint, "points_to_use", POINTS, INVALID)
        add(endpoint, "points_to_use", NON_JSON_NUMBERS, MALFORMED)
        add(endpoint, "paid_at", PAID_AT_REFUSED, (400, "invalid_paid_at"))
        add(endpoint, "paid_at", PAID_AT_INVALID, INVALID)
        add(endpoint, "member", TEXT, INVALID)
        add(endpoint, "member", LOOKALIKES, (404, "member_not_found"))
        add(endpoint, "receipt_no", {**TEXT, **LOOKALIKES, "blank": " "}, INVALID)
    # (a negative adjustment is legitimate: it debits points)
    adjust_points = {label: value for label, value in POINTS.items() if label != "negative"}
    add(
        "adjust",
        "points",
        {**adjust_points, "over-100-million": 10**8 + 1, "under-minus-100-million": -(10**8) - 1},
        INVALID,
    )
    add("adjust", "points", {"zero": 0}, (400, "invalid_points"))
    add("adjust", "points", NON_JSON_NUMBERS, MALFORMED)
    add("identify", "code", TEXT, INVALID)
    add("identify", "code", {**LOOKALIKES, "unknown-digits": "99999999"}, (404, "member_not_found"))
    for endpoint in ("enrol", "register", "profile"):
        add(endpoint, "birthday", DATES, INVALID)
        add(endpoint, "name", {**TEXT, **LOOKALIKES, "digits": "王小明2", "number": 123}, INVALID)
        add(endpoint, "gender", {**TEXT, **LOOKALIKES}, INVALID)
        add(endpoint, "marketing_consent", {**TEXT, **LOOKALIKES}, INVALID)
    add("profile", "name", {"blank": " "}, INVALID)
    for endpoint in ("enrol", "register"):
        add(endpoint, "phone", {**TEXT, "blank": " "}, INVALID)
        add(endpoint, "phone", {**LOOKALIKES, "too-short": "138"}, (400, "invalid_phone"))
        add(endpoint, "referral_code", {**TEXT, "sql": LOOKALIKES["sql"], "script": LOOKALIKES["script"]}, INVALID)
        add(endpoint, "referral_code", {"emoji": "😀", "unknown": "ZZZZZZ"}, (400, "invalid_referral_code"))
    add("register", "wechat_session", {**TEXT, "blank": " "}, INVALID)
    add(
        "register",
        "wechat_session",
        {**LOOKALIKES, "other-salt": signing.dumps({"openid": "o-x"})},
        (401, "wechat_session_invalid"),
    )
    add("login", "code", {**TEXT, "blank": " "}, INVALID)
    add("login", "code", LOOKALIKES, (401, "wechat_login_failed"))
    add("refund", "refund_no", {**TEXT, **LOOKALIKES, "blank": " "}, INVALID)
    add("write_off", "receipt_no", {**TEXT, **LOOKALIKES}, INVALID)
    add("claim", "receipt_no", {**TEXT, **LOOKALIKES, "blank": " "}, INVALID)
    add("claim", "store", {**TEXT, "blank": " "}, INVALID)
    add("claim", "store", LOOKALIKES, (404, "unknown_store"))
    add(
        "purchase",
        "coupon_codes",
        {
            "string": "ABC",
            "object": {"a": 1},
            "null": None,
            "nul": ["A\x00B"],
            "surrogate": ["\ud800"],
            "overlong": ["C" * 65],
            "21-codes": ["C"] * 21,
        },
        INVALID,
    )
    add("purchase", "coupon_codes", {"sql": [LOOKALIKES["sql"]]}, (404, "coupon_not_found"), in_detail=False)
    add(
        "purchase",
        "lines",
        {
            "nul-in-value": [{"sku": "a\x00"}],
            "nul-in-key": [{"\x00": 1}],
            "surrogate-in-value": [{"sku": "\ud800"}],
            "surrogate-nested": [{"sku": {"x": ["\udfff"]}}],
            "not-objects": ["sku"],
            "501-lines": [{}] * 501,
            "object": {"sku": "A1"},
        },
        INVALID,
    )
    add("purchase", "lines", {"40-deep": [json.loads("[" * 40 + "]" * 40)]}, MALFORMED)
    add("adjust", "member_no", {**TEXT, "blank": " "}, INVALID)
    add("adjust", "reason", {**TEXT, "blank": " "}, INVALID)
    return cases


@pytest.mark.parametrize(("endpoint", "field", "value", "status", "code", "detail_field"), _cases())
def test_hostile_field_is_refused_with_a_stable_code_and_nothing_written(
    world, endpoint, field, value, status, code, detail_field
):
    # given an otherwise valid request
    body = ENDPOINTS[endpoint].body(world)
    body[field] = value
    before = snapshot()
    # when
    response = send(world, ENDPOINTS[endpoint], body=body)
    # then
    assert_refused(response, status, code, detail_field)
    assert snapshot() == before
    _tables_intact()


# -----------------------------------------------------------------------------
# Hostile bodies
# -----------------------------------------------------------------------------
UNSUPPORTED = (415, "unsupported_media_type")
BODIES: dict[str, tuple[bytes, str, tuple[int, str]]] = {
    "ten-mb-json": (b'{"code": "' + b"1" * TEN_MB + b'"}', "application/json", (413, "request_too_large")),
    "ten-mb-form": (b"code=" + b"1" * TEN_MB, "application/x-www-form-urlencoded", UNSUPPORTED),
    "text-plain": (b"code=1", "text/plain", UNSUPPORTED),
    "xml": (b"<code>1</code>", "application/xml", UNSUPPORTED),
    "form": (b"code=1", "application/x-www-form-urlencoded", UNSUPPORTED),
    "multipart": (
        b'--XX\r\nContent-Disposition: form-data; name="code"\r\n\r\n1\r\n--XX--\r\n',
        "multipart/form-data; boundary=XX",
        UNSUPPORTED,
    ),
    "multipart-without-boundary": (b"garbage", "multipart/form-data", UNSUPPORTED),
    "no-content-type": (b'{"code": "1"}', "", UNSUPPORTED),
    "invalid-json": (b"{", "application/json", MALFORMED),
    "invalid-utf8": (b'{"code": "\xff\xfe"}', "application/json", MALFORMED),
    "nan-literal": (b'{"code": NaN}', "application/json", MALFORMED),
    "100000-deep-array": (b"[" * 100_000 + b"]" * 100_000, "application/json", MALFORMED),
    "100000-deep-object": (b'{"a":' * 100_000 + b"1" + b"}" * 100_000, "application/json", MALFORMED),
    "33-deep": (b'{"a":' * 33 + b"1" + b"}" * 33, "application/json", MALFORMED),
    "array": (b"[]", "application/json", INVALID),
    "string": (b'"code"', "application/json", INVALID),
    "null": (b"null", "application/json", INVALID),
}


@pytest.mark.parametrize("endpoint", WITH_BODY)
@pytest.mark.parametrize("case", list(BODIES))
def test_hostile_body_is_refused_with_a_stable_code_and_nothing_written(world, endpoint, case):
    # given
    raw, content_type, (status, code) = BODIES[case]
    before = snapshot()
    # when
    response = send(world, ENDPOINTS[endpoint], raw=raw, content_type=content_type)
    # then
    assert_refused(response, status, code)
    assert snapshot() == before


@pytest.mark.parametrize("endpoint", [name for name in WITH_BODY if name not in ("write_off", "profile")])
def test_empty_body_is_refused_where_fields_are_required(world, endpoint):
    # given (write-off and profile have no required field: {} is a valid request there)
    before = snapshot()
    # when
    response = send(world, ENDPOINTS[endpoint], raw=b"")
    # then
    assert_refused(response, 400, "invalid_input")
    assert snapshot() == before


# -----------------------------------------------------------------------------
# Hostile headers
# -----------------------------------------------------------------------------
IDEMPOTENCY_KEYS = {"nul": "a\x00b", "latin-1": "clé", "129-chars": "k" * 129, "empty": "", "emoji": "🔑"}


@pytest.mark.parametrize("endpoint", [name for name, e in ENDPOINTS.items() if e.idempotent])
@pytest.mark.parametrize("key", list(IDEMPOTENCY_KEYS))
def test_hostile_idempotency_key_is_refused_and_nothing_written(world, endpoint, key):
    # given
    before = snapshot()
    # when
    response = send(
        world,
        ENDPOINTS[endpoint],
        body=ENDPOINTS[endpoint].body(world),
        HTTP_IDEMPOTENCY_KEY=IDEMPOTENCY_KEYS[key],
    )
    # then
    assert_refused(response, 400, "invalid_idempotency_key")
    assert snapshot() == before


CREDENTIALS = {
    "nul": "a\x00b.c",
    "latin-1": "é.é",
    "10000-chars": "x" * 10000,
    "sql": "' OR 1=1 --.x",
    "emoji": "🔑.🔑",
}


@pytest.mark.parametrize("endpoint", [name for name, e in ENDPOINTS.items() if e.client in ("terminal", "member")])
@pytest.mark.parametrize("credentials", list(CREDENTIALS))
def test_hostile_credentials_are_refused_and_nothing_written(world, endpoint, credentials):
    # given a client without the fixture's credentials
    scheme = "Api-Key" if ENDPOINTS[endpoint].client == "terminal" else "Bearer"
    before = snapshot()
    # when
    response = send(
        world,
        ENDPOINTS[endpoint],
        body=ENDPOINTS[endpoint].body(world),
        client=APIClient(),
        HTTP_AUTHORIZATION=f"{scheme} {CREDENTIALS[credentials]}",
    )
    # then
    assert_refused(response, 401, "authentication_failed")
    assert snapshot() == before


# -----------------------------------------------------------------------------
# Hostile path values
# -----------------------------------------------------------------------------
PATHS = {
    "refund-nul": (REFUND, "/api/v1/terminal/purchases/R%00X/refunds", (404, "purchase_not_found")),
    "refund-emoji": (REFUND, "/api/v1/terminal/purchases/%F0%9F%98%80/refunds", (404, "purchase_not_found")),
    "refund-sql": (REFUND, "/api/v1/terminal/purchases/'%20OR%201=1--/refunds", (404, "purchase_not_found")),
    "refund-full-width": (REFUND, "/api/v1/terminal/purchases/%EF%BC%B2-BASE/refunds", (404, "purchase_not_found")),
    "refund-5000-chars": (REFUND, "/api/v1/terminal/purchases/" + "R" * 5000 + "/refunds", (404, "purchase_not_found")),
    # Not cut down to 64 characters, which would be another receipt's number.
    "refund-longer-than-a-receipt": (
        REFUND,
        "/api/v1/terminal/purchases/R-BASE" + "X" * 64 + "/refunds",
        (404, "purchase_not_found"),
    ),
    "refund-invalid-utf8": (REFUND, "/api/v1/terminal/purchases/%FF%FE/refunds", (404, "purchase_not_found")),
    "write-off-nul": (WRITE_OFF, "/api/v1/terminal/coupons/AB%00CD/write-off", (404, "coupon_not_found")),
    "write-off-emoji": (WRITE_OFF, "/api/v1/terminal/coupons/%F0%9F%98%80/write-off", (404, "coupon_not_found")),
    "write-off-sql": (WRITE_OFF, "/api/v1/terminal/coupons/'%20OR%201=1--/write-off", (404, "coupon_not_found")),
    "write-off-5000-chars": (
        WRITE_OFF,
        "/api/v1/terminal/coupons/" + "C" * 5000 + "/write-off",
        (404, "coupon_not_found"),
    ),
    "write-off-invalid-utf8": (WRITE_OFF, "/api/v1/terminal/coupons/%FF/write-off", (404, "coupon_not_found")),
    "exchange-23-digit-id": (EXCHANGE, "/api/v1/benefits/99999999999999999999999/exchange", (404, "benefit_not_found")),
    "exchange-id-0": (EXCHANGE, "/api/v1/benefits/0/exchange", (404, "benefit_not_found")),
    "exchange-negative-id": (EXCHANGE, "/api/v1/benefits/-1/exchange", (404, "not_found")),
    "exchange-full-width-id": (EXCHANGE, "/api/v1/benefits/%EF%BC%91/exchange", (404, "not_found")),
}


@pytest.mark.parametrize("case", list(PATHS))
def test_hostile_path_value_is_not_found_and_nothing_written(world, case):
    # given
    endpoint, path, (status, code) = PATHS[case]
    before = snapshot()
    # when
    response = send(world, endpoint, body=endpoint.body(world), path=path)
    # then
    assert_refused(response, status, code)
    assert snapshot() == before


# -----------------------------------------------------------------------------
# Reads with hostile query strings (a clear error, not a 500 or an HTML page)
# -----------------------------------------------------------------------------
QUERIES = {
    "ledger-1200-fields": ("member", "/api/v1/me/ledger?" + "&".join(f"f{i}=1" for i in range(1200)), MALFORMED),
    "coupons-1200-fields": ("member", "/api/v1/me/coupons?" + "&".join(f"f{i}=1" for i in range(1200)), MALFORMED),
    "ledger-year-0": ("member", "/api/v1/me/ledger?date_from=0000-01-01", INVALID),
    "ledger-nul-kind": ("member", "/api/v1/me/ledger?kind=%00", INVALID),
    "coupons-nul-status": ("member", "/api/v1/me/coupons?status=%00", INVALID),
    "coupons-page-size-nan": ("member", "/api/v1/me/coupons?page_size=NaN", INVALID),
    "ledger-page-23-digits": ("member", "/api/v1/me/ledger?page=99999999999999999999999", (404, "not_found")),
    "report-month-9999-12": ("operator", "/api/v1/reports/monthly?month=9999-12", INVALID),
    "report-next-year": ("operator", f"/api/v1/reports/monthly?month={timezone.now().year + 1}-01", INVALID),
    "report-month-nul": ("operator", "/api/v1/reports/monthly?month=%00", INVALID),
    "report-store-nul": ("operator", "/api/v1/reports/monthly?month=2025-01&store=%00", INVALID),
    "report-store-5000-chars": ("operator", "/api/v1/reports/monthly?month=2025-01&store=" + "x" * 5000, INVALID),
}


@pytest.mark.parametrize("case", list(QUERIES))
def test_hostile_query_is_a_clear_error(world, case):
    # given
    client, url, (status, code) = QUERIES[case]
    # when
    response = world.clients[client].get(url)
    # then
    assert_refused(response, status, code)


# -----------------------------------------------------------------------------
# The decisions, shown on values that are accepted
# -----------------------------------------------------------------------------
def test_full_width_phone_digits_find_the_member_who_has_that_phone(world):
    # given a member with the phone 13812345678 (conftest)
    members = Member.objects.count()
    # when the clerk types it with a Chinese IME's full-width digits
    enrol = send(world, ENROL, body={"phone": "１３８１２３４５６７８"})
    identify = send(world, IDENTIFY, body={"code": "１３８ １２３４ ５６７８"})
    # then both find that member; nobody new is enrolled
    assert enrol.status_code == 200, enrol.content
    assert enrol.json()["member_no"] == world.member.member_no
    assert identify.status_code == 200, identify.content
    assert identify.json()["member_no"] == world.member.member_no
    assert identify.json()["identified_by"] == "phone"
    assert Member.objects.count() == members


def test_real_names_with_apostrophes_hyphens_and_middle_dots_are_kept_exactly(world):
    for name in ("O'Neil-Smith", "阿依古丽·买买提", "José Müller", "J. R. Smith"):
        # when
        response = send(world, PROFILE, body={"name": name})
        # then
        assert response.status_code == 200, response.content
        world.member.refresh_from_db()
        assert world.member.name == name


def test_sql_in_free_text_is_stored_as_text_and_never_executed(world):
    # given
    reason = "'; DROP TABLE points_pointsentry; -- <script>alert(1)</script>"
    # when
    response = send(world, ADJUST, body={"member_no": world.member.member_no, "points": 100, "reason": reason})
    # then
    assert response.status_code == 201, response.content
    assert PointsAdjustment.objects.get().reason == reason
    assert PointsEntry.objects.filter(kind="adjust", points=100).count() == 1
    _tables_intact()
