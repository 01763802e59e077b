from datetime import date, timedelta

import pytest
from django.core.cache import cache
from django.utils import timezone
from rest_framework.test import APIClient

from loyalty.errors import TooManyAttempts
from members import codes
from members.errors import InvalidMemberCode
from members.models import Member, MemberEvent, Terminal, TierChange
from members.selectors import member_code_current, member_get_by_code
from members.services import member_enrol, member_freeze, terminal_create, terminal_key_rotate, terminal_revoke

pytestmark = pytest.mark.django_db

IDENTIFY = "/api/v1/terminal/identify"
ENROL = "/api/v1/terminal/members"


@pytest.fixture
def other_terminal_client(other_store):
    _, key = terminal_create(store=other_store, name="till-1")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {key}")
    return client


def _counts():
    return Member.objects.count(), MemberEvent.objects.count(), TierChange.objects.count()


def _forged(code):
    return code[:-6] + str((int(code[-6:]) + 1) % 10**6).zfill(6)


def _error(response):
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "detail"}
    assert body["error"]["message"]
    return body["error"]


# -----------------------------------------------------------------------------
# Identify
# -----------------------------------------------------------------------------
def _expected_identify(member, identified_by, name="王**", phone="138****5678"):
    return {
        "member_no": member.member_no,
        "name": name,
        "phone": phone,
        "status": "active",
        "tier": {"code": "silver", "name": "银卡 Silver", "discount_rate": "0.95", "earn_multiplier": "1.00"},
        "points": {
            "balance": 0,
            "pending": 0,
            "spendable": 0,
            "cash_value": "0.00",
            "expiring_30d": 0,
            "expiring": [],
        },
        "coupons": [],
        "identified_by": identified_by,
    }


def test_identify_by_code_returns_masked_member(terminal_client, member):
    # given
    code, _ = member_code_current(member=member)
    # when
    response = terminal_client.post(IDENTIFY, {"code": code}, format="json")
    # then
    assert response.status_code == 200, response.content
    assert response.json() == _expected_identify(member, "code")


def test_identify_by_member_number(terminal_client, member):
    # when
    response = terminal_client.post(IDENTIFY, {"code": f" {member.member_no} "}, format="json")
    # then
    assert response.status_code == 200, response.content
    assert response.json() == _expected_identify(member, "member_no")


@pytest.mark.parametrize("phone", ["13812345678", "138 1234 5678", "１３８１２３４５６７８", "+86-138-1234-5678"])
def test_identify_by_phone(terminal_client, member, phone):
    # when
    response = terminal_client.post(IDENTIFY, {"code": phone}, format="json")
    # then
    assert response.status_code == 200, response.content
    assert response.json() == _expected_identify(member, "phone")


def test_identify_masks_latin_name(terminal_client, store):
    # given
    member, _ = member_enrol(phone="13912345678", name="Li Lei", store=store)
    # when
    response = terminal_client.post(IDENTIFY, {"code": "13912345678"}, format="json")
    # then
    assert response.status_code == 200, response.content
    assert response.json()["name"] == "L*****"
    assert response.json()["phone"] == "139****5678"


def test_identify_frozen_member_shows_status(terminal_client, member, django_user_model):
    # given
    operator = django_user_model.objects.create_user(username="op", password="pw")
    member_freeze(member=member, by_user=operator, reason="疑似盗刷")
    code, _ = member_code_current(member=member)
    # when
    response = terminal_client.post(IDENTIFY, {"code": code}, format="json")
    # then
    assert response.status_code == 200, response.content
    assert response.json()["status"] == "frozen"
    assert response.json()["coupons"] == []


@pytest.mark.parametrize("value", ["8999999999", "13900000000", "nobody"])
def test_identify_unknown_member_is_404(terminal_client, member, value):
    # when
    response = terminal_client.post(IDENTIFY, {"code": value}, format="json")
    # then
    assert response.status_code == 404
    assert _error(response)["code"] == "member_not_found"


def test_identify_expired_code_is_410(terminal_client, member):
    # given
    code, _ = member_code_current(member=member, at=timezone.now() - 3 * timedelta(seconds=codes._step_seconds()))
    # when
    response = terminal_client.post(IDENTIFY, {"code": code}, format="json")
    # then
    assert response.status_code == 410
    assert _error(response)["code"] == "code_expired"


