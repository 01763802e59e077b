"""Admin of the members app: search, filters, operations through services,
terminal keys shown once, read-only audit trail."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.contrib.messages import get_messages
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from loyalty import throttle
from loyalty.models import Heartbeat
from loyalty.roles import OPERATOR
from members.errors import InvalidMemberCode
from members.models import Member, MemberEvent, StaffProfile, Store, Terminal, TerminalAPIKey, Tier, TierChange
from members.selectors import member_code_current, member_get_by_code
from members.services import member_enrol, member_freeze, member_set_tier, terminal_revoke

pytestmark = pytest.mark.django_db

PHONE_E164 = "+8613812345678"  # the conftest member's phone
CHANGELIST = "admin:members_member_changelist"


def _url(name: str, *args: Any) -> str:
    return reverse(name, args=args)


def _messages(response: Any) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


def _action(client: Client, url: str, action: str, objects: list[Any], confirm: dict[str, Any] | None = None) -> Any:
    """Post a changelist action as chosen on the changelist, or, with ``confirm``,
    as submitted from its confirmation page."""
    selected = [str(obj.pk) for obj in objects]
    if confirm is None:
        return client.post(url, {"action": action, "_selected_action": selected, "index": "0"})
    return client.post(url, {"action": action, "_selected_action": selected, "post": "yes", **confirm})


def _api_key(key: str) -> TerminalAPIKey:
    """The stored row of a plain key, revoked or not (the manager finds usable keys only)."""
    api_key = TerminalAPIKey.objects.get(prefix=key.partition(".")[0])
    assert api_key.is_valid(key)
    return api_key


@pytest.fixture
def operator(db: Any) -> Any:
    user = get_user_model().objects.create_user(username="op", password="x", is_staff=True)
    user.groups.add(Group.objects.get(name=OPERATOR))
    return user


@pytest.fixture
def operator_client(operator: Any) -> Client:
    client = Client()
    client.force_login(operator)
    return client


@pytest.fixture
def gold() -> Tier:
    return Tier.objects.get(code="gold")


@pytest.fixture
def other_member(other_store: Store) -> Member:
    member, _ = member_enrol(phone="13900001111", name="李雷", store=other_store, channel=Member.Channel.MINI_PROGRAM)
    return member


# -----------------------------------------------------------------------------
# Member list: search and filters
# -----------------------------------------------------------------------------
@pytest.mark.parametrize("typed", ["13812345678", "138 1234 5678", "+86 138-1234-5678"])
def test_member_search_by_typed_phone_finds_the_member(operator_client, member, other_member, typed):
    # when
    response = operator_client.get(_url(CHANGELIST), {"q": typed})
    # then
    assert response.status_code == 200
    assert list(response.context["cl"].result_list) == [member]
    assert PHONE_E164 in response.content.decode()


@pytest.mark.parametrize(("field", "expected"), [("member_no", "member"), ("name", "other_member")])
def test_member_search_by_member_number_and_name(operator_client, member, other_member, field, expected):
    wanted = {"member": member, "other_member": other_member}[expected]
    # when
    response = operator_client.get(_url(CHANGELIST), {"q": getattr(wanted, field)})
    # then
    assert list(response.context["cl"].result_list) == [wanted]


def test_member_search_with_an_unknown_phone_finds_nobody(operator_client, member):
    response = operator_client.get(_url(CHANGELIST), {"q": "13700000000"})
    assert list(response.context["cl"].result_list) == []


def test_member_list_filters(operator_client, member, other_member, store, gold, admin_user):
    # given: member frozen, other_member gold
    member_freeze(member=member, by_user=admin_user, reason="test")
    member_set_tier(member=other_member, tier=gold, by_user=admin_user, reason="VIP")
    url = _url(CHANGELIST)
    cases = [
        ({"status__exact": "frozen"}, [member]),
        ({"status__exact": "active"}, [other_member]),
        ({"tier__id__exact": gold.pk}, [other_member]),
        ({"registration_store__id__exact": store.pk}, [member]),
        ({"channel__exact": "mini_program"}, [other_member]),
    ]
    for params, expected in cases:
        # when
        response = operator_client.get(url, params)
        # then
        assert response.status_code == 200, params
        assert list(response.context["cl"].result_list) == expected, params


@pytest.mark.parametrize(
    "lookup", ["phone__startswith", "phone", "code_secret__startswith", "wechat_openid__isnull", "name__startswith"]
)
def test_member_list_refuses_url_lookups_outside_the_filters(admin_client, member, lookup):
    # Otherwise ?phone__startswith= or ?code_secret__startswith= could be probed
    # one character at a time.
    response = admin_client.get(_url(CHANGELIST), {lookup: "+86138"})
    assert response.status_code == 400


# -----------------------------------------------------------------------------
# Freeze / unfreeze / close: confirmation page with a reason, then the service
# -----------------------------------------------------------------------------
def test_freeze_action_asks_for_a_reason_before_freezing(operator_client, member):
    # when the action is chosen on the changelist
    response = _action(operator_client, _url(CHANGELIST), "freeze_members", [member])
    # then a confirmation page asks for the reason; nothing changed yet
    assert response.status_code == 200
    assert "admin/members/confirm_operation.html" in [t.name for t in response.templates]
    assert 'name="reason"' in response.content.decode()
    member.refresh_from_db()
    assert member.status == Member.Status.ACTIVE
    assert not MemberEvent.objects.filter(member=member, kind=MemberEvent.Kind.FROZEN).exists()


def test_freeze_action_without_a_reason_changes_nothing(operator_client, member):
    # when
    response = _action(operator_client, _url(CHANGELIST), "freeze_members", [member], {"reason": "   "})
    # then the page is shown again with the error
    assert response.status_code == 200
    assert response.context["form"].errors["reason"] == ["A reason is required."]
    member.refresh_from_db()
    assert member.status == Member.Status.ACTIVE
    assert not MemberEvent.objects.filter(member=member, kind=MemberEvent.Kind.FROZEN).exists()


def test_freeze_action_freezes_with_the_reason_and_the_operator(operator_client, operator, member, other_member):
    # when
    response = _action(
        operator_client, _url(CHANGELIST), "freeze_members", [member, other_member], {"reason": "Suspected fraud"}
    )
    # then
    assert response.status_code == 302
    assert _messages(response) == ["2 members frozen."]
    for frozen in (member, other_member):
        frozen.refresh_from_db()
        assert frozen.status == Member.Status.FROZEN
        event = MemberEvent.objects.get(member=frozen, kind=MemberEvent.Kind.FROZEN)
        assert (event.reason, event.by_user) == ("Suspected fraud", operator)


def test_freeze_of_a_frozen_member_is_reported_and_changes_nothing(operator_client, member, admin_user):
    # given
    member_freeze(member=member, by_user=admin_user, reason="first")
    events_before = list(MemberEvent.objects.filter(member=member).values_list("pk", flat=True))
    # when
    response = _action(operator_client, _url(CHANGELIST), "freeze_members", [member], {"reason": "again"})
    # then
    assert response.status_code == 302
    assert _messages(response) == [f"{member.member_no}: The member is already Frozen."]
    assert list(MemberEvent.objects.filter(member=member).values_list("pk", flat=True)) == events_before


def test_freeze_button_on_the_member_page(operator_client, operator, member):
    change_url = _url("admin:members_member_change", member.pk)
    freeze_url = _url("admin:members_member_freeze", member.pk)
    # given the member page offers the operation, and no save button
    page = operator_client.get(change_url).content.decode()
    assert freeze_url in page
    assert 'name="_save"' not in page
    # when
    assert operator_client.get(freeze_url).status_code == 200
    response = operator_client.post(freeze_url, {"post": "yes", "reason": "Card reported lost"})
    # then
    assert response.status_code == 302
    assert response["Location"] == change_url
    member.refresh_from_db()
    assert member.status == Member.Status.FROZEN
    event = MemberEvent.objects.get(member=member, kind=MemberEvent.Kind.FROZEN)
    assert (event.reason, event.by_user) == ("Card reported lost", operator)


def test_unfreeze_action(operator_client, operator, member, admin_user):
    # given
    member_freeze(member=member, by_user=admin_user, reason="test")
    # when
    response = _action(operator_client, _url(CHANGELIST), "unfreeze_members", [member], {"reason": "Cleared"})
    # then
    assert response.status_code == 302
    member.refresh_from_db()
    assert member.status == Member.Status.ACTIVE
    event = MemberEvent.objects.get(member=member, kind=MemberEvent.Kind.UNFROZEN)
    assert (event.reason, event.by_user) == ("Cleared", operator)


def test_close_erases_personal_data_and_keeps_the_member_number(operator_client, operator, member):
    member_no = member.member_no
    url = _url("admin:members_member_close", member.pk)
    # when
    response = operator_client.post(url, {"post": "yes", "reason": "Member asked to leave"})
    # then
    assert response.status_code == 302
    member.refresh_from_db()
    assert (member.status, member.member_no, member.phone, member.name) == (
        Member.Status.CLOSED,
        member_no,
        None,
        "",
    )
    assert MemberEvent.objects.get(member=member, kind=MemberEvent.Kind.CLOSED).by_user == operator
    # and a closed member's page offers no more operations
    page = operator_client.get(_url("admin:members_member_change", member.pk)).content.decode()
    assert url not in page
    assert _url("admin:members_member_freeze", member.pk) not in page


# -----------------------------------------------------------------------------
# Manual tier change
# -----------------------------------------------------------------------------
def test_set_tier_action_records_a_manual_tier_change(operator_client, operator, member, gold):
    until = timezone.localtime() + timedelta(days=90)
    # when
    response = _action(
        operator_client,
        _url(CHANGELIST),
        "set_tier_members",
        [member],
        {
            "tier": gold.pk,
            "override_until": until.strftime("%Y-%m-%dT%H:%M"),
            "reason": "Compensation for a complaint",
        },
    )
    # then
    assert response.status_code == 302, response.content
    member.refresh_from_db()
    expected_until = until.replace(second=0, microsecond=0)
    assert (member.tier, member.tier_override_until) == (gold, expected_until)
    change = TierChange.objects.get(member=member, reason=TierChange.Reason.MANUAL)
    assert (change.from_tier.code, change.to_tier, change.note, change.override_until, change.by_user) == (
        "silver",
        gold,
        "Compensation for a complaint",
        expected_until,
        operator,
    )


def test_set_tier_refuses_a_past_override_and_changes_nothing(operator_client, member, gold):
    url = _url("admin:members_member_tier", member.pk)
    past = timezone.localtime() - timedelta(days=1)
    # when
    response = operator_client.post(
        url, {"post": "yes", "tier": gold.pk, "override_until": past.strftime("%Y-%m-%dT%H:%M"), "reason": "x"}
    )
    # then
    assert response.status_code == 200
    assert "override_until" in response.context["form"].errors
    member.refresh_from_db()
    assert member.tier.code == "silver"
    assert not TierChange.objects.filter(member=member, reason=TierChange.Reason.MANUAL).exists()


def test_set_tier_without_a_reason_changes_nothing(operator_client, member, gold):
    url = _url("admin:members_member_tier", member.pk)
    response = operator_client.post(url, {"post": "yes", "tier": gold.pk, "reason": ""})
    assert response.status_code == 200
    member.refresh_from_db()
    assert member.tier.code == "silver"
    assert TierChange.objects.filter(member=member).count() == 1  # the enrolment


# -----------------------------------------------------------------------------
# Enrolment and editing
# -----------------------------------------------------------------------------
def test_member_add_enrols_through_the_service(operator_client, operator, store):
    # when
    response = operator_client.post(
        _url("admin:members_member_add"),
        {
            "phone": "139 0000 2222",
            "name": "韩梅梅",
            "gender": "female",
            "birthday": "1990-05-01",
            "registration_store": store.pk,
            "channel": "store",
            "referrer": "",
        },
    )
    # then
    assert response.status_code == 302
    member = Member.objects.get(phone="+8613900002222")
    assert "was added successfully" in _messages(response)[0]
    assert (member.name, member.registration_store, member.tier.code, member.status) == (
        "韩梅梅",
        store,
        "silver",
        Member.Status.ACTIVE,
    )
    assert len(member.member_no) == 10
    # the service's audit rows prove the enrolment went through member_enrol
    assert MemberEvent.objects.get(member=member, kind=MemberEvent.Kind.ENROLLED).by_user == operator
    assert TierChange.objects.get(member=member).reason == TierChange.Reason.ENROLMENT


@pytest.mark.parametrize(
    ("phone", "error"),
    [
        ("12345", "“12345” is not a valid mobile phone number."),
        ("138-1234-5678", "This phone number is already registered to member {member_no}."),
    ],
)
def test_member_add_refuses_invalid_or_registered_phone(operator_client, member, phone, error):
    count = Member.objects.count()
    # when
    response = operator_client.post(
        _url("admin:members_member_add"), {"phone": phone, "name": "韩梅梅", "gender": "unknown", "channel": "store"}
    )
    # then
    assert response.status_code == 200
    assert response.context["adminform"].form.errors["phone"] == [error.format(member_no=member.member_no)]
    assert Member.objects.count() == count


def test_member_change_post_writes_nothing(operator_client, member):
    # given
    before = Member.objects.values().get(pk=member.pk)
    # when an edit is posted anyway
    response = operator_client.post(
        _url("admin:members_member_change", member.pk),
        {"name": "Someone else", "phone": "13900009999", "status": "closed"},
    )
    # then
    assert response.status_code in (200, 302)
    assert Member.objects.values().get(pk=member.pk) == before


def test_member_cannot_be_deleted_even_by_a_superuser(admin_client, member):
    # when
    page = admin_client.get(_url("admin:members_member_delete", member.pk))
    post = admin_client.post(_url("admin:members_member_delete", member.pk), {"post": "yes"})
    action = admin_client.post(
        _url(CHANGELIST), {"action": "delete_selected", "_selected_action": [member.pk], "post": "yes"}
    )
    # then
    assert (page.status_code, post.status_code, action.status_code) == (403, 403, 403)
    assert Member.objects.filter(pk=member.pk).exists()


def test_member_page_shows_tier_history_and_events(admin_client, member, admin_user):
    # given
    member_freeze(member=member, by_user=admin_user, reason="Chargeback dispute")
    # when
    response = admin_client.get(_url("admin:members_member_change", member.pk))
    # then
    assert response.status_code == 200
    page = response.content.decode()
    assert "Chargeback dispute" in page
    assert "Enrolment" in page
    assert f"{_url('admin:members_tierchange_changelist')}?member__id__exact={member.pk}" in page
    assert f"{_url('admin:members_memberevent_changelist')}?member__id__exact={member.pk}" in page


def test_tier_history_changelist_filters_by_member(admin_client, member, other_member):
    response = admin_client.get(_url("admin:members_tierchange_changelist"), {"member__id__exact": member.pk})
    assert response.status_code == 200
    assert [change.member for change in response.context["cl"].result_list] == [member]


# -----------------------------------------------------------------------------
# The audit trail is read-only for everyone
# -----------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["tierchange", "memberevent"])
def test_audit_trail_is_read_only_for_a_superuser(admin_client, member, model):
    row = (TierChange if model == "tierchange" else MemberEvent).objects.get(member=member)
    before = type(row).objects.values().get(pk=row.pk)
    # when
    add = admin_client.get(_url(f"admin:members_{model}_add"))
    view = admin_client.get(_url(f"admin:members_{model}_change", row.pk))
    change = admin_client.post(_url(f"admin:members_{model}_change", row.pk), {"reason": "upgrade", "note": "x"})
    delete = admin_client.post(_url(f"admin:members_{model}_delete", row.pk), {"post": "yes"})
    bulk_delete = admin_client.post(
        _url(f"admin:members_{model}_changelist"),
        {"action": "delete_selected", "_selected_action": [row.pk], "post": "yes"},
    )
    changelist = admin_client.get(_url(f"admin:members_{model}_changelist"))
    # then
    assert (add.status_code, view.status_code, change.status_code) == (403, 200, 403)
    assert (delete.status_code, bulk_delete.status_code) == (403, 403)
    assert changelist.status_code == 200
    assert "delete_selected" not in changelist.content.decode()
    assert type(row).objects.values().get(pk=row.pk) == before


# -----------------------------------------------------------------------------
# Tiers and stores
# -----------------------------------------------------------------------------
def test_operator_edits_a_tier_but_not_its_code(operator_client, gold):
    # when
    response = operator_client.post(
        _url("admin:members_tier_change", gold.pk),
        {
            "code": "renamed",
            "name": "金卡 Gold",
            "rank": gold.rank,
            "threshold": "6000.00",
            "qualification_months": 12,
            "validity_months": 12,
            "earn_multiplier": "1.25",
            "discount_rate": "0.88",
            "is_active": "on",
        },
    )
    # then
    assert response.status_code == 302
    gold.refresh_from_db()
    assert (gold.code, str(gold.threshold)) == ("gold", "6000.00")


def test_operator_adds_a_store(operator_client):
    response = operator_client.post(
        _url("admin:members_store_add"),
        {
            "code": "GZ001",
            "name": "广州天河店",
            "city": "广州",
            "address": "",
            "is_active": "on",
            "terminals-TOTAL_FORMS": "0",
            "terminals-INITIAL_FORMS": "0",
        },
    )
    assert response.status_code == 302
    assert Store.objects.get(code="GZ001").name == "广州天河店"


# -----------------------------------------------------------------------------
# Terminals: the plain key is shown once, only hashes are stored
# -----------------------------------------------------------------------------
def test_terminal_add_creates_it_through_the_service_and_shows_the_key_once(operator_client, store):
    # when
    response = operator_client.post(_url("admin:members_terminal_add"), {"store": store.pk, "name": "till-9"})
    # then
    assert response.status_code == 302
    terminal = Terminal.objects.get(store=store, name="till-9")
    key_messages = [text for text in _messages(response) if "shown only this once" in text]
    assert len(key_messages) == 1
    key = key_messages[0].rsplit(": ", 1)[1]
    api_key = TerminalAPIKey.objects.get_from_key(key)
    assert api_key.terminal == terminal
    assert key not in (api_key.hashed_key, api_key.id)
    # and the key is shown on the next page only, never again
    change_url = _url("admin:members_terminal_change", terminal.pk)
    assert key in operator_client.get(response["Location"]).content.decode()
    page = operator_client.get(change_url).content.decode()
    assert key not in page
    assert api_key.prefix in page


def test_terminal_add_refuses_a_duplicate_name(operator_client, terminal):
    response = operator_client.post(
        _url("admin:members_terminal_add"), {"store": terminal.store.pk, "name": terminal.name}
    )
    assert response.status_code == 200
    assert Terminal.objects.filter(store=terminal.store).count() == 1


def test_terminal_revoke_action(operator_client, terminal_with_key):
    terminal, key = terminal_with_key
    url = _url("admin:members_terminal_changelist")
    # when
    confirmation = _action(operator_client, url, "revoke_terminals", [terminal])
    response = _action(operator_client, url, "revoke_terminals", [terminal], {})
    # then
    assert confirmation.status_code == 200
    assert response.status_code == 302
    terminal.refresh_from_db()
    assert terminal.is_active is False
    assert _api_key(key).revoked is True


def test_terminal_rotate_key_shows_the_new_key_once(operator_client, terminal_with_key):
    terminal, old_key = terminal_with_key
    url = _url("admin:members_terminal_rotate", terminal.pk)
    # when
    assert operator_client.get(url).status_code == 200
    response = operator_client.post(url, {"post": "yes"})
    # then
    assert response.status_code == 302
    key_messages = [text for text in _messages(response) if "shown only this once" in text]
    assert len(key_messages) == 1
    new_key = key_messages[0].rsplit(": ", 1)[1]
    assert _api_key(new_key).revoked is False
    assert _api_key(old_key).revoked is True
    assert TerminalAPIKey.objects.filter(terminal=terminal).count() == 2


def test_terminal_rotate_refuses_a_revoked_terminal(operator_client, terminal):
    # given
    terminal_revoke(terminal=terminal)
    # when
    response = _action(
        operator_client, _url("admin:members_terminal_changelist"), "rotate_terminal_keys", [terminal], {}
    )
    # then
    assert response.status_code == 302
    assert _messages(response) == [f"{terminal}: The terminal is revoked; a new key would not work."]
    assert not TerminalAPIKey.objects.filter(terminal=terminal, revoked=False).exists()


def test_an_operator_lifts_a_terminal_block_and_its_count_starts_again(operator_client, terminal, member, settings):
    # given a terminal blocked after too many failed lookups
    code, _ = member_code_current(member=member)
    for _ in range(settings.LOYALTY_IDENTIFY_FAILURES_LIMIT):
        with pytest.raises(InvalidMemberCode):
            member_get_by_code(code=code[:-6] + str((int(code[-6:]) + 1) % 10**6).zfill(6), terminal=terminal)
    throttle.blocks_save(terminal)
    terminal.refresh_from_db()
    assert terminal.identify_blocked_until is not None
    url = _url("admin:members_terminal_change", terminal.pk)
    page = operator_client.get(url)
    assert page.status_code == 200
    assert "identify_blocked_until" in page.content.decode()
    # when the operator clears the block (the rest of the form is read-only)
    form = page.context["adminform"].form
    data = {"identify_blocked_until_0": "", "identify_blocked_until_1": "", "coupon_blocked_until_0": "",
            "coupon_blocked_until_1": ""}
    for formset in page.context["inline_admin_formsets"]:
        management = formset.formset.management_form
        data.update({management.add_prefix(name): value for name, value in management.initial.items()})
        for inline_form in formset.formset.forms:
            pk_field = inline_form._meta.model._meta.pk.name
            data[inline_form.add_prefix(pk_field)] = inline_form.instance.pk
            data[inline_form.add_prefix(formset.formset.fk.name)] = terminal.pk
    assert "identify_blocked_until" in form.fields
    response = operator_client.post(url, data)
    # then the terminal identifies again, and one more failure does not block it at once
    assert response.status_code == 302, response.content.decode()[:2000]
    terminal.refresh_from_db()
    assert terminal.identify_blocked_until is None
    assert member_get_by_code(code=code, terminal=terminal).member == member
    with pytest.raises(InvalidMemberCode):
        member_get_by_code(code=code[:-6] + str((int(code[-6:]) + 1) % 10**6).zfill(6), terminal=terminal)
    throttle.blocks_save(terminal)
    terminal.refresh_from_db()
    assert terminal.identify_blocked_until is None


def test_terminal_api_keys_cannot_be_added_or_changed_in_admin(admin_client, terminal):
    api_key = TerminalAPIKey.objects.get(terminal=terminal)
    # when
    add = admin_client.get(_url("admin:members_terminalapikey_add"))
    change = admin_client.post(_url("admin:members_terminalapikey_change", api_key.pk), {"revoked": "on"})
    changelist = admin_client.get(_url("admin:members_terminalapikey_changelist"))
    # then
    assert (add.status_code, change.status_code, changelist.status_code) == (403, 403, 200)
    assert api_key.hashed_key not in changelist.content.decode()
    api_key.refresh_from_db()
    assert api_key.revoked is False


def test_library_api_key_admin_is_not_offered(admin_client):
    response = admin_client.get("/admin/rest_framework_api_key/apikey/add/")
    assert response.status_code == 404


# -----------------------------------------------------------------------------
# Staff profiles and heartbeats
# -----------------------------------------------------------------------------
def test_superuser_binds_a_user_to_a_store(admin_client, operator, store):
    # when
    response = admin_client.post(_url("admin:members_staffprofile_add"), {"user": operator.pk, "store": store.pk})
    # then
    assert response.status_code == 302
    assert StaffProfile.objects.get(user=operator).store == store
    # and the profile is an inline of the user's page
    page = admin_client.get(_url("admin:auth_user_change", operator.pk)).content.decode()
    assert "staff_profile-TOTAL_FORMS" in page


def test_operator_cannot_bind_staff_to_stores(operator_client, operator, store):
    response = operator_client.post(_url("admin:members_staffprofile_add"), {"user": operator.pk, "store": store.pk})
    assert response.status_code == 403
    assert not StaffProfile.objects.exists()


def test_heartbeat_admin_is_read_only(admin_client):
    beat = Heartbeat.objects.create(name="beat", at=timezone.now())
    # when
    add = admin_client.get(_url("admin:loyalty_heartbeat_add"))
    view = admin_client.get(_url("admin:loyalty_heartbeat_change", beat.pk))
    change = admin_client.post(_url("admin:loyalty_heartbeat_change", beat.pk), {"at": "2020-01-01 00:00:00"})
    delete = admin_client.post(_url("admin:loyalty_heartbeat_delete", beat.pk), {"post": "yes"})
    # then
    assert (add.status_code, view.status_code, change.status_code, delete.status_code) == (403, 200, 403, 403)
    assert Heartbeat.objects.get(pk="beat").at == beat.at


# -----------------------------------------------------------------------------
# CSV import page (members.admin_views), routed by the Member admin
# -----------------------------------------------------------------------------
def test_member_import_page_is_linked_from_the_member_list(operator_client):
    import_url = _url("admin:members_member_import")
    # when
    listing = operator_client.get(_url(CHANGELIST))
    page = operator_client.get(import_url)
    # then
    assert import_url == "/admin/members/member/import/"
    assert import_url in listing.content.decode()
    assert page.status_code == 200
    assert "admin/members/member_import.html" in [t.name for t in page.templates]


# -----------------------------------------------------------------------------
# Tags by operators
# -----------------------------------------------------------------------------
def test_operator_tags_members_with_an_existing_and_a_new_tag(operator_client, member, other_member):
    from members.models import MemberTag

    # given an existing tag
    vip = MemberTag.objects.create(name="VIP")
    # when the operator tags two members, adding a new tag on the way
    response = _action(
        operator_client,
        _url(CHANGELIST),
        "tag_members",
        [member, other_member],
        {"tags": [vip.pk], "new_tag": "团购客户"},
    )
    # then both have both tags, once
    assert response.status_code == 302
    for tagged in (member, other_member):
        assert sorted(tagged.tags.values_list("name", flat=True)) == ["VIP", "团购客户"]


def test_tagging_without_any_tag_changes_nothing(operator_client, member):
    response = _action(operator_client, _url(CHANGELIST), "tag_members", [member], {"new_tag": "  "})
    assert response.status_code == 200
    assert member.tags.count() == 0
