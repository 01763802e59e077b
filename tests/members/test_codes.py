from datetime import UTC, datetime, timedelta

import pytest

from members import codes
from members.errors import InvalidMemberCode, MemberCodeExpired
from members.selectors import member_code_current, member_get_by_code
from members.services import member_close, member_enrol

pytestmark = pytest.mark.django_db

# The middle of a 60-second step, so that ±seconds stay inside known steps.
NOW = datetime(2026, 3, 14, 9, 26, 30, tzinfo=UTC)
STEP = timedelta(seconds=60)


@pytest.fixture
def other_member(store):
    member, _ = member_enrol(phone="13912345678", name="李四", store=store)
    return member


def test_code_is_18_ascii_digits_made_of_member_no_hint_and_otp(member):
    # when
    code, seconds_to_live = member_code_current(member=member, at=NOW)
    # then
    assert len(code) == 18
    assert code.isascii()
    assert code.isdigit()
    assert code[:10] == member.member_no
    assert int(code[10:12]) == codes.step_at(NOW) % 100
    assert seconds_to_live == 30


def test_code_changes_every_step_and_is_stable_within_one(member):
    # when
    first, _ = member_code_current(member=member, at=NOW)
    same, _ = member_code_current(member=member, at=NOW + timedelta(seconds=29))
    following, _ = member_code_current(member=member, at=NOW + STEP)
    # then
    assert same == first
    assert following != first


def test_code_is_valid_in_its_own_step(member):
    # given
    code, _ = member_code_current(member=member, at=NOW)
    # when
    identified = member_get_by_code(code=code, now=NOW)
    # then
    assert identified.member.pk == member.pk
    assert identified.code_step == codes.step_at(NOW)
    assert identified.offline is False
    assert identified.by_code is True


@pytest.mark.parametrize("skew", [-1, 1])
def test_code_is_valid_one_step_either_side(member, skew):
    # given a phone clock one step ahead of or behind the server
    code, _ = member_code_current(member=member, at=NOW + skew * STEP)
    # when
    identified = member_get_by_code(code=code, now=NOW)
    # then
    assert identified.member.pk == member.pk
    assert identified.code_step == codes.step_at(NOW) + skew
    assert identified.offline is False


@pytest.mark.parametrize("steps_old", [2, 3, 10, 49])
def test_older_code_is_expired(member, steps_old):
    # given
    code, _ = member_code_current(member=member, at=NOW - steps_old * STEP)
    # when
    with pytest.raises(MemberCodeExpired) as raised:
        member_get_by_code(code=code, now=NOW)
    # then
    assert raised.value.code == "code_expired"
    assert raised.value.http_status == 410


def test_code_from_two_steps_ahead_is_refused(member):
    # given
    code, _ = member_code_current(member=member, at=NOW + 2 * STEP)
    # when / then
    with pytest.raises(MemberCodeExpired):
        member_get_by_code(code=code, now=NOW)


@pytest.mark.parametrize("position", [12, 15, 17])
def test_forged_code_is_invalid(member, position):
    # given a current code with one digit of its one-time password changed
    code, _ = member_code_current(member=member, at=NOW)
    digit = str((int(code[position]) + 1) % 10)
    forged = code[:position] + digit + code[position + 1 :]
    # when
    with pytest.raises(InvalidMemberCode) as raised:
        member_get_by_code(code=forged, now=NOW)
    # then
    assert raised.value.code == "invalid_member_code"
    assert raised.value.http_status == 400


def test_code_made_with_another_server_secret_is_invalid(member, settings):
    # given a code made by a server that does not share our secret
    ours = settings.LOYALTY_MEMBER_CODE_SECRET
    settings.LOYALTY_MEMBER_CODE_SECRET = "someone-else"
    code, _ = member_code_current(member=member, at=NOW)
    settings.LOYALTY_MEMBER_CODE_SECRET = ours
    # when / then
    with pytest.raises(InvalidMemberCode):
        member_get_by_code(code=code, now=NOW)


@pytest.mark.parametrize("garbage", ["", "abc", "8000000001", "80000000012" * 2, "８" * 18, "12345678901234567x"])
def test_garbled_input_is_invalid(member, garbage):
    # when / then
    with pytest.raises(InvalidMemberCode):
        member_get_by_code(code=garbage, now=NOW)


def test_code_of_member_a_with_member_b_number_is_invalid(member, other_member):
    # given A's hint and one-time password behind B's member number
    code_a, _ = member_code_current(member=member, at=NOW)
    spliced = other_member.member_no + code_a[10:]
    # when / then
    with pytest.raises(InvalidMemberCode):
        member_get_by_code(code=spliced, now=NOW)


