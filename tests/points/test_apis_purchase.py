from decimal import Decimal

import pytest

from members.selectors import member_code_current
from points.models import PointsAccount, PointsEntry, PointsLot, Purchase

pytestmark = pytest.mark.django_db


def _buy(client, member_value, receipt, amount, points_to_use=0, **headers):
    return client.post(
        "/api/v1/terminal/purchases",
        {"member": member_value, "receipt_no": receipt, "amount": amount, "points_to_use": points_to_use},
        format="json",
        **headers,
    )


def test_purchase_earns_floor_of_amount_times_multipliers(terminal_client, member):
    # given a silver member (x1.00)
    # when
    response = _buy(terminal_client, member.member_no, "R-1", "128.50")
    # then
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["points_earned"] == 128
    assert body["balance"] == 128
    assert PointsAccount.objects.get(member=member).balance == 128
    entry = PointsEntry.objects.get(member=member)
    assert (entry.kind, entry.points, entry.balance_after) == ("earn", 128, 128)
    lot = PointsLot.objects.get(member=member)
    assert (lot.original, lot.remaining) == (128, 128)


def test_using_points_needs_the_member_code(terminal_client, member):
    _buy(terminal_client, member.member_no, "R-1", "500.00")
    response = _buy(terminal_client, member.member_no, "R-2", "100.00", points_to_use=100)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "member_code_required"
    assert Purchase.objects.count() == 1


def test_purchase_with_points_and_refund_returns_them(terminal_client, member):
    # given 500 points
    _buy(terminal_client, member.member_no, "R-1", "500.00")
    code, _ = member_code_current(member=member)
    # when paying ¥2 of a ¥100 bill with 200 points
    response = _buy(terminal_client, code, "R-2", "100.00", points_to_use=200)
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["points_used"] == 200
    assert Decimal(body["cash_paid_by_points"]) == Decimal("2.00")
    assert body["points_earned"] == 98
    assert body["balance"] == 500 - 200 + 98
    # and refunding it fully
    refund = terminal_client.post(
        "/api/v1/terminal/purchases/R-2/refunds", {"refund_no": "F-1", "amount": "100.00"}, format="json"
    )
    assert refund.status_code == 201, refund.content
    assert refund.json()["points_returned"] == 200
    assert refund.json()["points_reversed"] == 98
    assert refund.json()["balance"] == 500
    assert PointsAccount.objects.get(member=member).balance == 500
    assert PointsLot.objects.get(member=member, entry__purchase__receipt_no="R-1").remaining == 500


def test_idempotent_replay_is_byte_identical(terminal_client, member):
    first = _buy(terminal_client, member.member_no, "R-9", "10.00", HTTP_IDEMPOTENCY_KEY="k1")
    second = _buy(terminal_client, member.member_no, "R-9", "10.00", HTTP_IDEMPOTENCY_KEY="k1")
    other = _buy(terminal_client, member.member_no, "R-10", "10.00", HTTP_IDEMPOTENCY_KEY="k1")
    assert first.status_code == second.status_code == 201
    assert first.content == second.content
    assert other.status_code == 422
    assert Purchase.objects.count() == 1
