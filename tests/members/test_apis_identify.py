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