def test_identify_forged_code_is_400(terminal_client, member):
    # given
    code, _ = member_code_current(member=member)
    # when
    response = terminal_client.post(IDENTIFY, {"code": _forged(code)}, format="json")
    # then
    assert response.status_code == 400
    assert _error(response) == {
        "code": "invalid_member_code",
        "message": "This member code is not valid. Ask the member to show the code again.",
        "detail": {},
    }


def test_identify_without_code_is_400(terminal_client):
    # when
    response = terminal_client.post(IDENTIFY, {}, format="json")
    # then
    assert response.status_code == 400
    error = _error(response)
    assert error["code"] == "invalid_input"
    assert list(error["detail"]) == ["code"]


def test_identify_uses_at_most_three_queries(terminal_client, member, django_assert_max_num_queries):
    # given
    code, _ = member_code_current(member=member)
    # when
    with django_assert_max_num_queries(3):
        response = terminal_client.post(IDENTIFY, {"code": code}, format="json")
    # then
    assert response.status_code == 200


@pytest.mark.parametrize("value", ["member_no", "13812345678"])
def test_identify_by_typed_value_uses_at_most_three_queries(
    terminal_client, member, django_assert_max_num_queries, value
):
    # given
    value = member.member_no if value == "member_no" else value
    # when
    with django_assert_max_num_queries(3):
        response = terminal_client.post(IDENTIFY, {"code": value}, format="json")
    # then
    assert response.status_code == 200


# -----------------------------------------------------------------------------
# Throttling
# -----------------------------------------------------------------------------
def test_identify_is_throttled_after_too_many_failures_even_for_a_valid_code(
    terminal_client, other_terminal_client, member, settings
):
    # given as many forged codes as allowed, from one terminal
    code, _ = member_code_current(member=member)
    for _ in range(settings.LOYALTY_IDENTIFY_FAILURES_LIMIT):
        refused = terminal_client.post(IDENTIFY, {"code": _forged(code)}, format="json")
        assert refused.status_code == 400
    # when
    response = terminal_client.post(IDENTIFY, {"code": code}, format="json")
    # then
    assert response.status_code == 429
    assert _error(response)["code"] == "too_many_attempts"
    assert response["Retry-After"] == str(settings.LOYALTY_IDENTIFY_FAILURES_WINDOW_SECONDS)
    # and another terminal is not affected
    other = other_terminal_client.post(IDENTIFY, {"code": code}, format="json")
    assert other.status_code == 200
    assert other.json()["member_no"] == member.member_no


def test_a_terminal_past_the_limit_is_blocked_in_its_row_for_the_window_without_reading_redis(
    terminal_client, terminal, member, settings
):
    # given a terminal that reached the failure limit
    code, _ = member_code_current(member=member)
    started = timezone.now()
    for _ in range(settings.LOYALTY_IDENTIFY_FAILURES_LIMIT):
        terminal_client.post(IDENTIFY, {"code": _forged(code)}, format="json")
    # then the block is in the terminal's row (written after the failed request rolled back)
    window = timedelta(seconds=settings.LOYALTY_IDENTIFY_FAILURES_WINDOW_SECONDS)
    blocked_until = Terminal.objects.get(pk=terminal.pk).identify_blocked_until
    assert started + window <= blocked_until <= timezone.now() + window
    # when the failure counters are gone from the cache (flushed, restarted)
    cache.clear()
    response = terminal_client.post(IDENTIFY, {"code": code}, format="json")
    # then the terminal is still refused: the block is read with the terminal, not from the cache
    assert response.status_code == 429
    assert _error(response)["code"] == "too_many_attempts"
    # and once the window has passed it works again
    Terminal.objects.filter(pk=terminal.pk).update(identify_blocked_until=timezone.now() - timedelta(seconds=1))
    assert terminal_client.post(IDENTIFY, {"code": code}, format="json").status_code == 200


def test_retry_after_is_what_is_left_of_the_block(terminal_client, terminal, member):
    # given a block with 90.2 s left
    Terminal.objects.filter(pk=terminal.pk).update(
        identify_blocked_until=timezone.now() + timedelta(seconds=90, milliseconds=200)
    )
    code, _ = member_code_current(member=member)
    # when
    response = terminal_client.post(IDENTIFY, {"code": code}, format="json")
    # then
    assert response.status_code == 429
    assert response["Retry-After"] == "91"
    assert _error(response)["code"] == "too_many_attempts"


