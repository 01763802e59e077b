"""Staff roles (loyalty.roles): each can do what it should in the admin, and a
refused attempt changes nothing."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.test import Client
from django.urls import reverse

from loyalty.models import Heartbeat
from loyalty.roles import AUDITOR, CLERK, MARKETING, OPERATOR, ROLE_PERMISSIONS, STORE_MANAGER
from members.models import Member, MemberEvent, StaffProfile, Store, Terminal, Tier, TierChange
from members.services import member_enrol, member_freeze, terminal_create

pytestmark = pytest.mark.django_db

PHONE_E164 = "+8613812345678"  # the conftest member's phone, registered at SH001
PHONE_MASKED = "138****5678"
CHANGELIST = "admin:members_member_changelist"


def _url(name: str, *args: Any) -> str:
    return reverse(name, args=args)


def _staff(username: str, role: str | None, store: Store | None = None) -> Any:
    user = get_user_model().objects.create_user(username=username, password="x", is_staff=True)
    if role is not None:
        user.groups.add(Group.objects.get(name=role))
    if store is not None:
        StaffProfile.objects.create(user=user, store=store)
    return user


def _client(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _freeze_via_action(client: Client, member: Member, reason: str = "Fraud") -> Any:
    return client.post(
        _url(CHANGELIST),
        {"action": "freeze_members", "_selected_action": [member.pk], "post": "yes", "reason": reason},
    )


def _member_state(member: Member) -> tuple[dict[str, Any], list[int], list[int]]:
    return (
        Member.objects.values().get(pk=member.pk),
        list(MemberEvent.objects.filter(member=member).values_list("pk", flat=True)),
        list(TierChange.objects.filter(member=member).values_list("pk", flat=True)),
    )


@pytest.fixture
def other_member(other_store: Store) -> Member:
    member, _ = member_enrol(phone="13900001111", name="李雷", store=other_store)
    return member


@pytest.fixture
def other_terminal(other_store: Store) -> Terminal:
    return terminal_create(store=other_store, name="till-bj")[0]


# -----------------------------------------------------------------------------
# The permission table
# -----------------------------------------------------------------------------
def test_every_role_group_exists_with_its_permissions():
    for role in ROLE_PERMISSIONS:
        assert Group.objects.get(name=role).permissions.exists(), role


def test_no_role_may_delete_anything():
    assert not Permission.objects.filter(group__name__in=ROLE_PERMISSIONS, codename__startswith="delete_").exists()


def test_only_operators_see_full_phones():
    holders = set(
        Group.objects.filter(
            permissions__codename="view_member_phone", permissions__content_type__app_label="members"
        ).values_list("name", flat=True)
    )
    assert holders == {OPERATOR}


@pytest.mark.parametrize(
    ("role", "codename", "held"),
    [
        (OPERATOR, "change_member", True),
        (OPERATOR, "add_terminal", True),
        (OPERATOR, "add_tierchange", False),
        (OPERATOR, "change_staffprofile", False),
        (MARKETING, "view_member", True),
        (MARKETING, "change_member", False),
        (MARKETING, "view_memberevent", False),
        (AUDITOR, "view_memberevent", True),
        (AUDITOR, "view_heartbeat", True),
        (AUDITOR, "change_member", False),
        (STORE_MANAGER, "view_terminal", True),
        (STORE_MANAGER, "change_member", False),
        (STORE_MANAGER, "view_terminalapikey", False),
    ],
)
def test_role_permissions(role, codename, held):
    assert Group.objects.filter(name=role, permissions__codename=codename).exists() is held


# -----------------------------------------------------------------------------
# Operator
# -----------------------------------------------------------------------------
def test_operator_freezes_with_a_reason_and_sees_the_full_phone(member):
    operator = _staff("op", OPERATOR)
    client = _client(operator)
    # when
    listing = client.get(_url(CHANGELIST))
    response = _freeze_via_action(client, member, reason="Chargeback")
    # then
    assert listing.status_code == 200
    assert PHONE_E164 in listing.content.decode()
    assert response.status_code == 302
    member.refresh_from_db()
    assert member.status == Member.Status.FROZEN
    event = MemberEvent.objects.get(member=member, kind=MemberEvent.Kind.FROZEN)
    assert (event.reason, event.by_user) == ("Chargeback", operator)


def test_operator_cannot_delete_members_or_audit_rows(member):
    client = _client(_staff("op", OPERATOR))
    before = _member_state(member)
    event = MemberEvent.objects.get(member=member)
    # when
    responses = [
        client.post(_url("admin:members_member_delete", member.pk), {"post": "yes"}),
        client.post(_url("admin:members_memberevent_delete", event.pk), {"post": "yes"}),
        client.get(_url("admin:members_tierchange_add")),
    ]
    # then
    assert [response.status_code for response in responses] == [403, 403, 403]
    assert _member_state(member) == before


# -----------------------------------------------------------------------------
# Marketing: reads members without their phones, changes nothing
# -----------------------------------------------------------------------------
def test_marketing_sees_only_masked_phones_in_list_search_and_detail(member):
    client = _client(_staff("mkt", MARKETING))
    # when
    listing = client.get(_url(CHANGELIST))
    search = client.get(_url(CHANGELIST), {"q": "13812345678"})
    detail = client.get(_url("admin:members_member_change", member.pk))
    # then
    assert (listing.status_code, search.status_code, detail.status_code) == (200, 200, 200)
    assert list(search.context["cl"].result_list) == [member]
    for response in (listing, search, detail):
        page = response.content.decode()
        assert PHONE_MASKED in page
        assert "8613812345678" not in page
    assert "13812345678" not in listing.content.decode() + detail.content.decode()


def test_marketing_cannot_probe_phones_through_url_filters(member):
    client = _client(_staff("mkt", MARKETING))
    response = client.get(_url(CHANGELIST), {"phone__startswith": "+86138"})
    assert response.status_code == 400


def test_marketing_cannot_freeze_or_edit(member):
    client = _client(_staff("mkt", MARKETING))
    before = _member_state(member)
    # when
    responses = [
        _freeze_via_action(client, member),
        client.post(_url("admin:members_member_freeze", member.pk), {"post": "yes", "reason": "x"}),
        client.post(_url("admin:members_member_change", member.pk), {"name": "X"}),
        client.get(_url("admin:members_member_add")),
        client.get(_url("admin:members_memberevent_changelist")),
    ]
    # then
    assert [response.status_code for response in responses] == [403, 403, 403, 403, 403]
    assert _member_state(member) == before


# -----------------------------------------------------------------------------
# Auditor: reads everything, changes nothing
# -----------------------------------------------------------------------------
def test_auditor_views_members_events_and_heartbeats(member):
    client = _client(_staff("aud", AUDITOR))
    Heartbeat.objects.create(name="beat", at=member.created_at)
    # when
    responses = [
        client.get(_url(CHANGELIST)),
        client.get(_url("admin:members_member_change", member.pk)),
        client.get(_url("admin:members_memberevent_changelist")),
        client.get(_url("admin:members_terminalapikey_changelist")),
        client.get(_url("admin:loyalty_heartbeat_changelist")),
    ]
    # then
    assert [response.status_code for response in responses] == [200, 200, 200, 200, 200]
    detail = responses[1].content.decode()
    assert PHONE_MASKED in detail
    assert "8613812345678" not in detail
    # the view page offers no operations and no save button
    assert _url("admin:members_member_freeze", member.pk) not in detail
    assert 'name="_save"' not in detail


def test_auditor_gets_403_on_change_add_and_actions_and_nothing_changes(member, store):
    client = _client(_staff("aud", AUDITOR))
    before = _member_state(member)
    # when
    responses = [
        client.get(_url("admin:members_member_add")),
        client.post(_url("admin:members_member_add"), {"phone": "13900002222", "gender": "unknown"}),
        client.post(_url("admin:members_member_change", member.pk), {"name": "X"}),
        _freeze_via_action(client, member),
        client.post(_url(CHANGELIST), {"action": "freeze_members", "_selected_action": [member.pk], "index": "0"}),
        client.get(_url("admin:members_member_freeze", member.pk)),
        client.post(_url("admin:members_member_close", member.pk), {"post": "yes", "reason": "x"}),
        client.post(_url("admin:members_terminal_add"), {"store": store.pk, "name": "till-x"}),
        client.post(_url("admin:members_store_change", store.pk), {"name": "Renamed"}),
        client.get(_url("admin:members_member_import")),
    ]
    # then
    assert [response.status_code for response in responses] == [403] * len(responses)
    assert _member_state(member) == before
    assert Member.objects.count() == 1
    assert _url("admin:members_member_import") not in client.get(_url(CHANGELIST)).content.decode()
    assert not Terminal.objects.exists()
    store.refresh_from_db()
    assert store.name == "上海南京西路店"


# -----------------------------------------------------------------------------
# Store manager: only their own store, read-only
# -----------------------------------------------------------------------------
def test_store_manager_lists_only_members_of_their_store(member, other_member, store):
    client = _client(_staff("mgr", STORE_MANAGER, store=store))
    # when
    response = client.get(_url(CHANGELIST))
    search = client.get(_url(CHANGELIST), {"q": "13900001111"})  # the other store's member
    # then
    assert response.status_code == 200
    assert list(response.context["cl"].result_list) == [member]
    assert PHONE_MASKED in response.content.decode()
    assert "8613812345678" not in response.content.decode()
    assert list(search.context["cl"].result_list) == []


def test_store_manager_gets_404_for_another_stores_member(member, other_member, store):
    client = _client(_staff("mgr", STORE_MANAGER, store=store))
    # when
    own = client.get(_url("admin:members_member_change", member.pk))
    other = client.get(_url("admin:members_member_change", other_member.pk))
    other_history = client.get(_url("admin:members_member_history", other_member.pk))
    missing = client.get(_url("admin:members_member_change", 987654321))
    # then
    assert (own.status_code, other.status_code, other_history.status_code, missing.status_code) == (
        200,
        404,
        404,
        404,
    )
    assert other_member.member_no not in other.content.decode()


def test_store_manager_sees_only_their_store_terminals_and_tier_history(
    member, other_member, store, other_store, terminal, other_terminal
):
    client = _client(_staff("mgr", STORE_MANAGER, store=store))
    # when
    stores = client.get(_url("admin:members_store_changelist"))
    terminals = client.get(_url("admin:members_terminal_changelist"))
    tier_history = client.get(_url("admin:members_tierchange_changelist"))
    # then
    assert list(stores.context["cl"].result_list) == [store]
    assert list(terminals.context["cl"].result_list) == [terminal]
    assert [change.member for change in tier_history.context["cl"].result_list] == [member]
    assert client.get(_url("admin:members_store_change", other_store.pk)).status_code == 404
    assert client.get(_url("admin:members_terminal_change", other_terminal.pk)).status_code == 404
    assert client.get(_url("admin:members_store_change", store.pk)).status_code == 200
    # the store filter offers only their store
    assert other_store.name not in client.get(_url(CHANGELIST)).content.decode()


def test_store_manager_cannot_change_anything(member, store, terminal):
    client = _client(_staff("mgr", STORE_MANAGER, store=store))
    before = _member_state(member)
    # when
    responses = [
        _freeze_via_action(client, member),
        client.post(_url("admin:members_member_freeze", member.pk), {"post": "yes", "reason": "x"}),
        client.post(_url("admin:members_member_change", member.pk), {"name": "X"}),
        client.get(_url("admin:members_member_add")),
        client.post(_url("admin:members_store_change", store.pk), {"name": "Renamed"}),
        client.post(_url("admin:members_terminal_revoke", terminal.pk), {"post": "yes"}),
        client.post(_url("admin:members_terminal_add"), {"store": store.pk, "name": "till-x"}),
    ]
    # then
    assert [response.status_code for response in responses] == [403] * len(responses)
    assert _member_state(member) == before
    terminal.refresh_from_db()
    assert terminal.is_active is True
    assert list(Terminal.objects.values_list("name", flat=True)) == ["till-1"]


def test_store_manager_without_a_store_sees_no_members(member):
    client = _client(_staff("mgr", STORE_MANAGER))
    response = client.get(_url(CHANGELIST))
    assert response.status_code == 200
    assert list(response.context["cl"].result_list) == []
    assert client.get(_url("admin:members_member_change", member.pk)).status_code == 404


def test_a_clerk_granted_member_view_sees_only_their_store(member, other_member, store):
    # given a clerk (console role, no admin permissions) granted the member list
    user = _staff("clerk", CLERK, store=store)
    user.user_permissions.add(Permission.objects.get(codename="view_member"))
    client = _client(user)
    # when
    response = client.get(_url(CHANGELIST))
    # then
    assert list(response.context["cl"].result_list) == [member]
    assert client.get(_url("admin:members_member_change", other_member.pk)).status_code == 404


def test_a_store_manager_who_is_also_operator_stays_limited_to_their_store(member, other_member, store):
    user = _staff("mgr", STORE_MANAGER, store=store)
    user.groups.add(Group.objects.get(name=OPERATOR))
    client = _client(user)
    # when
    response = client.get(_url(CHANGELIST))
    frozen = _freeze_via_action(client, other_member)
    # then
    assert list(response.context["cl"].result_list) == [member]
    assert frozen.status_code == 302
    other_member.refresh_from_db()
    assert other_member.status == Member.Status.ACTIVE


# -----------------------------------------------------------------------------
# Nobody deletes the audit trail
# -----------------------------------------------------------------------------
@pytest.mark.parametrize("role", [OPERATOR, MARKETING, AUDITOR, STORE_MANAGER, "superuser"])
@pytest.mark.parametrize("model", [TierChange, MemberEvent])
def test_nobody_deletes_audit_rows(member, store, admin_user, role, model):
    # given
    member_freeze(member=member, by_user=admin_user, reason="test")
    user = admin_user if role == "superuser" else _staff("staff", role, store=store)
    client = _client(user)
    rows = list(model.objects.filter(member=member).values_list("pk", flat=True))
    name = model._meta.model_name
    # when
    single = client.post(_url(f"admin:members_{name}_delete", rows[0]), {"post": "yes"})
    bulk = client.post(
        _url(f"admin:members_{name}_changelist"),
        {"action": "delete_selected", "_selected_action": rows, "post": "yes"},
    )
    # then
    assert (single.status_code, bulk.status_code) == (403, 403)
    assert list(model.objects.filter(member=member).values_list("pk", flat=True)) == rows


@pytest.mark.parametrize("role", [OPERATOR, MARKETING, AUDITOR, STORE_MANAGER, "superuser"])
def test_nobody_changes_tiers_of_members_through_tier_admin_rows(member, store, admin_user, role):
    # A tier change row cannot be edited to rewrite history.
    user = admin_user if role == "superuser" else _staff("staff", role, store=store)
    change = TierChange.objects.get(member=member)
    gold = Tier.objects.get(code="gold")
    response = _client(user).post(
        _url("admin:members_tierchange_change", change.pk), {"to_tier": gold.pk, "reason": "manual"}
    )
    assert response.status_code == 403
    change.refresh_from_db()
    assert (change.to_tier.code, change.reason) == ("silver", TierChange.Reason.ENROLMENT)
