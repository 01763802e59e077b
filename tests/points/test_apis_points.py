"""The points API as outside clients use it: terminal purchases, previews and
refunds, idempotency, the member's ledger, check-in, claims and summary, and
the operator's adjustments. Every refusal is checked to have written nothing."""

from __future__ import annotations

from datetime import datetime, time, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.utils import timezone
from rest_framework.test import APIClient

from loyalty.models import IdempotencyKey
from members.models import Member
from members.selectors import IdentifiedMember, member_code_current
from members.services import member_enrol, member_token_issue, terminal_create
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
from points.services import Refs, points_credit, points_debit, purchase_record

pytestmark = pytest.mark.django_db

PURCHASES = "/api/v1/terminal/purchases"
PREVIEW = "/api/v1/terminal/purchases/preview"
LEDGER = "/api/v1/me/ledger"
CHECK_IN = "/api/v1/me/check-in"
CLAIMS = "/api/v1/me/claims"
ME = "/api/v1/me"
ADJUSTMENTS = "/api/v1/operator/adjustments"
Kind = PointsEntry.Kind
Source = PointsEntry.Source


def _refunds(receipt_no: str) -> str:
    return f"/api/v1/terminal/purchases/{receipt_no}/refunds"


def _approve(pk: int) -> str:
    return f"/api/v1/operator/adjustments/{pk}/approve"


def _error(response: Any) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "detail"}
    return body["error"]


def _snapshot() -> tuple[Any, ...]:
    """Everything a points request may write."""
    return (
        Purchase.objects.count(),
        Refund.objects.count(),
        PointsEntry.objects.count(),
        PointsAllocation.objects.count(),
        PointsAdjustment.objects.count(),
        CheckIn.objects.count(),
        IdempotencyKey.objects.count(),
        list(PointsAccount.objects.order_by("pk").values_list("pk", "balance", "pending", "debt")),
        list(PointsLot.objects.order_by("pk").values_list("pk", "remaining", "pending_until")),
        list(Purchase.objects.order_by("pk").values_list("pk", "refunded_amount", "member_id")),
        list(PointsAdjustment.objects.order_by("pk").values_list("pk", "status")),
    )


def _give(member: Member, points: int) -> None:
    points_credit(member=member, points=points, kind=Kind.BONUS, refs=Refs(source=Source.CAMPAIGN))


def _balance(member: Member) -> int:
    return PointsAccount.objects.get(member=member).balance


def _code(member: Member, at: datetime | None = None) -> str:
    return member_code_current(member=member, at=at)[0]


def _buy(client: APIClient, **body: Any) -> Any:
    return client.post(PURCHASES, body, format="json")


@pytest.fixture
def other_terminal_client(other_store: Any) -> APIClient:
    _, key = terminal_create(store=other_store, name="till-1")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {key}")
    return client


@pytest.fixture
def second_terminal_client(store: Any) -> APIClient:
    _, key = terminal_create(store=store, name="till-2")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {key}")
    return client


# -----------------------------------------------------------------------------
# POST /terminal/purchases
# -----------------------------------------------------------------------------
def test_purchase_by_member_number_answers_the_whole_result(terminal_client, member):
    # when
    response = _buy(terminal_client, member=member.member_no, receipt_no="R-1", amount="128.50")
    # then
    assert response.status_code == 201, response.content
    assert response.json() == {
        "receipt_no": "R-1",
        "member_no": member.member_no,
        "amount": "128.50",
        "points_earned": 128,
        "points_pending": 0,
        "points_used": 0,
        "cash_paid_by_points": "0.00",
        "amount_due": "128.50",
        "coupons_written_off": [],
        "balance": 128,
        "spendable": 128,
        "tier": {"code": "silver", "name": "银卡 Silver"},
        "tier_changed": False,
        "offline": False,
    }
    purchase = Purchase.objects.get()
    assert (purchase.receipt_no, purchase.amount, purchase.member_id, purchase.points_earned) == (
        "R-1",
        Decimal("128.50"),
        member.pk,
        128,
    )


def test_purchase_with_the_member_code_pays_with_points(terminal_client, member):
    # given 1000 points
    _give(member, 1000)
    # when ¥3.50 of a ¥20.00 bill is paid with 350 points
    response = _buy(terminal_client, member=_code(member), receipt_no="R-1", amount="20.00", points_to_use=350)
    # then
    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["points_used"], body["cash_paid_by_points"], body["amount_due"]) == (350, "3.50", "16.50")
    assert (body["points_earned"], body["balance"], body["spendable"]) == (16, 1000 - 350 + 16, 666)
    assert list(PointsEntry.objects.order_by("pk").values_list("kind", "points", "balance_after")) == [
        ("bonus", 1000, 1000),
        ("redeem", -350, 650),
        ("earn", 16, 666),
    ]


def test_purchase_without_a_member_records_the_receipt_only(terminal_client):
    # when
    response = _buy(terminal_client, member="", receipt_no="R-1", amount="88.00")
    # then
    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["member_no"], body["points_earned"], body["balance"], body["tier"]) == (None, 0, 0, None)
    assert Purchase.objects.get().member_id is None
    assert PointsEntry.objects.count() == 0


def test_the_same_receipt_number_may_be_used_by_another_store(terminal_client, other_terminal_client, member):
    # given
    assert _buy(terminal_client, member=member.member_no, receipt_no="R-1", amount="10.00").status_code == 201
    # when
    response = _buy(other_terminal_client, member=member.member_no, receipt_no="R-1", amount="10.00")
    # then
    assert response.status_code == 201, response.content
    assert response.json()["balance"] == 20
    assert Purchase.objects.filter(receipt_no="R-1").count() == 2