@pytest.mark.django_db(transaction=True)
def test_failures_outside_a_transaction_block_the_terminal_at_once(store, member, settings):
    # given a terminal looking members up outside any transaction (a script, a task)
    terminal, _key = terminal_create(store=store, name="till-script")
    code, _ = member_code_current(member=member)
    # when it fails as often as allowed
    for _ in range(settings.LOYALTY_IDENTIFY_FAILURES_LIMIT):
        with pytest.raises(InvalidMemberCode):
            member_get_by_code(code=_forged(code), terminal=terminal)
    # then the block is written at once, and the next lookup is refused
    assert Terminal.objects.get(pk=terminal.pk).identify_blocked_until > timezone.now()
    with pytest.raises(TooManyAttempts):
        member_get_by_code(code=code, terminal=Terminal.objects.get(pk=terminal.pk))


def test_identify_below_the_failure_limit_still_works(terminal_client, member, settings):
    # given one failure fewer than the limit
    code, _ = member_code_current(member=member)
    for _ in range(settings.LOYALTY_IDENTIFY_FAILURES_LIMIT - 1):
        terminal_client.post(IDENTIFY, {"code": _forged(code)}, format="json")
    # when
    response = terminal_client.post(IDENTIFY, {"code": code}, format="json")
    # then
    assert response.status_code == 200


def test_identify_failures_by_phone_or_member_number_are_throttled_too(terminal_client, member, settings):
    # given a terminal trying phone numbers one after another
    for index in range(settings.LOYALTY_IDENTIFY_FAILURES_LIMIT):
        refused = terminal_client.post(IDENTIFY, {"code": f"1390000{index:04d}"}, format="json")
        assert refused.status_code == 404
    # when
    response = terminal_client.post(IDENTIFY, {"code": "13812345678"}, format="json")
    # then
    assert response.status_code == 429
    assert _error(response)["code"] == "too_many_attempts"


# -----------------------------------------------------------------------------
# Enrol
# -----------------------------------------------------------------------------
def test_enrol_creates_201_then_returns_200_for_the_same_phone(terminal_client, terminal, store):
    # when
    created = terminal_client.post(
        ENROL, {"phone": "138 1234 5678", "name": "王小明", "birthday": "1990-05-17"}, format="json"
    )
    again = terminal_client.post(ENROL, {"phone": "１３８１２３４５６７８"}, format="json")
    # then
    assert created.status_code == 201, created.content
    assert again.status_code == 200, again.content
    member = Member.objects.get()
    assert created.json() == _expected_identify(member, "phone")
    assert again.json() == created.json()
    assert member.phone == "+8613812345678"
    assert member.name == "王小明"
    assert member.birthday == date(1990, 5, 17)
    assert member.registration_store == store
    assert member.channel == Member.Channel.STORE
    event = MemberEvent.objects.get(member=member)
    assert event.by_terminal == terminal
    assert _counts() == (1, 1, 1)


def test_enrol_phone_of_other_person_is_409_and_writes_nothing(terminal_client, member):
    # given
    before = _counts()
    # when
    response = terminal_client.post(ENROL, {"phone": "13812345678", "name": "李四"}, format="json")
    # then
    assert response.status_code == 409
    assert _error(response) == {
        "code": "phone_registered_to_other",
        "message": "This phone number is already registered to a member with different details.",
        "detail": {"member_no": member.member_no},
    }
    assert _counts() == before
    member.refresh_from_db()
    assert member.name == "王小明"


def test_enrol_invalid_phone_is_400_in_the_error_envelope(terminal_client):
    # when
    response = terminal_client.post(ENROL, {"phone": "12345", "name": "王小明"}, format="json")
    # then
    assert response.status_code == 400
    assert response.json() == {
        "error": {
            "code": "invalid_phone",
            "message": "“12345” is not a valid mobile phone number.",
            "detail": {},
        }
    }
    assert _counts() == (0, 0, 0)


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"phone": "13812345678", "birthday": "2999-01-01"},
        {"phone": "13812345678", "birthday": "not-a-date"},
        {"phone": "13812345678", "gender": "other"},
    ],
)
def test_enrol_invalid_input_is_400_and_writes_nothing(terminal_client, payload):
    # when
    response = terminal_client.post(ENROL, payload, format="json")
    # then
    assert response.status_code == 400
    assert _error(response)["code"] == "invalid_input"
    assert _counts() == (0, 0, 0)


