import importlib
import threading
from datetime import date, timedelta

import pytest
from django.db import connection
from django.utils import timezone

from members.errors import (
    InvalidPhone,
    MemberClosed,
    MemberStatusUnchanged,
    PhoneTakenByOther,
    ReasonRequired,
    WechatAlreadyBound,
    WechatOpenidTaken,
)
from members.models import Member, MemberEvent, MemberToken, Tier, TierChange
from members.services import (
    member_bind_wechat,
    member_close,
    member_enrol,
    member_freeze,
    member_set_tier,
    member_token_issue,
    member_unfreeze,
    phone_normalise,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def operator(django_user_model):
    return django_user_model.objects.create_user(username="op", password="pw", is_staff=True)


@pytest.fixture(scope="module")
def _default_tiers_restored(django_db_blocker):
    """A transactional test ends with a flush that empties every table,
    including the default tiers made by a data migration (members 0002);
    put them back once the module is done so later tests (and the kept
    --reuse-db database) still have them."""
    yield
    with django_db_blocker.unblock():
        _create_default_tiers()


def _create_default_tiers():
    from django.apps import apps

    defaults = importlib.import_module("members.migrations.0002_defaults")
    defaults.create_tiers(apps, None)


def _counts():
    return (
        Member.objects.count(),
        MemberEvent.objects.count(),
        TierChange.objects.count(),
        MemberToken.objects.count(),
    )


# -----------------------------------------------------------------------------
# Phone
# -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "raw",
    [
        "13812345678",
        "１３８１２３４５６７８",
        "138 1234 5678",
        "138-1234-5678",
        " １３８-１２３４ ５６７８\u3000",
        "+86 138 1234 5678",
        "008613812345678",
    ],
)
def test_phone_normalise_accepts_common_spellings(raw):
    # when
    normalised = phone_normalise(raw)
    # then
    assert normalised == "+8613812345678"


@pytest.mark.parametrize("raw", ["", "   ", "12345", "abc", "02112345678", "1381234567", "1" * 40])
def test_phone_normalise_refuses_non_mobile_numbers(raw):
    # when / then
    with pytest.raises(InvalidPhone):
        phone_normalise(raw)


# -----------------------------------------------------------------------------
# Enrol
# -----------------------------------------------------------------------------
def test_enrol_creates_member_in_entry_tier_with_history(store):
    # when
    member, created = member_enrol(
        phone="138 1234 5678", name=" 王小明 ", birthday=date(1990, 5, 17), store=store, marketing_consent=True
    )
    # then
    assert created is True
    member.refresh_from_db()
    assert member.phone == "+8613812345678"
    assert member.name == "王小明"
    assert member.birthday == date(1990, 5, 17)
    assert member.registration_store == store
    assert member.channel == Member.Channel.STORE
    assert member.status == Member.Status.ACTIVE
    assert member.marketing_consent is True
    assert member.tier.code == "silver"
    assert len(member.member_no) == 10
    assert member.member_no.isdigit()
    assert member.member_no.startswith("8")
    assert len(member.code_secret) == 40
    change = TierChange.objects.get(member=member)
    assert (change.from_tier, change.to_tier.code, change.reason) == (None, "silver", TierChange.Reason.ENROLMENT)
    event = MemberEvent.objects.get(member=member)
    assert (event.kind, event.data) == (MemberEvent.Kind.ENROLLED, {"channel": "store"})


def test_enrol_member_numbers_are_distinct_and_luhn_valid(store):
    from members.services import luhn_valid

    # when
    first, _ = member_enrol(phone="13812345678", store=store)
    second, _ = member_enrol(phone="13912345678", store=store)
    # then
    assert first.member_no != second.member_no
    assert luhn_valid(first.member_no)
    assert luhn_valid(second.member_no)


