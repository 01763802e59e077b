from datetime import timedelta

import pytest
from django.utils import timezone

from members import codes
from members.selectors import member_code_current

pytestmark = pytest.mark.django_db


def test_identify_resolves_current_code(terminal_client, member):
    # given
    code, _ = member_code_current(member=member)
    # when
    response = terminal_client.post("/api/v1/terminal/identify", {"code": code}, format="json")
    # then
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["member_no"] == member.member_no
    assert body["name"] == "王**"
    assert body["phone"] == "138****5678"
    assert body["tier"]["code"] == "silver"
    assert body["identified_by"] == "code"


def test_identify_refuses_expired_code_with_410(terminal_client, member):
    # given a code made three steps ago
    old = timezone.now() - timedelta(seconds=3 * codes._step_seconds())
    code, _ = member_code_current(member=member, at=old)
    # when
    response = terminal_client.post("/api/v1/terminal/identify", {"code": code}, format="json")
    # then
    assert response.status_code == 410
    assert response.json()["error"]["code"] == "code_expired"


def test_identify_refuses_forged_code(terminal_client, member):
    code, _ = member_code_current(member=member)
    forged = code[:-6] + str((int(code[-6:]) + 1) % 10**6).zfill(6)
    response = terminal_client.post("/api/v1/terminal/identify", {"code": forged}, format="json")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_member_code"


@pytest.mark.parametrize("by", ["code", "member_no", "phone"])
def test_identify_shows_the_points_as_the_points_summary_does(terminal_client, member, store, by):
    """The till summary comes back in the member's own statement: same figures
    as the points summary read on its own, however the member was identified."""
    from points.selectors import points_summary_get, till_summary_get
    from tests.points.factories import points_give

    # given points that lapsed (the nightly job has not run), points expiring
    # in ten days and in forty, and points earned yesterday
    now = timezone.now()
    points_give(member, 300, at=now - timedelta(days=400), expires_at=now - timedelta(hours=1))
    points_give(member, 70, at=now - timedelta(days=300), expires_at=now + timedelta(days=10))
    points_give(member, 50, at=now - timedelta(days=200), expires_at=now + timedelta(days=40))
    points_give(member, 100, at=now - timedelta(days=1))
    value = {"code": member_code_current(member=member)[0], "member_no": member.member_no, "phone": member.phone}[by]
    # when
    response = terminal_client.post("/api/v1/terminal/identify", {"code": value}, format="json")
    # then
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["identified_by"] == by
    points = body["points"]
    assert (points["balance"], points["spendable"], points["expiring_30d"]) == (520, 220, 70)
    assert [item["points"] for item in points["expiring"]] == [70]
    alone = points_summary_get(member=member)
    assert (alone["balance"], alone["spendable"], alone["expiring_30d"]) == (520, 220, 70)
    assert points["expiring"][0]["expires_on"] == alone["expiring"][0]["expires_on"].isoformat()
    assert points["cash_value"] == str(alone["cash_value"])
    assert till_summary_get(member=member, store=store)[0] == alone


# The identify's body and response, built by hand for speed, against the
# serializers that define them (and that the schema documents).
@pytest.mark.parametrize("status", ["active", "frozen"])
def test_the_hand_built_identify_response_is_what_the_serializer_renders(terminal_client, terminal, member, status):
    from decimal import Decimal

    from campaigns.models import Benefit
    from loyalty.api.bodies import represent
    from members.apis import TerminalMemberOutputSerializer, terminal_member_output, terminal_member_rendered
    from tests.campaigns.factories import BenefitFactory, coupon_give
    from tests.points.factories import points_give

    # given lots expiring soon and later, and coupons of several kinds and amounts
    now = timezone.now()
    points_give(member, 70, at=now - timedelta(days=300), expires_at=now + timedelta(days=10))
    points_give(member, 55, at=now - timedelta(days=300), expires_at=now + timedelta(days=20))
    points_give(member, 50, at=now - timedelta(days=200), expires_at=now + timedelta(days=40))
    coupon_give(BenefitFactory(value=Decimal("10"), min_spend=Decimal("99.9")), member)
    coupon_give(BenefitFactory(kind=Benefit.Kind.PERCENT_OFF, value=Decimal("12.5"), cash_price=Decimal("3")), member)
    member.status = status
    member.save(update_fields=["status"])
    member.refresh_from_db()
    # when
    response = terminal_client.post("/api/v1/terminal/identify", {"code": member.member_no}, format="json")
    # then
    assert response.status_code == 200, response.content
    output = terminal_member_output(member, terminal, "member_no")
    expected = represent(TerminalMemberOutputSerializer, output)
    assert terminal_member_rendered(output) == expected
    assert list(terminal_member_rendered(output)) == list(expected)
    assert response.json() == expected
    assert len(expected["points"]["expiring"]) == 2
    assert len(expected["coupons"]) == (2 if status == "active" else 0)


def test_the_hand_built_identify_response_leaves_out_what_the_summary_leaves_out():
    from datetime import date
    from decimal import Decimal

    from loyalty.api.bodies import represent
    from members.apis import TerminalMemberOutputSerializer, terminal_member_rendered

    output = {
        "member_no": "1000000001", "name": "王**", "phone": "138****5678", "status": "active",
        "tier": {"code": "gold", "name": "金卡", "discount_rate": Decimal("0.95"), "earn_multiplier": Decimal("1.5")},
        "points": {"balance": 10, "pending": 0, "cash_value": 0, "expiring_30d": 0,
                   "expiring": [{"expires_on": date(2027, 1, 31), "points": 3}]},
        "coupons": [], "identified_by": "phone",
    }
    assert terminal_member_rendered(output) == represent(TerminalMemberOutputSerializer, output)
    assert "spendable" not in terminal_member_rendered(output)["points"]


@pytest.mark.parametrize(
    "data",
    [
        {"code": "123456789012345678"}, {"code": "1000000001"}, {"code": "138 0013 8000"}, {"code": "x" * 64},
        {"code": " 1"}, {"code": ""}, {"code": "x" * 65}, {"code": "１２３"}, {"code": "1\x00"}, {"code": 12},
        {"code": None}, {"code": "1", "other": 1}, {}, ["code"],
    ],
)
def test_the_hand_checked_identify_body_is_what_the_serializer_makes_of_it(data):
    from rest_framework import serializers

    from loyalty.api.bodies import validated
    from members.apis import MemberIdentifyApi, identify_body

    fast = identify_body(data)
    try:
        slow = validated(MemberIdentifyApi.InputSerializer, data)
    except serializers.ValidationError:
        slow = None
    if fast is not None:
        assert fast == slow
    assert (fast is not None) == (
        isinstance(data, dict) and set(data) == {"code"} and isinstance(data["code"], str) and data["code"].isascii()
        and data["code"].isprintable() and 0 < len(data["code"]) <= 64 and data["code"] == data["code"].strip()
    )