# -----------------------------------------------------------------------------
# Authentication
# -----------------------------------------------------------------------------
@pytest.mark.parametrize("path", [IDENTIFY, ENROL])
def test_terminal_api_without_key_is_401(anon_client, member, path):
    # when
    response = anon_client.post(path, {"code": member.member_no, "phone": "13912345678"}, format="json")
    # then
    assert response.status_code == 401
    assert _error(response)["code"] == "not_authenticated"
    assert response["WWW-Authenticate"] == "Api-Key"
    assert Member.objects.count() == 1


@pytest.mark.parametrize(
    "header",
    ["Api-Key wrong", "Api-Key abcdefgh.wrongsecretwrongsecretwrongsecr", "Api-Key ", "Bearer abc.def"],
)
def test_terminal_api_with_wrong_key_is_401(terminal_with_key, member, header):
    # given
    _, key = terminal_with_key
    prefix = key.split(".")[0]
    header = header.replace("abcdefgh", prefix)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=header)
    # when
    response = client.post(IDENTIFY, {"code": member.member_no}, format="json")
    # then
    assert response.status_code == 401
    assert _error(response)["code"] in {"authentication_failed", "not_authenticated"}


def test_terminal_api_with_revoked_terminal_is_401(terminal_client, terminal, member):
    # given
    terminal_revoke(terminal=terminal)
    # when
    response = terminal_client.post(IDENTIFY, {"code": member.member_no}, format="json")
    # then
    assert response.status_code == 401
    assert _error(response) == {"code": "authentication_failed", "message": "Invalid or revoked API key.", "detail": {}}


def test_terminal_api_with_inactive_terminal_is_401(terminal_client, terminal, member):
    # given
    Terminal.objects.filter(pk=terminal.pk).update(is_active=False)
    # when
    response = terminal_client.post(IDENTIFY, {"code": member.member_no}, format="json")
    # then
    assert response.status_code == 401
    assert _error(response)["code"] == "authentication_failed"


def test_terminal_api_with_inactive_store_is_401(terminal_client, store, member):
    # given
    store.is_active = False
    store.save()
    # when
    response = terminal_client.post(IDENTIFY, {"code": member.member_no}, format="json")
    # then
    assert response.status_code == 401


def test_rotated_key_replaces_the_old_one(terminal_client, terminal, member):
    # given
    new_key = terminal_key_rotate(terminal=terminal)
    fresh = APIClient()
    fresh.credentials(HTTP_AUTHORIZATION=f"Api-Key {new_key}")
    # when
    old = terminal_client.post(IDENTIFY, {"code": member.member_no}, format="json")
    new = fresh.post(IDENTIFY, {"code": member.member_no}, format="json")
    # then
    assert old.status_code == 401
    assert new.status_code == 200


def test_member_token_is_refused_on_terminal_api(member_client, member):
    # when
    response = member_client.post(IDENTIFY, {"code": member.member_no}, format="json")
    # then
    assert response.status_code == 401
    assert _error(response)["code"] == "not_authenticated"


def test_identify_malformed_json_is_400_in_the_error_envelope(terminal_client):
    # when
    response = terminal_client.post(IDENTIFY, data=b'{"code": ', content_type="application/json")
    # then
    assert response.status_code == 400
    assert _error(response)["code"] == "malformed_request"


def test_identify_json_that_is_not_an_object_is_400(terminal_client):
    # when
    response = terminal_client.post(IDENTIFY, ["13812345678"], format="json")
    # then
    assert response.status_code == 400
    assert _error(response)["code"] == "invalid_input"


def test_identify_closed_member_by_number_is_404(terminal_client, member, django_user_model):
    # given
    from members.services import member_close

    operator = django_user_model.objects.create_user(username="op", password="pw")
    code, _ = member_code_current(member=member)
    member_close(member=member, by_user=operator, reason="客户要求注销")
    # when
    by_number = terminal_client.post(IDENTIFY, {"code": member.member_no}, format="json")
    by_phone = terminal_client.post(IDENTIFY, {"code": "13812345678"}, format="json")
    by_code = terminal_client.post(IDENTIFY, {"code": code}, format="json")
    # then
    assert by_number.status_code == 404
    assert by_phone.status_code == 404
    assert by_code.status_code == 400
    assert _error(by_code)["code"] == "invalid_member_code"