@pytest.mark.parametrize(
    "again", ["13812345678", "１３８１２３４５６７８", "138 1234 5678", "138-1234-5678", "+86 138-1234-5678"]
)
def test_enrol_is_idempotent_on_the_normalised_phone(store, again):
    # given
    first, _ = member_enrol(phone="13812345678", name="王小明", birthday=date(1990, 5, 17), store=store)
    before = _counts()
    # when
    second, created = member_enrol(phone=again, name="王小明", store=store)
    # then
    assert created is False
    assert second.pk == first.pk
    assert _counts() == before


def test_enrol_again_with_fewer_details_returns_member_unchanged(member):
    # given
    before = _counts()
    # when
    again, created = member_enrol(phone="13812345678")
    # then
    assert created is False
    assert again.pk == member.pk
    member.refresh_from_db()
    assert member.name == "王小明"
    assert _counts() == before


@pytest.mark.parametrize(
    ("name", "birthday"),
    [("李四", None), ("", date(2001, 1, 1)), ("李四", date(2001, 1, 1))],
)
def test_enrol_phone_of_other_person_is_refused_and_writes_nothing(store, name, birthday):
    # given
    existing, _ = member_enrol(phone="13812345678", name="王小明", birthday=date(1990, 5, 17), store=store)
    before = _counts()
    # when
    with pytest.raises(PhoneTakenByOther) as raised:
        member_enrol(phone="138-1234-5678", name=name, birthday=birthday, store=store)
    # then
    assert raised.value.code == "phone_registered_to_other"
    assert raised.value.http_status == 409
    assert raised.value.detail == {"member_no": existing.member_no}
    assert _counts() == before
    existing.refresh_from_db()
    assert (existing.name, existing.birthday) == ("王小明", date(1990, 5, 17))


@pytest.mark.parametrize("phone", ["", "12345", "abc", "02112345678"])
def test_enrol_invalid_phone_is_refused_and_writes_nothing(store, phone):
    # given
    before = _counts()
    # when
    with pytest.raises(InvalidPhone) as raised:
        member_enrol(phone=phone, name="王小明", store=store)
    # then
    assert raised.value.code == "invalid_phone"
    assert raised.value.http_status == 400
    assert _counts() == before


def test_enrol_after_close_gives_the_phone_to_a_new_member(member, operator):
    # given
    member_close(member=member, by_user=operator, reason="客户要求注销")
    # when
    newcomer, created = member_enrol(phone="13812345678", name="李四")
    # then
    assert created is True
    assert newcomer.pk != member.pk
    assert newcomer.phone == "+8613812345678"
    member.refresh_from_db()
    assert member.phone is None


# -----------------------------------------------------------------------------
# Freeze / unfreeze
# -----------------------------------------------------------------------------
def test_freeze_and_unfreeze_record_reason_and_actor(member, operator):
    # when
    member_freeze(member=member, by_user=operator, reason="疑似盗刷")
    # then
    member.refresh_from_db()
    assert member.status == Member.Status.FROZEN
    assert member.can_earn is False
    assert member.can_spend is False
    event = MemberEvent.objects.filter(member=member).first()
    assert (event.kind, event.reason, event.by_user) == (MemberEvent.Kind.FROZEN, "疑似盗刷", operator)

    # when
    member_unfreeze(member=member, by_user=operator, reason="核实无误")
    # then
    member.refresh_from_db()
    assert member.status == Member.Status.ACTIVE
    event = MemberEvent.objects.filter(member=member).first()
    assert (event.kind, event.reason, event.by_user) == (MemberEvent.Kind.UNFROZEN, "核实无误", operator)
    assert list(MemberEvent.objects.filter(member=member).values_list("kind", flat=True)) == [
        MemberEvent.Kind.UNFROZEN,
        MemberEvent.Kind.FROZEN,
        MemberEvent.Kind.ENROLLED,
    ]


@pytest.mark.parametrize("reason", ["", "   "])
def test_freeze_without_reason_is_refused_and_changes_nothing(member, operator, reason):
    # given
    before = _counts()
    # when
    with pytest.raises(ReasonRequired):
        member_freeze(member=member, by_user=operator, reason=reason)
    # then
    member.refresh_from_db()
    assert member.status == Member.Status.ACTIVE
    assert _counts() == before