def test_code_of_unknown_member_no_is_invalid(member):
    # given
    code, _ = member_code_current(member=member, at=NOW)
    unknown = "8999999999" + code[10:]
    # when / then
    with pytest.raises(InvalidMemberCode):
        member_get_by_code(code=unknown, now=NOW)


def test_closing_a_member_invalidates_codes_made_before(member, django_user_model):
    # given
    operator = django_user_model.objects.create_user(username="op", password="pw", is_staff=True)
    code, _ = member_code_current(member=member, at=NOW)
    old_secret = member.code_secret
    # when
    member_close(member=member, by_user=operator, reason="客户要求注销")
    # then
    with pytest.raises(InvalidMemberCode):
        member_get_by_code(code=code, now=NOW)
    member.refresh_from_db()
    parts = codes.parse(code)
    assert codes.check(parts, secret=member.code_secret, now=NOW).valid is False
    assert codes.check(parts, secret=old_secret, now=NOW).valid is True


# -----------------------------------------------------------------------------
# Offline purchases (paid_at)
# -----------------------------------------------------------------------------
@pytest.mark.parametrize("late", [timedelta(minutes=2), timedelta(minutes=5), timedelta(seconds=600)])
def test_offline_code_within_the_delay_is_accepted_and_flagged(member, late):
    # given a purchase paid at NOW with the code then current, sent later
    code, _ = member_code_current(member=member, at=NOW)
    # when
    identified = member_get_by_code(code=code, paid_at=NOW, now=NOW + late)
    # then
    assert identified.member.pk == member.pk
    assert identified.code_step == codes.step_at(NOW)
    assert identified.offline is True


def test_code_within_its_window_is_not_flagged_offline_even_with_paid_at(member):
    # given
    code, _ = member_code_current(member=member, at=NOW)
    # when
    identified = member_get_by_code(code=code, paid_at=NOW, now=NOW + timedelta(seconds=20))
    # then
    assert identified.offline is False


def test_offline_code_beyond_the_delay_is_refused(member):
    # given
    code, _ = member_code_current(member=member, at=NOW)
    # when / then
    with pytest.raises(MemberCodeExpired):
        member_get_by_code(code=code, paid_at=NOW, now=NOW + timedelta(seconds=601))


def test_offline_delay_follows_the_setting(member, settings):
    # given a chain that allows queued purchases to arrive 2 minutes late
    settings.LOYALTY_OFFLINE_CODE_DELAY_SECONDS = 120
    code, _ = member_code_current(member=member, at=NOW)
    # when / then
    assert member_get_by_code(code=code, paid_at=NOW, now=NOW + timedelta(seconds=120)).offline is True
    with pytest.raises(MemberCodeExpired):
        member_get_by_code(code=code, paid_at=NOW, now=NOW + timedelta(seconds=121))


def test_offline_delay_longer_than_the_step_hint_range_is_accepted(member, settings):
    # given a chain that allows 2 hours (120 steps, beyond the 100-step hint range)
    settings.LOYALTY_OFFLINE_CODE_DELAY_SECONDS = 7200
    code, _ = member_code_current(member=member, at=NOW)
    # when
    identified = member_get_by_code(code=code, paid_at=NOW, now=NOW + timedelta(minutes=90))
    # then
    assert identified.member.pk == member.pk
    assert identified.code_step == codes.step_at(NOW)
    assert identified.offline is True


def test_offline_code_outside_paid_at_window_is_refused(member):
    # given a code from 5 minutes before the purchase's paid_at
    code, _ = member_code_current(member=member, at=NOW - timedelta(minutes=5))
    # when / then
    with pytest.raises(MemberCodeExpired):
        member_get_by_code(code=code, paid_at=NOW, now=NOW + timedelta(minutes=3))


def test_offline_paid_at_in_the_future_is_refused(member):
    # given an old code claimed to be paid after the server's time
    code, _ = member_code_current(member=member, at=NOW - timedelta(minutes=5))
    # when / then
    with pytest.raises(MemberCodeExpired):
        member_get_by_code(code=code, paid_at=NOW - timedelta(minutes=5) + timedelta(hours=1), now=NOW)


def test_forged_offline_code_is_invalid(member):
    # given
    code, _ = member_code_current(member=member, at=NOW)
    forged = code[:-1] + str((int(code[-1]) + 1) % 10)
    # when / then
    with pytest.raises(InvalidMemberCode):
        member_get_by_code(code=forged, paid_at=NOW, now=NOW + timedelta(minutes=5))
