from datetime import date, timedelta

import pytest
from django.core import signing
from django.utils import timezone
from rest_framework.test import APIClient

from members.apis import WECHAT_SESSION_SALT
from members.models import Member, MemberEvent, MemberToken
from members.services import member_close, member_enrol, member_token_issue, member_token_revoke

pytestmark = pytest.mark.django_db

LOGIN = "/api/v1/auth/wechat"
REGISTER = "/api/v1/auth/register"
ME = "/api/v1/me"
ME_CODE = "/api/v1/me/code"


def _bearer(raw):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client


def _error(response):
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "detail"}
    return body["error"]


def _counts():
    return Member.objects.count(), MemberEvent.objects.count(), MemberToken.objects.count()


@pytest.fixture
def operator(django_user_model):
    return django_user_model.objects.create_user(username="op", password="pw", is_staff=True)


# -----------------------------------------------------------------------------
# WeChat login and registration
# -----------------------------------------------------------------------------
def test_wechat_login_of_unregistered_openid_returns_a_session(anon_client):
    # when
    response = anon_client.post(LOGIN, {"code": "dev-o-wx-001"}, format="json")
    # then
    assert response.status_code == 200, response.content
    body = response.json()
    assert set(body) == {"registered", "wechat_session"}
    assert body["registered"] is False
    assert signing.loads(body["wechat_session"], salt=WECHAT_SESSION_SALT) == {"openid": "o-wx-001"}
    assert _counts() == (0, 0, 0)


def test_register_binds_wechat_and_login_again_gives_a_token(anon_client):
    # given
    session = anon_client.post(LOGIN, {"code": "dev-o-wx-001"}, format="json").json()["wechat_session"]
    # when
    registered = anon_client.post(
        REGISTER,
        {"wechat_session": session, "phone": "138 1234 5678", "name": "王小明", "birthday": "1990-05-17"},
        format="json",
    )
    # then
    assert registered.status_code == 201, registered.content
    body = registered.json()
    member = Member.objects.get()
    assert body["registered"] is True
    assert body["member_no"] == member.member_no
    assert member.wechat_openid == "o-wx-001"
    assert member.phone == "+8613812345678"
    assert member.channel == Member.Channel.MINI_PROGRAM
    assert member.birthday == date(1990, 5, 17)
    assert _bearer(body["token"]).get(ME).json()["member_no"] == member.member_no

    # when logging in again
    again = anon_client.post(LOGIN, {"code": "dev-o-wx-001"}, format="json")
    # then
    assert again.status_code == 200, again.content
    assert again.json()["registered"] is True
    assert again.json()["member_no"] == member.member_no
    assert again.json()["token"] != body["token"]
    assert _bearer(again.json()["token"]).get(ME).status_code == 200
    assert Member.objects.count() == 1


def test_register_with_phone_of_store_member_binds_that_member(anon_client, member):
    # given a member enrolled at a till, now opening the mini-program
    session = anon_client.post(LOGIN, {"code": "dev-o-wx-001"}, format="json").json()["wechat_session"]
    # when
    response = anon_client.post(REGISTER, {"wechat_session": session, "phone": "13812345678"}, format="json")
    # then
    assert response.status_code == 200, response.content
    assert response.json()["member_no"] == member.member_no
    member.refresh_from_db()
    assert member.wechat_openid == "o-wx-001"
    assert member.channel == Member.Channel.STORE
    assert Member.objects.count() == 1


def test_register_retry_with_same_session_and_phone_is_idempotent(anon_client):
    # given
    session = anon_client.post(LOGIN, {"code": "dev-o-wx-001"}, format="json").json()["wechat_session"]
    payload = {"wechat_session": session, "phone": "13812345678", "name": "王小明"}
    first = anon_client.post(REGISTER, payload, format="json")
    # when
    second = anon_client.post(REGISTER, payload, format="json")
    # then
    assert first.status_code == 201
    assert second.status_code == 200, second.content
    assert second.json()["member_no"] == first.json()["member_no"]
    assert Member.objects.count() == 1


def test_register_same_session_with_another_phone_is_409_and_writes_nothing(anon_client):
    # given an openid already registered with one phone
    session = anon_client.post(LOGIN, {"code": "dev-o-wx-001"}, format="json").json()["wechat_session"]
    anon_client.post(REGISTER, {"wechat_session": session, "phone": "13812345678"}, format="json")
    before = _counts()
    # when the same session is replayed with another phone
    response = anon_client.post(REGISTER, {"wechat_session": session, "phone": "13912345678"}, format="json")
    # then
    assert response.status_code == 409, response.content
    assert _error(response)["code"] == "wechat_registered_to_other"
    assert _counts() == before
    assert not Member.objects.filter(phone="+8613912345678").exists()