@pytest.mark.parametrize(
    "amount",
    [
        "-5.00",
        "0",
        "0.00",
        "0.001",
        "1.005",
        "NaN",
        "Infinity",
        "1000000.01",
        "99999999999.99",
        "1e30",
        "abc",
        "",
        None,
    ],
)
def test_purchase_with_an_invalid_amount_is_refused(terminal_client, member, amount):
    # given
    before = _snapshot()
    # when
    response = _buy(terminal_client, member=member.member_no, receipt_no="R-1", amount=amount)
    # then
    assert response.status_code == 400, response.content
    error = _error(response)
    assert error["code"] == "invalid_input"
    assert set(error["detail"]) == {"amount"}
    assert _snapshot() == before


def test_an_invalid_amount_says_why(terminal_client, member):
    # when
    response = _buy(terminal_client, member=member.member_no, receipt_no="R-1", amount="1.005")
    # then
    assert _error(response) == {
        "code": "invalid_input",
        "message": "The request contains invalid values.",
        "detail": {"amount": ["Ensure that there are no more than 2 decimal places."]},
    }


@pytest.mark.parametrize(
    "receipt_no", ["", "   ", "has space", "-starts-with-dash", "收据-1", "R;1", "R\n1", "R" * 65, None]
)
def test_purchase_with_an_invalid_receipt_number_is_refused(terminal_client, member, receipt_no):
    # given
    before = _snapshot()
    # when
    response = _buy(terminal_client, member=member.member_no, receipt_no=receipt_no, amount="10.00")
    # then
    assert response.status_code == 400, response.content
    error = _error(response)
    assert (error["code"], set(error["detail"])) == ("invalid_input", {"receipt_no"})
    assert _snapshot() == before


@pytest.mark.parametrize("points_to_use", [-1, 1.5, "2.5", "many", 10**9 + 1])
def test_purchase_with_invalid_points_to_use_is_refused(terminal_client, member, points_to_use):
    # given a member with points, identified by their code
    _give(member, 1000)
    before = _snapshot()
    # when
    response = _buy(
        terminal_client, member=_code(member), receipt_no="R-1", amount="100.00", points_to_use=points_to_use
    )
    # then
    assert response.status_code == 400, response.content
    error = _error(response)
    assert (error["code"], set(error["detail"])) == ("invalid_input", {"points_to_use"})
    assert _snapshot() == before


@pytest.mark.parametrize(
    ("identify", "extra"),
    [
        ("member_no", {"points_to_use": 100}),
        ("phone", {"points_to_use": 100}),
        ("member_no", {"coupon_codes": ["C-1"]}),
        ("nobody", {"points_to_use": 100}),
    ],
)
def test_using_points_or_coupons_without_the_member_code_is_refused(terminal_client, member, identify, extra):
    # given 1000 points
    _give(member, 1000)
    value = {"member_no": member.member_no, "phone": "13812345678", "nobody": ""}[identify]
    before = _snapshot()
    # when
    response = _buy(terminal_client, member=value, receipt_no="R-1", amount="100.00", **extra)
    # then
    assert response.status_code == 403, response.content
    assert _error(response) == {
        "code": "member_code_required",
        "message": "Using points or coupons needs the member's current code. Scan the member's code.",
        "detail": {},
    }
    assert _snapshot() == before


def test_using_more_points_than_the_balance_is_refused(terminal_client, member):
    # given 100 points
    _give(member, 100)
    before = _snapshot()
    # when 200 are asked for
    response = _buy(terminal_client, member=_code(member), receipt_no="R-1", amount="100.00", points_to_use=200)
    # then
    assert response.status_code == 409, response.content
    assert _error(response) == {
        "code": "insufficient_points",
        "message": "Not enough points: 100 available, 200 requested.",
        "detail": {},
    }
    assert _snapshot() == before


def test_using_more_points_than_the_bill_allows_is_refused(terminal_client, member):
    # given 10000 points and a ¥10.01 bill (at most half, ¥5.00, may be paid with points)
    _give(member, 10000)
    before = _snapshot()
    # when
    response = _buy(terminal_client, member=_code(member), receipt_no="R-1", amount="10.01", points_to_use=501)
    # then
    assert response.status_code == 400, response.content
    assert _error(response) == {
        "code": "points_over_cap",
        "message": "At most 500 points can pay for this bill.",
        "detail": {"max_points": 500},
    }
    assert _snapshot() == before


def test_a_duplicate_receipt_is_refused(terminal_client, second_terminal_client, member):
    # given R-1 recorded by till 1
    assert _buy(terminal_client, member=member.member_no, receipt_no="R-1", amount="10.00").status_code == 201
    before = _snapshot()
    # when till 2 of the same store records R-1 again
    response = _buy(second_terminal_client, member=member.member_no, receipt_no="R-1", amount="99.00")
    # then
    assert response.status_code == 409, response.content
    assert _error(response) == {
        "code": "duplicate_receipt",
        "message": "Receipt R-1 was already recorded at this store.",
        "detail": {},
    }
    assert _snapshot() == before


def test_an_expired_member_code_is_refused(terminal_client, member):
    # given the code the member showed five minutes ago
    _give(member, 1000)
    old_code = _code(member, at=timezone.now() - timedelta(minutes=5))
    before = _snapshot()
    # when
    response = _buy(terminal_client, member=old_code, receipt_no="R-1", amount="100.00", points_to_use=100)
    # then
    assert response.status_code == 410, response.content
    error = _error(response)
    assert (error["code"], error["detail"]) == ("code_expired", {})
    assert _snapshot() == before


