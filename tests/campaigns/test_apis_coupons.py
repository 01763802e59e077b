"""The coupon endpoints of the client contract: catalogue, exchange, my coupons,
write-off at the till, coupons at identify and in purchases."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from urllib.parse import parse_qs, urlparse

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from campaigns.models import Benefit, Coupon, CouponEvent
from loyalty.models import IdempotencyKey
from members.selectors import member_code_current
from members.services import member_freeze, terminal_create
from points.models import PointsEntry, Purchase
from tests.campaigns.factories import BenefitFactory, coupon_give, coupon_snapshot, coupon_state, issued_count
from tests.points.factories import MemberFactory, account_of, ledger_snapshot, points_give

pytestmark = pytest.mark.django_db

BENEFITS = "/api/v1/benefits"
MY_COUPONS = "/api/v1/me/coupons"
IDENTIFY = "/api/v1/terminal/identify"
PURCHASES = "/api/v1/terminal/purchases"


def _exchange(client, benefit, **headers):
    return client.post(f"{BENEFITS}/{benefit.pk}/exchange", format="json", **headers)


def _write_off(client, code, receipt_no="R-1", **headers):
    return client.post(
        f"/api/v1/terminal/coupons/{code}/write-off", {"receipt_no": receipt_no}, format="json", **headers
    )


def _error(response):
    return response.json()["error"]


def _client_of(key: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {key}")
    return client


# -----------------------------------------------------------------------------
# Catalogue
# -----------------------------------------------------------------------------
def test_catalogue_shows_each_benefit_with_why_it_is_not_available(member_client, member):
    # given 500 points and a catalogue
    now = timezone.now()
    points_give(member, 500, at=now - timedelta(minutes=1))
    BenefitFactory(name="A 可兑换", points_price=100, total_stock=10)
    BenefitFactory(name="B 金卡专享", points_price=120, eligible_tiers=["gold", "platinum"])
    sold_out = BenefitFactory(name="C 已抢光", points_price=150, total_stock=1)
    coupon_give(sold_out, MemberFactory())
    limited = BenefitFactory(name="D 每人一张", points_price=200, per_member_limit=1)
    coupon_give(limited, member)
    BenefitFactory(name="E 积分不足", points_price=1000)
    BenefitFactory(name="not for points", points_price=0)
    BenefitFactory(name="switched off", is_active=False)
    BenefitFactory(name="over", active_until=now - timedelta(seconds=1))
    # when
    response = member_client.get(BENEFITS)
    # then
    assert response.status_code == 200, response.content
    rows = [
        (
            row["name"],
            row["points_price"],
            row["stock_left"],
            row["available"],
            row["unavailable_reason"],
            row["unavailable_text"],
        )
        for row in response.json()
    ]
    assert rows == [
        ("A 可兑换", 100, 10, True, None, None),
        ("B 金卡专享", 120, None, False, "tier", "not for your tier"),
        ("C 已抢光", 150, 0, False, "out_of_stock", "out of stock"),
        ("D 每人一张", 200, None, False, "limit", "per-member limit reached"),
        ("E 积分不足", 1000, None, False, "points", "not enough points"),
    ]
    first = response.json()[0]
    assert (first["kind"], first["value"], first["min_spend"], first["cash_price"]) == (
        "cash_off",
        "10.00",
        "0.00",
        "0.00",
    )


def test_catalogue_needs_a_member_token(anon_client):
    response = anon_client.get(BENEFITS)
    assert response.status_code == 401
    assert _error(response)["code"] == "not_authenticated"


# -----------------------------------------------------------------------------
# Exchange
# -----------------------------------------------------------------------------
def test_exchange_returns_the_coupon_with_its_qr_and_a_retry_replays_it(member_client, member):
    # given 500 points and a benefit of 100
    points_give(member, 500, at=timezone.now() - timedelta(minutes=1))
    benefit = BenefitFactory(name="咖啡券", points_price=100, total_stock=10)
    # when the mini-program exchanges, then retries with the same key
    first = _exchange(member_client, benefit, HTTP_IDEMPOTENCY_KEY="ex-1")
    second = _exchange(member_client, benefit, HTTP_IDEMPOTENCY_KEY="ex-1")
    # then one coupon, paid once, and the retry got the same bytes
    assert first.status_code == 201, first.content
    assert second.status_code == 201
    assert second.content == first.content
    assert second["Idempotent-Replayed"] == "true"
    coupon = Coupon.objects.get()
    body = first.json()
    assert body["qr_svg"].startswith("<svg")
    assert {key: value for key, value in body.items() if key != "qr_svg"} == {
        "code": coupon.code,
        "benefit_id": benefit.pk,
        "name": "咖啡券",
        "kind": "cash_off",
        "value": "10.00",
        "min_spend": "0.00",
        "cash_price": "0.00",
        "status": "issued",
        "source": "exchange",
        "valid_from": body["issued_at"],
        "valid_until": timezone.localtime(coupon.valid_until).isoformat(),
        "issued_at": timezone.localtime(coupon.issued_at).isoformat(),
        "written_off_at": None,
        "written_off_store": None,
        "written_off_receipt": "",
    }
    assert account_of(member) == (400, 0, 0)
    assert list(PointsEntry.objects.filter(member=member, kind="redeem").values_list("points", "source")) == [
        (-100, "benefit")
    ]
    assert issued_count(benefit) == 1
    assert IdempotencyKey.objects.count() == 1


def test_exchange_with_too_few_points_is_409_and_changes_nothing(member_client, member):
    # given 50 points and a benefit of 100
    points_give(member, 50, at=timezone.now() - timedelta(minutes=1))
    benefit = BenefitFactory(points_price=100, total_stock=10)
    before = (coupon_snapshot(), ledger_snapshot())
    # when
    response = _exchange(member_client, benefit, HTTP_IDEMPOTENCY_KEY="ex-1")
    # then
    assert response.status_code == 409
    assert _error(response) == {
        "code": "insufficient_points",
        "message": "Not enough points: 50 available, 100 requested.",
        "detail": {},
    }
    assert (coupon_snapshot(), ledger_snapshot()) == before
    assert IdempotencyKey.objects.count() == 0  # a failure keeps no key: a retry runs again


def test_exchange_of_an_unknown_or_inactive_benefit_is_404(member_client, member):
    # given
    points_give(member, 500, at=timezone.now() - timedelta(minutes=1))
    inactive = BenefitFactory(is_active=False)
    # when
    unknown = member_client.post(f"{BENEFITS}/999999/exchange", format="json")
    switched_off = _exchange(member_client, inactive)
    # then
    assert (unknown.status_code, _error(unknown)["code"]) == (404, "benefit_not_found")
    assert (switched_off.status_code, _error(switched_off)["code"]) == (404, "benefit_not_found")
    assert Coupon.objects.count() == 0


def test_exchange_out_of_stock_and_over_the_limit_are_409(member_client, member):
    # given
    points_give(member, 500, at=timezone.now() - timedelta(minutes=1))
    sold_out = BenefitFactory(total_stock=0)
    limited = BenefitFactory(per_member_limit=1)
    assert _exchange(member_client, limited).status_code == 201
    # when
    out = _exchange(member_client, sold_out)
    over = _exchange(member_client, limited)
    # then
    assert (out.status_code, _error(out)["code"]) == (409, "out_of_stock")
    assert (over.status_code, _error(over)["code"], _error(over)["message"]) == (
        409,
        "member_limit_reached",
        "You already have the most coupons of this benefit allowed per member (1).",
    )
    assert account_of(member) == (400, 0, 0)


# -----------------------------------------------------------------------------
# My coupons
# -----------------------------------------------------------------------------
def test_my_coupons_filtered_by_status_newest_first_paginated(member_client, member, store, terminal):
    # given three issued coupons, one written off, and another member's
    now = timezone.now()
    benefit = BenefitFactory()
    oldest, middle, newest = (coupon_give(benefit, member, at=now - timedelta(days=days)) for days in (3, 2, 1))
    used = coupon_give(benefit, member, at=now - timedelta(days=4))
    from campaigns.services.coupons import coupon_write_off

    coupon_write_off(code=used.code, store=store, terminal=terminal, receipt_no="R-1")
    coupon_give(benefit, MemberFactory(), at=now)
    # when
    page_1 = member_client.get(MY_COUPONS, {"status": "issued", "page_size": 2})
    page_2 = member_client.get(MY_COUPONS, {"status": "issued", "page_size": 2, "page": 2})
    written_off = member_client.get(MY_COUPONS, {"status": "written_off"})
    # then
    assert page_1.status_code == 200, page_1.content
    body_1, body_2 = page_1.json(), page_2.json()
    assert (body_1["count"], [c["code"] for c in body_1["results"]]) == (3, [newest.code, middle.code])
    assert body_1["previous"] is None
    assert parse_qs(urlparse(body_1["next"]).query) == {"page": ["2"], "page_size": ["2"], "status": ["issued"]}
    assert ([c["code"] for c in body_2["results"]], body_2["next"]) == ([oldest.code], None)
    assert all(c["qr_svg"].startswith("<svg") for c in body_1["results"])
    (row,) = written_off.json()["results"]
    assert (row["code"], row["status"], row["written_off_store"], row["written_off_receipt"]) == (
        used.code,
        "written_off",
        "上海南京西路店",
        "R-1",
    )
    assert "qr_svg" not in row


def test_my_coupons_refuses_an_unknown_status(member_client):
    response = member_client.get(MY_COUPONS, {"status": "lost"})
    assert response.status_code == 400
    assert (_error(response)["code"], list(_error(response)["detail"])) == ("invalid_input", ["status"])


# -----------------------------------------------------------------------------
# Write-off at the till
# -----------------------------------------------------------------------------
def test_write_off_then_a_second_try_is_409_naming_the_first(terminal_client, terminal, store, member):
    # given an issued coupon, and a second till in the same store
    coupon = coupon_give(BenefitFactory(name="满100减10"), member)
    _, other_key = terminal_create(store=store, name="till-2")
    # when till-1 writes it off, then till-2 tries
    first = _write_off(terminal_client, coupon.code, "R-1")
    second = _write_off(_client_of(other_key), coupon.code, "R-2")
    # then
    assert first.status_code == 200, first.content
    body = first.json()
    assert (body["code"], body["status"], body["written_off_store"], body["written_off_receipt"]) == (
        coupon.code,
        "written_off",
        "上海南京西路店",
        "R-1",
    )
    assert "qr_svg" not in body
    assert second.status_code == 409
    written_off_at = Coupon.objects.get(pk=coupon.pk).written_off_at
    error = _error(second)
    assert error["code"] == "coupon_already_written_off"
    assert error["detail"] == {
        "store": "SH001",
        "terminal": terminal.pk,
        "receipt_no": "R-1",
        "written_off_at": written_off_at.isoformat(),
    }
    local = timezone.localtime(written_off_at).strftime("%Y-%m-%d %H:%M:%S")
    assert (
        error["message"] == f"This coupon was already used at 上海南京西路店 (terminal till-1, receipt R-1) on {local}."
    )
    assert coupon_state(coupon) == ("written_off", written_off_at, store.pk, terminal.pk, "R-1", None)
    assert list(CouponEvent.objects.filter(coupon=coupon).values_list("kind", flat=True).order_by("pk")) == [
        "issued",
        "written_off",
    ]


def test_write_off_replays_with_the_same_idempotency_key(terminal_client, member):
    # given
    coupon = coupon_give(BenefitFactory(), member)
    # when the POS retries after a timeout
    first = _write_off(terminal_client, coupon.code, "R-1", HTTP_IDEMPOTENCY_KEY="wo-1")
    second = _write_off(terminal_client, coupon.code, "R-1", HTTP_IDEMPOTENCY_KEY="wo-1")
    # then the retry gets the success again, not a conflict
    assert (first.status_code, second.status_code) == (200, 200)
    assert second.content == first.content
    assert CouponEvent.objects.filter(coupon=coupon, kind="written_off").count() == 1


def test_write_off_at_a_store_the_benefit_is_not_for_is_403(terminal_client, member, other_store):
    # given a Beijing-only coupon at a Shanghai till
    coupon = coupon_give(BenefitFactory(stores=[other_store]), member)
    before = coupon_snapshot()
    # when
    response = _write_off(terminal_client, coupon.code)
    # then
    assert response.status_code == 403
    assert _error(response) == {
        "code": "coupon_wrong_store",
        "message": "This coupon cannot be used at this store.",
        "detail": {"store": "SH001"},
    }
    assert coupon_snapshot() == before


def test_write_off_normalises_a_code_typed_in_lower_case_with_dashes(terminal_client, member):
    # given
    coupon = coupon_give(BenefitFactory(), member)
    typed = f"{coupon.code[:4]}-{coupon.code[4:8]}-{coupon.code[8:]}".lower()
    # when
    response = _write_off(terminal_client, typed)
    # then
    assert response.status_code == 200, response.content
    assert response.json()["code"] == coupon.code
    assert coupon_state(coupon)[0] == "written_off"


@pytest.mark.parametrize(
    ("situation", "status", "code"),
    [("unknown", 404, "coupon_not_found"), ("expired", 410, "coupon_expired"), ("void", 410, "coupon_void")],
)
def test_write_off_refusals_keep_their_codes(terminal_client, member, situation, status, code):
    # given
    from campaigns.services.coupons import coupon_void

    coupon = coupon_give(BenefitFactory(), member, at=timezone.now() - timedelta(days=31))
    if situation == "void":
        coupon = coupon_give(BenefitFactory(), member)
        coupon_void(coupon=coupon, by_user=None, reason="complaint")
    before = coupon_snapshot()
    # when
    response = _write_off(terminal_client, "NOSUCHCODE22" if situation == "unknown" else coupon.code)
    # then
    assert (response.status_code, _error(response)["code"]) == (status, code)
    assert coupon_snapshot() == before


# -----------------------------------------------------------------------------
# Coupons at identify and in purchases
# -----------------------------------------------------------------------------
def test_identify_lists_the_coupons_usable_at_this_store_in_two_queries(
    terminal_client, member, store, other_store, terminal, django_assert_num_queries
):
    # given coupons usable anywhere, here, here and in Beijing, only in Beijing,
    # used, expired, not yet valid, and another member's
    now = timezone.now()
    anywhere = coupon_give(BenefitFactory(name="通用券", valid_days=10), member)
    here = coupon_give(BenefitFactory(name="本店券", valid_days=20, stores=[store]), member)
    both = coupon_give(BenefitFactory(name="京沪券", valid_days=30, stores=[store, other_store]), member)
    coupon_give(BenefitFactory(name="北京券", stores=[other_store]), member)
    used = coupon_give(BenefitFactory(name="已用券"), member)
    from campaigns.services.coupons import coupon_write_off

    coupon_write_off(code=used.code, store=store, terminal=terminal)
    coupon_give(BenefitFactory(name="过期券", valid_days=1), member, at=now - timedelta(days=2))
    later = BenefitFactory(
        name="未生效券",
        validity=Benefit.Validity.FIXED,
        valid_from=now + timedelta(days=1),
        valid_until=now + timedelta(days=9),
    )
    coupon_give(later, member)
    coupon_give(BenefitFactory(name="他人券"), MemberFactory())
    code, _ = member_code_current(member=member)
    # when (the key; the member with its points and coupons)
    with django_assert_num_queries(2):
        response = terminal_client.post(IDENTIFY, {"code": code}, format="json")
    # then
    assert response.status_code == 200, response.content
    coupons = response.json()["coupons"]
    assert [(c["code"], c["name"]) for c in coupons] == [
        (anywhere.code, "通用券"),
        (here.code, "本店券"),
        (both.code, "京沪券"),
    ]
    assert {key: value for key, value in coupons[0].items() if key != "valid_until"} == {
        "code": anywhere.code,
        "name": "通用券",
        "kind": "cash_off",
        "value": "10.00",
        "min_spend": "0.00",
        "cash_price": "0.00",
    }
    assert coupons[0]["valid_until"] == timezone.localtime(anywhere.valid_until).isoformat()


def test_identify_of_a_frozen_member_lists_no_coupons(terminal_client, member):
    # given
    coupon_give(BenefitFactory(), member)
    member_freeze(member=member, by_user=None, reason="fraud check")
    # when
    response = terminal_client.post(IDENTIFY, {"code": member.member_no}, format="json")
    # then
    assert response.status_code == 200
    assert (response.json()["status"], response.json()["coupons"]) == ("frozen", [])


def test_purchase_with_coupon_codes_returns_the_coupons_written_off(terminal_client, member, store, terminal):
    # given a ¥20-off coupon for bills of ¥100
    benefit = BenefitFactory(name="满100减20", value=Decimal("20.00"), min_spend=Decimal("100.00"))
    coupon = coupon_give(benefit, member)
    code, _ = member_code_current(member=member)
    # when
    response = terminal_client.post(
        PURCHASES,
        {"member": code, "receipt_no": "R-1", "amount": "128.50", "coupon_codes": [coupon.code.lower()]},
        format="json",
    )
    # then
    assert response.status_code == 201, response.content
    body = response.json()
    (row,) = body["coupons_written_off"]
    assert (row["code"], row["name"], row["kind"]) == (coupon.code, "满100减20", "cash_off")
    # Money compared as Decimal: this list is rendered untyped (see the report on its JSON type).
    assert (Decimal(str(row["value"])), Decimal(str(row["cash_price"]))) == (Decimal("20.00"), Decimal("0.00"))
    assert (body["points_earned"], body["balance"]) == (128, 128)
    purchase = Purchase.objects.get()
    assert coupon_state(coupon) == ("written_off", coupon_state(coupon)[1], store.pk, terminal.pk, "R-1", purchase.pk)


def test_purchase_with_coupons_by_member_number_is_403_and_records_nothing(terminal_client, member):
    # given
    coupon = coupon_give(BenefitFactory(), member)
    before = (coupon_snapshot(), ledger_snapshot())
    # when
    response = terminal_client.post(
        PURCHASES,
        {"member": member.member_no, "receipt_no": "R-1", "amount": "100.00", "coupon_codes": [coupon.code]},
        format="json",
    )
    # then
    assert response.status_code == 403
    assert _error(response)["code"] == "member_code_required"
    assert (coupon_snapshot(), ledger_snapshot()) == before
    assert Purchase.objects.count() == 0