def test_register_phone_of_member_bound_to_another_wechat_is_409(anon_client, member):
    # given
    first = anon_client.post(LOGIN, {"code": "dev-o-wx-001"}, format="json").json()["wechat_session"]
    anon_client.post(REGISTER, {"wechat_session": first, "phone": "13812345678"}, format="json")
    other = anon_client.post(LOGIN, {"code": "dev-o-wx-002"}, format="json").json()["wechat_session"]
    before = _counts()
    # when
    response = anon_client.post(REGISTER, {"wechat_session": other, "phone": "13812345678"}, format="json")
    # then
    assert response.status_code == 409
    assert _error(response)["code"] == "wechat_already_bound"
    assert _counts() == before
    member.refresh_from_db()
    assert member.wechat_openid == "o-wx-001"


def test_register_phone_of_other_person_is_409(anon_client, member):
    # given
    session = anon_client.post(LOGIN, {"code": "dev-o-wx-001"}, format="json").json()["wechat_session"]
    before = _counts()
    # when
    response = anon_client.post(
        REGISTER, {"wechat_session": session, "phone": "13812345678", "name": "李四"}, format="json"
    )
    # then
    assert response.status_code == 409
    assert _error(response)["code"] == "phone_registered_to_other"
    assert _counts() == before
    member.refresh_from_db()
    assert member.wechat_openid is None


@pytest.mark.parametrize(
    "session",
    [
        "garbage",
        signing.dumps({"openid": "o-wx-001"}, salt="another-salt"),
        signing.dumps({"openid": "o-wx-001"}, salt=WECHAT_SESSION_SALT, key="not-our-secret-key-0123456789"),
    ],
)
def test_register_with_bad_session_is_401(anon_client, session):
    # when
    response = anon_client.post(REGISTER, {"wechat_session": session, "phone": "13812345678"}, format="json")
    # then
    assert response.status_code == 401
    assert _error(response)["code"] == "wechat_session_invalid"
    assert _counts() == (0, 0, 0)


def test_register_with_expired_session_is_401(anon_client, settings):
    # given
    session = anon_client.post(LOGIN, {"code": "dev-o-wx-001"}, format="json").json()["wechat_session"]
    settings.LOYALTY_WECHAT_SESSION_MAX_AGE_SECONDS = -1
    # when
    response = anon_client.post(REGISTER, {"wechat_session": session, "phone": "13812345678"}, format="json")
    # then
    assert response.status_code == 401
    assert _error(response)["code"] == "wechat_session_invalid"
    assert _counts() == (0, 0, 0)


def test_register_with_invalid_phone_is_400(anon_client):
    # given
    session = anon_client.post(LOGIN, {"code": "dev-o-wx-001"}, format="json").json()["wechat_session"]
    # when
    response = anon_client.post(REGISTER, {"wechat_session": session, "phone": "12345"}, format="json")
    # then
    assert response.status_code == 400
    assert _error(response)["code"] == "invalid_phone"
    assert _counts() == (0, 0, 0)


@pytest.mark.parametrize("code", ["o-wx-001", "dev-", "dev-a b", "dev-" + "x" * 65, "wx-code-from-phone"])
def test_dev_adapter_refuses_codes_other_than_dev_openid(anon_client, code):
    # when
    response = anon_client.post(LOGIN, {"code": code}, format="json")
    # then
    assert response.status_code == 401
    assert _error(response)["code"] == "wechat_login_failed"


def test_wechat_login_of_closed_member_is_unregistered(anon_client, operator):
    # given
    session = anon_client.post(LOGIN, {"code": "dev-o-wx-001"}, format="json").json()["wechat_session"]
    anon_client.post(REGISTER, {"wechat_session": session, "phone": "13812345678"}, format="json")
    member_close(member=Member.objects.get(), by_user=operator, reason="客户要求注销")
    # when
    response = anon_client.post(LOGIN, {"code": "dev-o-wx-001"}, format="json")
    # then
    assert response.status_code == 200
    assert response.json()["registered"] is False


