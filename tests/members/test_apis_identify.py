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