def test_a_member_code_serves_one_purchase(terminal_client, member):
    # given a purchase paid with the member's current code
    _give(member, 1000)
    code = _code(member)
    assert _buy(terminal_client, member=code, receipt_no="R-1", amount="10.00", points_to_use=100).status_code == 201
    before = _snapshot()
    # when the same code is used again
    response = _buy(terminal_client, member=code, receipt_no="R-2", amount="10.00", points_to_use=100)
    # then
    assert response.status_code == 409, response.content
    assert _error(response)["code"] == "code_already_used"
    assert _snapshot() == before


def test_an_unknown_coupon_refuses_the_whole_purchase(terminal_client, member):
    # given 1000 points, to prove the points part is not written either
    _give(member, 1000)
    before = _snapshot()
    # when
    response = _buy(
        terminal_client,
        member=_code(member),
        receipt_no="R-1",
        amount="100.00",
        points_to_use=100,
        coupon_codes=["c-1"],
    )
    # then
    assert response.status_code == 404, response.content
    error = _error(response)
    assert (error["code"], error["detail"]) == ("coupon_not_found", {"code": "C1"})
    assert _snapshot() == before


def test_a_paid_at_older_than_allowed_is_refused(terminal_client, member):
    # given
    before = _snapshot()
    # when
    response = _buy(
        terminal_client,
        member=member.member_no,
        receipt_no="R-1",
        amount="10.00",
        paid_at=(timezone.now() - timedelta(days=8)).isoformat(),
    )
    # then
    assert response.status_code == 400, response.content
    assert _error(response)["code"] == "invalid_paid_at"
    assert _snapshot() == before


def test_purchase_without_credentials_is_refused(anon_client, member):
    # when
    response = _buy(anon_client, member=member.member_no, receipt_no="R-1", amount="10.00")
    # then
    assert response.status_code == 401
    assert _error(response)["code"] == "not_authenticated"
    assert Purchase.objects.count() == 0


# -----------------------------------------------------------------------------
# POST /terminal/purchases/preview
# -----------------------------------------------------------------------------
def test_preview_answers_what_a_purchase_would_do_and_writes_nothing(terminal_client, member):
    # given 1000 points
    _give(member, 1000)
    code = _code(member)
    before = _snapshot()
    # when
    response = terminal_client.post(
        PREVIEW, {"member": code, "receipt_no": "R-1", "amount": "20.00", "points_to_use": 350}, format="json"
    )
    # then
    assert response.status_code == 200, response.content
    assert response.json() == {
        "points_to_earn": 16,
        "max_points_to_use": 1000,
        "cash_paid_by_points": "3.50",
        "amount_due": "16.50",
        "balance": 1000,
    }
    assert _snapshot() == before
    # and the same code still pays the real purchase
    purchase = _buy(terminal_client, member=code, receipt_no="R-1", amount="20.00", points_to_use=350)
    assert purchase.status_code == 201, purchase.content
    assert purchase.json()["points_earned"] == 16


def test_preview_of_too_many_points_is_refused_and_writes_nothing(terminal_client, member):
    # given 100 points
    _give(member, 100)
    before = _snapshot()
    # when
    response = terminal_client.post(
        PREVIEW, {"member": _code(member), "receipt_no": "R-1", "amount": "100.00", "points_to_use": 200}, format="json"
    )
    # then
    assert response.status_code == 409, response.content
    assert _error(response)["code"] == "insufficient_points"
    assert _snapshot() == before


# -----------------------------------------------------------------------------
# POST /terminal/purchases/<receipt_no>/refunds
# -----------------------------------------------------------------------------
def test_partial_refund_reverses_earned_points_in_proportion(terminal_client, member):
    # given a ¥100.00 purchase that earned 100
    _buy(terminal_client, member=member.member_no, receipt_no="R-1", amount="100.00")
    # when ¥33.33 is refunded
    response = terminal_client.post(_refunds("R-1"), {"refund_no": "F-1", "amount": "33.33"}, format="json")
    # then
    assert response.status_code == 201, response.content
    assert response.json() == {
        "receipt_no": "R-1",
        "refund_no": "F-1",
        "amount": "33.33",
        "points_reversed": 33,
        "points_returned": 0,
        "clawback": 0,
        "coupons_restored": [],
        "refundable_left": "66.67",
        "balance": 67,
    }
    assert Purchase.objects.get().refunded_amount == Decimal("33.33")


def test_refund_of_spent_points_claws_them_back_as_a_negative_balance(terminal_client, member, member_client):
    # given ¥100 earned 100 points, then 100 points paid ¥1 of a ¥10 bill (earning 9)
    _buy(terminal_client, member=member.member_no, receipt_no="R-1", amount="100.00")
    _buy(terminal_client, member=_code(member), receipt_no="R-2", amount="10.00", points_to_use=100)
    assert _balance(member) == 9
    # when the ¥100 purchase is refunded in full
    response = terminal_client.post(_refunds("R-1"), {"refund_no": "F-1", "amount": "100.00"}, format="json")
    # then the 9 left are taken and 91 are owed
    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["points_reversed"], body["clawback"], body["balance"]) == (100, 91, -91)
    account = PointsAccount.objects.get(member=member)
    assert (account.balance, account.debt, account.pending) == (-91, 91, 0)
    points = member_client.get(ME).json()["points"]
    assert (points["balance"], points["spendable"], points["cash_value"]) == (-91, 0, "0.00")
    # and the next purchase pays the debt down before opening a lot
    _buy(terminal_client, member=member.member_no, receipt_no="R-3", amount="100.00")
    account.refresh_from_db()
    assert (account.balance, account.debt) == (9, 0)
    assert list(PointsLot.objects.filter(member=member, remaining__gt=0).values_list("remaining", flat=True)) == [9]