def test_freeze_twice_is_refused(member, operator):
    # given
    member_freeze(member=member, by_user=operator, reason="疑似盗刷")
    before = _counts()
    # when
    with pytest.raises(MemberStatusUnchanged):
        member_freeze(member=member, by_user=operator, reason="again")
    # then
    assert _counts() == before


def test_unfreeze_active_member_is_refused(member, operator):
    # given
    before = _counts()
    # when
    with pytest.raises(MemberStatusUnchanged):
        member_unfreeze(member=member, by_user=operator, reason="nothing to do")
    # then
    member.refresh_from_db()
    assert member.status == Member.Status.ACTIVE
    assert _counts() == before


# -----------------------------------------------------------------------------
# Close
# -----------------------------------------------------------------------------
def test_close_erases_personal_data_revokes_tokens_and_keeps_member_no(store, operator):
    # given
    member, _ = member_enrol(
        phone="13812345678",
        name="王小明",
        birthday=date(1990, 5, 17),
        gender=Member.Gender.MALE,
        store=store,
        marketing_consent=True,
    )
    member_bind_wechat(member=member, openid="o-wx-123")
    token, _ = member_token_issue(member=member)
    member_no, secret = member.member_no, member.code_secret
    # when
    member_close(member=member, by_user=operator, reason="客户要求注销")
    # then
    member.refresh_from_db()
    assert member.status == Member.Status.CLOSED
    assert member.member_no == member_no
    assert member.phone is None
    assert member.name == ""
    assert member.birthday is None
    assert member.gender == Member.Gender.UNKNOWN
    assert member.wechat_openid is None
    assert member.marketing_consent is False
    assert member.code_secret != secret
    assert member.closed_at is not None
    token.refresh_from_db()
    assert token.revoked_at is not None
    assert not MemberEvent.objects.filter(member=member).exclude(data={}).exists()
    event = MemberEvent.objects.filter(member=member).first()
    assert (event.kind, event.reason, event.by_user) == (MemberEvent.Kind.CLOSED, "客户要求注销", operator)


def test_close_twice_is_refused_and_changes_nothing(member, operator):
    # given
    member_close(member=member, by_user=operator, reason="客户要求注销")
    member.refresh_from_db()
    closed_at = member.closed_at
    before = _counts()
    # when
    with pytest.raises(MemberClosed):
        member_close(member=member, by_user=operator, reason="again")
    # then
    member.refresh_from_db()
    assert member.closed_at == closed_at
    assert _counts() == before


def test_close_without_reason_is_refused_and_changes_nothing(member, operator):
    # given
    before = _counts()
    # when
    with pytest.raises(ReasonRequired):
        member_close(member=member, by_user=operator, reason="")
    # then
    member.refresh_from_db()
    assert member.status == Member.Status.ACTIVE
    assert member.phone == "+8613812345678"
    assert _counts() == before


def test_closed_member_cannot_be_frozen_or_get_tokens(member, operator):
    # given
    member_close(member=member, by_user=operator, reason="客户要求注销")
    member.refresh_from_db()
    before = _counts()
    # when / then
    with pytest.raises(MemberClosed):
        member_freeze(member=member, by_user=operator, reason="x")
    with pytest.raises(MemberClosed):
        member_token_issue(member=member)
    assert _counts() == before


# -----------------------------------------------------------------------------
# WeChat binding
# -----------------------------------------------------------------------------
def test_bind_wechat_records_event_and_is_idempotent(member):
    # when
    member_bind_wechat(member=member, openid="o-wx-1")
    member_bind_wechat(member=member, openid="o-wx-1")
    # then
    member.refresh_from_db()
    assert member.wechat_openid == "o-wx-1"
    assert MemberEvent.objects.filter(member=member, kind=MemberEvent.Kind.WECHAT_BOUND).count() == 1


