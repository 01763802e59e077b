from datetime import date, timedelta

import pytest
from django.utils import timezone

from campaigns.models import Campaign, CampaignGrant
from members.models import MemberEvent
from points.models import PointsAccount

pytestmark = pytest.mark.django_db


def _profile_bonus(points: int = 50) -> Campaign:
    return Campaign.objects.create(
        name="完善资料送50积分",
        kind=Campaign.Kind.BONUS,
        condition=Campaign.Condition.PROFILE_COMPLETED,
        status=Campaign.Status.ACTIVE,
        starts_at=timezone.now() - timedelta(days=1),
        points=points,
    )


def test_completing_the_profile_earns_the_bonus_once(member_client, member):
    # given a profile-completion campaign and a member without birthday and gender
    campaign = _profile_bonus()
    # when the member completes the profile, then edits it again
    first = member_client.patch("/api/v1/me", {"birthday": "1990-05-20", "gender": "male"}, format="json")
    second = member_client.patch("/api/v1/me", {"name": "王晓明"}, format="json")
    # then the bonus came once
    assert first.status_code == 200, first.content
    assert first.json()["points"]["balance"] == 50
    assert second.json()["name"] == "王晓明"
    assert PointsAccount.objects.get(member=member).balance == 50
    assert CampaignGrant.objects.filter(campaign=campaign, member=member).count() == 1
    assert MemberEvent.objects.filter(member=member, kind=MemberEvent.Kind.PROFILE_UPDATED).count() == 2


def test_a_set_birthday_cannot_be_changed_by_the_member(member_client, member):
    # given a birthday
    member_client.patch("/api/v1/me", {"birthday": "1990-05-20"}, format="json")
    # when the member tries to move it (to get a birthday gift sooner)
    response = member_client.patch("/api/v1/me", {"birthday": "1990-12-01"}, format="json")
    # then refused, unchanged
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "birthday_locked"
    member.refresh_from_db()
    assert member.birthday == date(1990, 5, 20)


def test_enrolling_with_a_complete_profile_earns_the_bonus(terminal_client):
    # given
    _profile_bonus(30)
    # when a walk-in enrols with everything
    response = terminal_client.post(
        "/api/v1/terminal/members",
        {"phone": "13900002222", "name": "李雷", "birthday": "1988-03-03", "gender": "male"},
        format="json",
    )
    # then
    assert response.status_code == 201, response.content
    assert response.json()["points"]["balance"] == 30


def test_profile_rejects_a_future_birthday(member_client, member):
    response = member_client.patch("/api/v1/me", {"birthday": "2999-01-01"}, format="json")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_input"
    member.refresh_from_db()
    assert member.birthday is None