def test_a_terminal_cannot_refund_another_stores_receipt(terminal_client, other_terminal_client, member):
    # given R-1 bought at the other store
    assert _buy(other_terminal_client, member=member.member_no, receipt_no="R-1", amount="50.00").status_code == 201
    before = _snapshot()
    # when this store's till refunds R-1
    response = terminal_client.post(_refunds("R-1"), {"refund_no": "F-1", "amount": "50.00"}, format="json")
    # then
    assert response.status_code == 404, response.content
    assert _error(response) == {
        "code": "purchase_not_found",
        "message": "No purchase with receipt R-1 at this store.",
        "detail": {},
    }
    assert _snapshot() == before


def test_a_refund_number_is_applied_once(terminal_client, member):
    # given F-1 refunded ¥10 of R-1
    _buy(terminal_client, member=member.member_no, receipt_no="R-1", amount="50.00")
    terminal_client.post(_refunds("R-1"), {"refund_no": "F-1", "amount": "10.00"}, format="json")
    before = _snapshot()
    # when F-1 comes again
    response = terminal_client.post(_refunds("R-1"), {"refund_no": "F-1", "amount": "10.00"}, format="json")
    # then
    assert response.status_code == 409, response.content
    assert _error(response)["code"] == "duplicate_refund"
    assert _snapshot() == before


def test_a_refund_larger_than_what_is_left_is_refused(terminal_client, member):
    # given ¥30 of ¥50 already refunded
    _buy(terminal_client, member=member.member_no, receipt_no="R-1", amount="50.00")
    terminal_client.post(_refunds("R-1"), {"refund_no": "F-1", "amount": "30.00"}, format="json")
    before = _snapshot()
    # when ¥20.01 is asked for
    response = terminal_client.post(_refunds("R-1"), {"refund_no": "F-2", "amount": "20.01"}, format="json")
    # then
    assert response.status_code == 409, response.content
    assert _error(response) == {
        "code": "refund_exceeds_purchase",
        "message": "The refund is larger than what remains refundable (20.00).",
        "detail": {"refundable": "20.00"},
    }
    assert _snapshot() == before


@pytest.mark.parametrize(
    "body",
    [
        {"refund_no": "F-1", "amount": "0.00"},
        {"refund_no": "F-1", "amount": "-1.00"},
        {"refund_no": "F-1", "amount": "1.001"},
        {"refund_no": "F 1", "amount": "1.00"},
        {"amount": "1.00"},
        {"refund_no": "F-1"},
    ],
)
def test_a_refund_with_invalid_input_is_refused(terminal_client, member, body):
    # given
    _buy(terminal_client, member=member.member_no, receipt_no="R-1", amount="50.00")
    before = _snapshot()
    # when
    response = terminal_client.post(_refunds("R-1"), body, format="json")
    # then
    assert response.status_code == 400, response.content
    assert _error(response)["code"] == "invalid_input"
    assert _snapshot() == before


def test_refund_after_claiming_a_partly_refunded_receipt_reverses_in_proportion(terminal_client, member, member_client):
    # given a ¥100 receipt without a member, ¥50 of it refunded, then claimed (earning 50 on the ¥50 left)
    _buy(terminal_client, member="", receipt_no="R-1", amount="100.00")
    terminal_client.post(_refunds("R-1"), {"refund_no": "F-1", "amount": "50.00"}, format="json")
    claim = member_client.post(CLAIMS, {"store": "SH001", "receipt_no": "R-1"}, format="json")
    assert claim.json()["points_earned"] == 50
    # when half of what the member paid for is refunded
    response = terminal_client.post(_refunds("R-1"), {"refund_no": "F-2", "amount": "25.00"}, format="json")
    # then half of the 50 points are reversed (not 37 = 75 % of 50)
    assert response.json()["points_reversed"] == 25
    assert _balance(member) == 25


# -----------------------------------------------------------------------------
# Idempotency-Key
# -----------------------------------------------------------------------------
def test_a_retry_with_the_same_key_and_body_replays_the_first_response(terminal_client, member):
    # given a purchase made with an Idempotency-Key
    body = {"member": member.member_no, "receipt_no": "R-1", "amount": "10.00"}
    first = terminal_client.post(PURCHASES, body, format="json", HTTP_IDEMPOTENCY_KEY="key-1")
    assert first.status_code == 201, first.content
    before = _snapshot()
    # when the POS retries it
    second = terminal_client.post(PURCHASES, body, format="json", HTTP_IDEMPOTENCY_KEY="key-1")
    # then it gets the same bytes and nothing changes
    assert second.status_code == 201
    assert second.content == first.content
    assert second["Idempotent-Replayed"] == "true"
    assert _snapshot() == before