def test_bind_wechat_to_member_bound_elsewhere_is_refused(member):
    # given
    member_bind_wechat(member=member, openid="o-wx-1")
    before = _counts()
    # when
    with pytest.raises(WechatAlreadyBound):
        member_bind_wechat(member=member, openid="o-wx-2")
    # then
    member.refresh_from_db()
    assert member.wechat_openid == "o-wx-1"
    assert _counts() == before


def test_bind_wechat_openid_of_another_member_is_refused(member, store):
    # given
    member_bind_wechat(member=member, openid="o-wx-1")
    other, _ = member_enrol(phone="13912345678", name="李四", store=store)
    before = _counts()
    # when
    with pytest.raises(WechatOpenidTaken) as raised:
        member_bind_wechat(member=other, openid="o-wx-1")
    # then
    assert (raised.value.code, raised.value.http_status) == ("wechat_registered_to_other", 409)
    other.refresh_from_db()
    assert other.wechat_openid is None
    assert _counts() == before


# -----------------------------------------------------------------------------
# Tier
# -----------------------------------------------------------------------------
def test_set_tier_writes_tier_change_and_member_event(member, operator):
    # given
    gold = Tier.objects.get(code="gold")
    until = timezone.now() + timedelta(days=365)
    # when
    member_set_tier(member=member, tier=gold, by_user=operator, reason="VIP 客户补偿", override_until=until)
    # then
    member.refresh_from_db()
    assert member.tier == gold
    assert member.tier_override_until == until
    change = TierChange.objects.filter(member=member).first()
    assert change.from_tier.code == "silver"
    assert change.to_tier == gold
    assert change.reason == TierChange.Reason.MANUAL
    assert change.note == "VIP 客户补偿"
    assert change.override_until == until
    assert change.by_user == operator
    event = MemberEvent.objects.filter(member=member).first()
    assert event.kind == MemberEvent.Kind.TIER_CHANGED
    assert event.reason == "VIP 客户补偿"
    assert event.data == {"from": "silver", "to": "gold"}
    assert event.by_user == operator


def test_set_same_tier_is_refused_and_writes_nothing(member, operator):
    # given
    before = _counts()
    # when
    with pytest.raises(MemberStatusUnchanged):
        member_set_tier(member=member, tier=member.tier, by_user=operator, reason="no change")
    # then
    assert _counts() == before


def test_set_tier_without_reason_is_refused(member, operator):
    # given
    before = _counts()
    # when
    with pytest.raises(ReasonRequired):
        member_set_tier(member=member, tier=Tier.objects.get(code="gold"), by_user=operator, reason=" ")
    # then
    member.refresh_from_db()
    assert member.tier.code == "silver"
    assert _counts() == before


# -----------------------------------------------------------------------------
# Concurrency
# -----------------------------------------------------------------------------
@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("_default_tiers_restored")
def test_concurrent_enrolment_of_one_phone_creates_exactly_one_member():
    # given eight tills enrolling the same customer at the same moment
    _create_default_tiers()  # an earlier transactional test may have flushed them
    threads_count = 8
    barrier = threading.Barrier(threads_count)
    results: list[tuple[int, bool]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def enrol(spelling: str) -> None:
        try:
            barrier.wait(timeout=10)
            member, created = member_enrol(phone=spelling, name="王小明")
            with lock:
                results.append((member.pk, created))
        except BaseException as exc:
            with lock:
                errors.append(exc)
        finally:
            connection.close()

    spellings = ["13812345678", "１３８１２３４５６７８", "138 1234 5678", "138-1234-5678"] * 2
    threads = [threading.Thread(target=enrol, args=(spelling,)) for spelling in spellings]
    # when
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    # then
    assert errors == []
    assert len(results) == threads_count
    assert Member.objects.count() == 1
    member = Member.objects.get()
    assert member.phone == "+8613812345678"
    assert {pk for pk, _ in results} == {member.pk}
    assert sorted(created for _, created in results) == [False] * 7 + [True]
    assert MemberEvent.objects.filter(member=member, kind=MemberEvent.Kind.ENROLLED).count() == 1
    assert TierChange.objects.filter(member=member).count() == 1