# -----------------------------------------------------------------------------
# /me and /me/code
# -----------------------------------------------------------------------------
def test_me_returns_own_profile(member_client, member):
    # when
    response = member_client.get(ME)
    # then
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["member_no"] == member.member_no
    assert body["name"] == "王小明"
    assert body["phone"] == "+8613812345678"
    assert body["status"] == "active"
    assert body["tier"] == {"code": "silver", "name": "银卡 Silver", "discount_rate": "0.95", "earn_multiplier": "1.00"}
    assert body["tier_progress"] == {
        "qualifying_spend": "0.00",
        "next_tier": {"code": "gold", "name": "金卡 Gold", "discount_rate": "0.88", "earn_multiplier": "1.25"},
        "next_threshold": "5000.00",
        "remaining": "5000.00",
    }
    assert body["points"]["balance"] == 0
    assert body["points"]["cash_value"] == "0.00"


def test_me_code_returns_a_code_a_terminal_can_identify(member_client, member, terminal_client, settings):
    # when
    response = member_client.get(ME_CODE)
    # then
    assert response.status_code == 200, response.content
    body = response.json()
    assert set(body) == {"code", "seconds_to_live", "step_seconds", "qr_svg"}
    assert len(body["code"]) == 18
    assert body["code"].isdigit()
    assert body["code"].startswith(member.member_no)
    assert 1 <= body["seconds_to_live"] <= settings.LOYALTY_MEMBER_CODE_STEP_SECONDS
    assert body["step_seconds"] == settings.LOYALTY_MEMBER_CODE_STEP_SECONDS
    assert body["qr_svg"].startswith("<svg")
    assert body["qr_svg"].rstrip().endswith("</svg>")
    # and the till identifies the member with it
    identified = terminal_client.post("/api/v1/terminal/identify", {"code": body["code"]}, format="json")
    assert identified.status_code == 200, identified.content
    assert identified.json()["member_no"] == member.member_no
    assert identified.json()["identified_by"] == "code"


def test_token_of_member_a_never_shows_member_b(member_client, member, store):
    # given
    other, _ = member_enrol(phone="13912345678", name="李四", store=store)
    _, other_raw = member_token_issue(member=other)
    # when
    mine = member_client.get(ME).json()
    theirs = _bearer(other_raw).get(ME).json()
    my_code = member_client.get(ME_CODE).json()["code"]
    their_code = _bearer(other_raw).get(ME_CODE).json()["code"]
    # then
    assert (mine["member_no"], mine["name"], mine["phone"]) == (member.member_no, "王小明", "+8613812345678")
    assert (theirs["member_no"], theirs["name"], theirs["phone"]) == (other.member_no, "李四", "+8613912345678")
    assert my_code[:10] == member.member_no
    assert their_code[:10] == other.member_no


@pytest.mark.parametrize("path", [ME, ME_CODE])
def test_member_api_without_token_is_401(anon_client, path):
    # when
    response = anon_client.get(path)
    # then
    assert response.status_code == 401
    assert _error(response)["code"] == "not_authenticated"
    assert response["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize("path", [ME, ME_CODE])
def test_member_api_with_expired_token_is_401(member, path):
    # given
    _, raw = member_token_issue(member=member, ttl=timedelta(seconds=60))
    MemberToken.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    # when
    response = _bearer(raw).get(path)
    # then
    assert response.status_code == 401
    assert _error(response)["code"] == "authentication_failed"


@pytest.mark.parametrize("path", [ME, ME_CODE])
def test_member_api_with_revoked_token_is_401(member, path):
    # given
    token, raw = member_token_issue(member=member)
    member_token_revoke(token=token)
    # when
    response = _bearer(raw).get(path)
    # then
    assert response.status_code == 401
    assert _error(response)["code"] == "authentication_failed"


def test_member_api_with_tampered_token_is_401(member):
    # given a real prefix with another secret
    _, raw = member_token_issue(member=member)
    prefix = raw.split(".")[0]
    # when
    response = _bearer(f"{prefix}.not-the-secret").get(ME)
    # then
    assert response.status_code == 401
    assert _error(response)["code"] == "authentication_failed"


def test_member_api_after_close_is_401(member_client, member, operator):
    # given
    member_close(member=member, by_user=operator, reason="客户要求注销")
    # when
    response = member_client.get(ME)
    # then
    assert response.status_code == 401


def test_terminal_key_is_refused_on_member_api(terminal_client):
    # when
    response = terminal_client.get(ME)
    # then
    assert response.status_code == 401
    assert _error(response)["code"] == "not_authenticated"