def test_reusing_a_key_with_another_body_is_refused(terminal_client, member):
    # given
    body = {"member": member.member_no, "receipt_no": "R-1", "amount": "10.00"}
    terminal_client.post(PURCHASES, body, format="json", HTTP_IDEMPOTENCY_KEY="key-1")
    before = _snapshot()
    # when
    response = terminal_client.post(
        PURCHASES, {**body, "receipt_no": "R-2"}, format="json", HTTP_IDEMPOTENCY_KEY="key-1"
    )
    # then
    assert response.status_code == 422, response.content
    assert _error(response) == {
        "code": "idempotency_key_reused",
        "message": "This Idempotency-Key was already used with a different request.",
        "detail": {},
    }
    assert _snapshot() == before


def test_idempotency_keys_belong_to_one_terminal(terminal_client, other_terminal_client, member):
    # given till 1 used key-1
    body = {"member": member.member_no, "receipt_no": "R-1", "amount": "10.00"}
    first = terminal_client.post(PURCHASES, body, format="json", HTTP_IDEMPOTENCY_KEY="key-1")
    # when a till of another store sends the same key and body
    second = other_terminal_client.post(PURCHASES, body, format="json", HTTP_IDEMPOTENCY_KEY="key-1")
    # then it is its own purchase, not a replay
    assert (first.status_code, second.status_code) == (201, 201)
    assert "Idempotent-Replayed" not in second
    assert (first.json()["balance"], second.json()["balance"]) == (10, 20)
    assert Purchase.objects.filter(receipt_no="R-1").count() == 2
    assert IdempotencyKey.objects.filter(key="key-1").count() == 2


def test_a_refused_request_does_not_use_up_its_key(terminal_client, member):
    # given a purchase refused for lack of points
    code = _code(member)
    body = {"member": code, "receipt_no": "R-1", "amount": "100.00", "points_to_use": 100}
    refused = terminal_client.post(PURCHASES, body, format="json", HTTP_IDEMPOTENCY_KEY="key-1")
    assert refused.status_code == 409
    assert IdempotencyKey.objects.count() == 0
    # when the member gets points and the POS retries with the same key
    _give(member, 100)
    retried = terminal_client.post(PURCHASES, body, format="json", HTTP_IDEMPOTENCY_KEY="key-1")
    # then it runs
    assert retried.status_code == 201, retried.content
    assert retried.json()["points_used"] == 100
    assert IdempotencyKey.objects.count() == 1


@pytest.mark.parametrize("key", ["k" * 129, "ключ", "tab\tkey"])
def test_an_invalid_idempotency_key_is_refused(terminal_client, member, key):
    # given
    before = _snapshot()
    # when
    response = terminal_client.post(
        PURCHASES,
        {"member": member.member_no, "receipt_no": "R-1", "amount": "10.00"},
        format="json",
        HTTP_IDEMPOTENCY_KEY=key,
    )
    # then
    assert response.status_code == 400, response.content
    assert _error(response)["code"] == "invalid_idempotency_key"
    assert _snapshot() == before


def test_a_refund_retried_with_its_key_is_applied_once(terminal_client, member):
    # given
    _buy(terminal_client, member=member.member_no, receipt_no="R-1", amount="50.00")
    body = {"refund_no": "F-1", "amount": "20.00"}
    first = terminal_client.post(_refunds("R-1"), body, format="json", HTTP_IDEMPOTENCY_KEY="refund-1")
    before = _snapshot()
    # when
    second = terminal_client.post(_refunds("R-1"), body, format="json", HTTP_IDEMPOTENCY_KEY="refund-1")
    # then
    assert (first.status_code, second.status_code) == (201, 201)
    assert second.content == first.content
    assert _snapshot() == before


# -----------------------------------------------------------------------------
# GET /me/ledger
# -----------------------------------------------------------------------------
def _local(year: int, month: int, day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=timezone.get_current_timezone())


@pytest.fixture
def ledger(member: Member, store: Any, terminal: Any) -> list[PointsEntry]:
    """Five entries on 1–3 March 2025 (Shanghai time), oldest first."""
    entries = [
        points_credit(
            member=member, points=100, kind=Kind.BONUS, refs=Refs(source=Source.CAMPAIGN), at=_local(2025, 3, 1, 10)
        ),
        points_debit(
            member=member, points=30, kind=Kind.REDEEM, refs=Refs(source=Source.BENEFIT), at=_local(2025, 3, 2, 9)
        ),
    ]
    paid_at = _local(2025, 3, 2, 23, 59)
    purchase_record(
        store=store,
        terminal=terminal,
        receipt_no="R-1",
        amount=Decimal("12.80"),
        paid_at=paid_at,
        now=paid_at,
        identified=IdentifiedMember(member=member, code_step=None),
    )
    entries.append(PointsEntry.objects.get(kind=Kind.EARN))
    # 00:30 on 3 March in Shanghai is still 2 March in UTC
    entries.append(
        points_credit(
            member=member, points=5, kind=Kind.BONUS, refs=Refs(source=Source.CHECK_IN), at=_local(2025, 3, 3, 0, 30)
        )
    )
    entries.append(
        points_debit(
            member=member, points=50, kind=Kind.REDEEM, refs=Refs(source=Source.BENEFIT), at=_local(2025, 3, 3, 12)
        )
    )
    return entries


def _ids(response: Any) -> list[int]:
    return [row["id"] for row in response.json()["results"]]


def test_ledger_lists_entries_newest_first(member_client, ledger, store):
    # given another member's entry, which must not show
    other, _ = member_enrol(phone="13900000000", name="李四", store=store)
    _give(other, 10)
    # when
    response = member_client.get(LEDGER)
    # then
    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["count"], body["next"], body["previous"]) == (5, None, None)
    assert _ids(response) == [entry.pk for entry in reversed(ledger)]
    earn = body["results"][2]
    assert earn == {
        "id": ledger[2].pk,
        "kind": "earn",
        "points": 12,
        "balance_after": 82,
        "source": "purchase",
        "store": "上海南京西路店",
        "receipt_no": "R-1",
        "reason": "",
        "created_at": "2025-03-02T23:59:00+08:00",
    }
    assert [row["balance_after"] for row in body["results"]] == [37, 87, 82, 70, 100]


def test_ledger_is_paginated(member, member_client):
    # given 25 check-in bonuses, one a day
    start = timezone.now() - timedelta(days=30)
    created = [
        points_credit(
            member=member, points=1, kind=Kind.BONUS, refs=Refs(source=Source.CHECK_IN), at=start + timedelta(days=day)
        )
        for day in range(25)
    ]
    newest_first = [entry.pk for entry in reversed(created)]
    # when
    first = member_client.get(LEDGER)
    second = member_client.get(LEDGER, {"page": 2})
    small = member_client.get(LEDGER, {"page_size": 10, "page": 3})
    # then
    assert (first.json()["count"], len(first.json()["results"])) == (25, 20)
    assert first.json()["next"] == "http://testserver/api/v1/me/ledger?page=2"
    assert _ids(first) == newest_first[:20]
    assert _ids(second) == newest_first[20:]
    assert second.json()["next"] is None
    assert _ids(small) == newest_first[20:]


@pytest.mark.parametrize(
    ("query", "indexes"),
    [
        ({"kind": "redeem"}, [4, 1]),
        ({"kind": ["bonus", "earn"]}, [3, 2, 0]),
        ({"date_from": "2025-03-03"}, [4, 3]),
        ({"date_to": "2025-03-01"}, [0]),
        ({"date_from": "2025-03-02", "date_to": "2025-03-02"}, [2, 1]),
        ({"kind": "bonus", "date_from": "2025-03-02"}, [3]),
        ({"kind": "expire"}, []),
    ],
)
def test_ledger_filters_by_kind_and_local_date(member_client, ledger, query, indexes):
    # when
    response = member_client.get(LEDGER, query)
    # then
    assert response.status_code == 200, response.content
    assert response.json()["count"] == len(indexes)
    assert _ids(response) == [ledger[index].pk for index in indexes]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"kind": "gift"}, "kind"),
        ({"date_from": "yesterday"}, "date_from"),
        ({"date_to": "2025-02-30"}, "date_to"),
        ({"page_size": 0}, "page_size"),
        ({"page_size": 101}, "page_size"),
        ({"page": "x"}, "page"),
    ],
)
def test_ledger_refuses_an_invalid_filter(member_client, ledger, query, field):
    # when
    response = member_client.get(LEDGER, query)
    # then
    assert response.status_code == 400, response.content
    error = _error(response)
    assert (error["code"], set(error["detail"])) == ("invalid_input", {field})


def test_ledger_needs_a_member_token(anon_client, terminal_client):
    # when
    anonymous = anon_client.get(LEDGER)
    by_terminal = terminal_client.get(LEDGER)
    # then
    assert anonymous.status_code == 401
    assert _error(anonymous)["code"] == "not_authenticated"
    assert by_terminal.status_code == 401


# -----------------------------------------------------------------------------
# POST /me/check-in
# -----------------------------------------------------------------------------
def test_check_in_gives_points_once_a_day(member, member_client):
    # when
    first = member_client.post(CHECK_IN)
    before = _snapshot()
    second = member_client.post(CHECK_IN)
    # then
    assert first.status_code == 201, first.content
    assert first.json() == {"points": 5, "balance": 5, "day": timezone.localdate().isoformat()}
    assert second.status_code == 409, second.content
    assert _error(second) == {
        "code": "already_checked_in",
        "message": "You have already checked in today.",
        "detail": {},
    }
    assert _snapshot() == before
    assert _balance(member) == 5


def test_check_in_retried_with_its_key_replays_the_first_answer(member_client):
    # given
    first = member_client.post(CHECK_IN, HTTP_IDEMPOTENCY_KEY="day-1")
    # when
    second = member_client.post(CHECK_IN, HTTP_IDEMPOTENCY_KEY="day-1")
    # then
    assert (first.status_code, second.status_code) == (201, 201)
    assert second.content == first.content
    assert CheckIn.objects.count() == 1


# -----------------------------------------------------------------------------
# POST /me/claims
# -----------------------------------------------------------------------------
def test_a_member_claims_a_receipt_recorded_without_them(terminal_client, member, member_client):
    # given R-1 bought without identifying the member
    _buy(terminal_client, member="", receipt_no="R-1", amount="88.80")
    # when
    response = member_client.post(CLAIMS, {"store": "SH001", "receipt_no": "R-1"}, format="json")
    # then
    assert response.status_code == 201, response.content
    assert response.json() == {
        "receipt_no": "R-1",
        "member_no": member.member_no,
        "amount": "88.80",
        "points_earned": 88,
        "points_pending": 0,
        "points_used": 0,
        "cash_paid_by_points": "0.00",
        "amount_due": "88.80",
        "coupons_written_off": [],
        "balance": 88,
        "spendable": 88,
        "tier": {"code": "silver", "name": "银卡 Silver"},
        "tier_changed": False,
        "offline": False,
    }
    purchase = Purchase.objects.get()
    assert (purchase.member_id, purchase.points_earned) == (member.pk, 88)
    assert list(PointsEntry.objects.values_list("kind", "points", "source")) == [("earn", 88, "claim")]


def test_a_receipt_is_claimed_once(terminal_client, member, member_client, store):
    # given R-1 claimed by another member
    _buy(terminal_client, member="", receipt_no="R-1", amount="88.80")
    other, _ = member_enrol(phone="13900000000", name="李四", store=store)
    _, raw = member_token_issue(member=other)
    other_client = APIClient()
    other_client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert other_client.post(CLAIMS, {"store": "SH001", "receipt_no": "R-1"}, format="json").status_code == 201
    before = _snapshot()
    # when this member claims it too
    response = member_client.post(CLAIMS, {"store": "SH001", "receipt_no": "R-1"}, format="json")
    # then
    assert response.status_code == 409, response.content
    error = _error(response)
    assert (error["code"], error["detail"]) == ("claim_not_allowed", {"reason": "already_claimed"})
    assert _snapshot() == before


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"store": "SH001", "receipt_no": "R-404"}, 404, "purchase_not_found"),
        ({"store": "XX999", "receipt_no": "R-1"}, 404, "unknown_store"),
        ({"store": "BJ001", "receipt_no": "R-1"}, 404, "purchase_not_found"),
        ({"receipt_no": "R-1"}, 400, "invalid_input"),
    ],
)
def test_a_claim_of_an_unknown_receipt_is_refused(terminal_client, member_client, other_store, body, status, code):
    # given R-1 bought at SH001 without a member
    _buy(terminal_client, member="", receipt_no="R-1", amount="88.80")
    before = _snapshot()
    # when
    response = member_client.post(CLAIMS, body, format="json")
    # then
    assert response.status_code == status, response.content
    assert _error(response)["code"] == code
    assert _snapshot() == before


# -----------------------------------------------------------------------------
# GET /me
# -----------------------------------------------------------------------------
def _midnight_in(days: int) -> datetime:
    day = timezone.localdate() + timedelta(days=days)
    return datetime.combine(day, time.min, tzinfo=timezone.get_current_timezone())


def test_me_shows_balance_expiring_points_and_tier_progress(terminal_client, member, member_client):
    # given ¥1,200.50 bought today (1200 points expiring in a year) and bonus lots expiring at
    # the end of today, in 10 days (two lots), in 30 days and in 31 days
    _buy(terminal_client, member=member.member_no, receipt_no="R-1", amount="1200.50")
    for points, days in [(10, 1), (20, 10), (30, 10), (40, 30), (50, 31)]:
        points_credit(
            member=member,
            points=points,
            kind=Kind.BONUS,
            refs=Refs(source=Source.CAMPAIGN),
            expires_at=_midnight_in(days),
        )
    today = timezone.localdate()
    # when
    response = member_client.get(ME)
    # then
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["points"] == {
        "balance": 1350,
        "pending": 0,
        "spendable": 1350,
        "cash_value": "13.50",
        "expiring_30d": 100,
        "expiring": [
            {"expires_on": today.isoformat(), "points": 10},
            {"expires_on": (today + timedelta(days=9)).isoformat(), "points": 50},
            {"expires_on": (today + timedelta(days=29)).isoformat(), "points": 40},
        ],
    }
    assert body["tier"]["code"] == "silver"
    assert body["tier_progress"] == {
        "qualifying_spend": "1200.50",
        "next_tier": {"code": "gold", "name": "金卡 Gold", "discount_rate": "0.88", "earn_multiplier": "1.25"},
        "next_threshold": "5000.00",
        "remaining": "3799.50",
    }


def test_me_shows_pending_points_as_not_yet_spendable(terminal_client, member, member_client, settings):
    # given a chain that holds earned points for its 14-day return window
    settings.LOYALTY_POINTS_PENDING_DAYS = 14
    purchase = _buy(terminal_client, member=member.member_no, receipt_no="R-1", amount="128.50")
    assert (purchase.json()["points_pending"], purchase.json()["spendable"]) == (128, 0)
    # when
    response = member_client.get(ME)
    # then
    points = response.json()["points"]
    assert (points["balance"], points["pending"], points["spendable"], points["cash_value"]) == (128, 128, 0, "0.00")
    # and they cannot pay yet
    refused = _buy(terminal_client, member=_code(member), receipt_no="R-2", amount="10.00", points_to_use=100)
    assert refused.status_code == 409
    assert _error(refused)["code"] == "insufficient_points"


# -----------------------------------------------------------------------------
# Operator API
# -----------------------------------------------------------------------------
def _operator(django_user_model: Any, username: str, *, group: str | None = "Operator", **fields: Any) -> Any:
    fields.setdefault("is_staff", True)
    user = django_user_model.objects.create_user(username=username, password="pw", **fields)
    if group:
        user.groups.add(Group.objects.get(name=group))
    return user


def _session(user: Any, **kwargs: Any) -> APIClient:
    client = APIClient(**kwargs)
    client.force_login(user)
    return client


def test_an_operator_adjusts_points_with_a_reason(django_user_model, member):
    # given
    client = _session(_operator(django_user_model, "op1"))
    # when
    response = client.post(
        ADJUSTMENTS, {"member_no": member.member_no, "points": 200, "reason": "补录小票"}, format="json"
    )
    # then
    assert response.status_code == 201, response.content
    body = response.json()
    adjustment = PointsAdjustment.objects.get()
    assert body == {
        "id": adjustment.pk,
        "member_no": member.member_no,
        "points": 200,
        "reason": "补录小票",
        "status": "applied",
        "balance_after": 200,
        "created_at": body["created_at"],
        "decided_at": body["decided_at"],
    }
    assert body["decided_at"] is not None
    assert _balance(member) == 200
    entry = PointsEntry.objects.get()
    assert (entry.kind, entry.points, entry.source, entry.reason, entry.by_user.username) == (
        "adjust",
        200,
        "operator",
        "补录小票",
        "op1",
    )


def test_a_large_adjustment_waits_for_a_second_operator(django_user_model, member):
    # given op1 asks for 1500 points (above the 1000 threshold)
    op1, op2 = _operator(django_user_model, "op1"), _operator(django_user_model, "op2")
    client1, client2 = _session(op1), _session(op2)
    requested = client1.post(
        ADJUSTMENTS, {"member_no": member.member_no, "points": 1500, "reason": "活动补偿"}, format="json"
    )
    assert requested.status_code == 201, requested.content
    pk = requested.json()["id"]
    assert (requested.json()["status"], requested.json()["balance_after"]) == ("pending", None)
    assert PointsEntry.objects.count() == 0
    before = _snapshot()
    # when op1 approves it themself
    own = client1.post(_approve(pk))
    # then
    assert own.status_code == 403, own.content
    assert _error(own)["code"] == "self_approval_forbidden"
    assert _snapshot() == before
    # when op2 approves it
    approved = client2.post(_approve(pk))
    # then
    assert approved.status_code == 200, approved.content
    assert (approved.json()["status"], approved.json()["balance_after"]) == ("applied", 1500)
    adjustment = PointsAdjustment.objects.get()
    assert (adjustment.requested_by, adjustment.decided_by) == (op1, op2)
    assert _balance(member) == 1500
    # and a second approval is refused
    before = _snapshot()
    again = client2.post(_approve(pk))
    assert again.status_code == 409
    assert _error(again)["code"] == "adjustment_not_pending"
    assert _snapshot() == before


def test_approving_an_unknown_adjustment_is_not_found(django_user_model):
    # when
    response = _session(_operator(django_user_model, "op1")).post(_approve(999999))
    # then
    assert response.status_code == 404
    assert _error(response)["code"] == "not_found"


def test_a_negative_adjustment_beyond_the_balance_is_refused(django_user_model, member):
    # given 100 points
    _give(member, 100)
    before = _snapshot()
    # when
    response = _session(_operator(django_user_model, "op1")).post(
        ADJUSTMENTS, {"member_no": member.member_no, "points": -101, "reason": "冲正"}, format="json"
    )
    # then
    assert response.status_code == 409, response.content
    assert _error(response)["code"] == "insufficient_points"
    assert _snapshot() == before


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"member_no": "8000000000", "points": 10, "reason": "x"}, 404, "member_not_found"),
        ({"member_no": None, "points": 0, "reason": "x"}, 400, "invalid_points"),
        ({"member_no": None, "points": 10, "reason": "   "}, 400, "invalid_input"),
        ({"member_no": None, "points": 10}, 400, "invalid_input"),
        ({"member_no": None, "points": 1.5, "reason": "x"}, 400, "invalid_input"),
    ],
)
def test_an_invalid_adjustment_is_refused(django_user_model, member, body, status, code):
    # given
    body = {**body, "member_no": body["member_no"] or member.member_no}
    before = _snapshot()
    # when
    response = _session(_operator(django_user_model, "op1")).post(ADJUSTMENTS, body, format="json")
    # then
    assert response.status_code == status, response.content
    assert _error(response)["code"] == code
    assert _snapshot() == before


@pytest.mark.parametrize(
    ("who", "code"),
    [
        ({"username": "clerk", "group": None}, "permission_denied"),  # staff, no role
        ({"username": "auditor", "group": "Auditor"}, "permission_denied"),  # may only view
        ({"username": "outsider", "is_staff": False}, "permission_denied"),  # in the group, not staff
        (None, "not_authenticated"),
    ],
)
def test_adjusting_without_the_permission_is_forbidden(django_user_model, member, who, code):
    # given
    client = _session(_operator(django_user_model, **who)) if who else APIClient()
    pending = PointsAdjustment.objects.create(member=member, points=5000, reason="x")
    before = _snapshot()
    # when
    response = client.post(ADJUSTMENTS, {"member_no": member.member_no, "points": 10, "reason": "x"}, format="json")
    approve = client.post(_approve(pending.pk))
    # then
    assert (response.status_code, approve.status_code) == (403, 403)
    assert (_error(response)["code"], _error(approve)["code"]) == (code, code)
    assert _snapshot() == before


def test_a_terminal_key_cannot_adjust_points(terminal_client, member):
    # given
    before = _snapshot()
    # when
    response = terminal_client.post(
        ADJUSTMENTS, {"member_no": member.member_no, "points": 10, "reason": "x"}, format="json"
    )
    # then
    assert response.status_code == 403
    assert _error(response)["code"] == "not_authenticated"
    assert _snapshot() == before


def test_a_session_post_without_the_csrf_token_is_refused(django_user_model, member):
    # given a browser session that enforces CSRF (APIClient skips the check by default)
    client = _session(_operator(django_user_model, "op1"), enforce_csrf_checks=True)
    before = _snapshot()
    # when
    response = client.post(ADJUSTMENTS, {"member_no": member.member_no, "points": 10, "reason": "x"}, format="json")
    # then
    assert response.status_code == 403, response.content
    error = _error(response)
    assert error["code"] == "permission_denied"
    assert error["message"].startswith("CSRF Failed")
    assert _snapshot() == before
