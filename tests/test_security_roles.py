"""Staff roles against the real admin and report pages (issue 8):

* "Every admin role tested against what it may and may not do": one matrix of
  role x operation, each run over HTTP as that role, asserting both the answer
  and whether the database changed;
* "exports respect roles": report exports and printable coupon codes;
* "every operator change to points, tiers or coupons appears in an audit trail
  (who, what, when, why) that cannot be edited from admin".
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from django.contrib import admin
from django.contrib.admin.models import LogEntry
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import models
from django.test import Client, RequestFactory
from django.urls import reverse
from django.utils import timezone

from campaigns.models import Campaign, CampaignGrant, Coupon, CouponBatch, CouponEvent
from campaigns.services.batches import coupon_batch_generate
from loyalty.roles import AUDITOR, CLERK, MARKETING, OPERATOR, STORE_MANAGER
from members.models import Member, MemberEvent, StaffProfile, Store, Tier, TierChange
from members.services import member_enrol
from points.models import PointsAdjustment, PointsAllocation, PointsEntry, PointsLot, Purchase, Refund
from points.services import adjustment_request
from tests.campaigns.factories import BenefitFactory, coupon_give

pytestmark = pytest.mark.django_db

ROLES = [OPERATOR, MARKETING, AUDITOR, STORE_MANAGER, CLERK]
PHONE = "13812345678"


def _user(username: str, role: str | None, store: Store | None) -> Any:
    # Clerks are not staff: they use the console only.
    user = get_user_model().objects.create_user(username=username, password="x", is_staff=role != CLERK)
    if role is not None:
        user.groups.add(Group.objects.get(name=role))
    if role in (STORE_MANAGER, CLERK):
        StaffProfile.objects.create(user=user, store=store)
    return user


def _client(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


@dataclass
class World:
    store: Store
    member: Member
    operator: Any
    coupon: Coupon
    batch: CouponBatch
    campaign: Campaign
    pending: PointsAdjustment


@pytest.fixture
def world(store: Store) -> World:
    member, _ = member_enrol(phone=PHONE, name="王小明", store=store)
    operator = _user("first-operator", OPERATOR, None)
    benefit = BenefitFactory(total_stock=100)
    return World(
        store=store,
        member=member,
        operator=operator,
        coupon=coupon_give(benefit, member),
        batch=coupon_batch_generate(benefit=benefit, quantity=2, reference="PRINT-1", by_user=operator),
        campaign=Campaign.objects.create(name="会员日", kind=Campaign.Kind.MULTIPLIER, starts_at=timezone.now()),
        # Above the approval threshold: waits for a second operator.
        pending=adjustment_request(member=member, points=5000, reason="lost receipt", by_user=operator),
    )


# Each operation: (response, whether it took effect).
Operation = Callable[[Client, World], tuple[Any, bool]]
# How a refusal answers: 403 (or 404 out of a manager's store), the sign-in page
# for a clerk (302), or for viewing phones the page with masked numbers (200).
REFUSED = (302, 403, 404)


def _view_members(client: Client, w: World) -> tuple[Any, bool]:
    response = client.get("/admin/members/member/")
    return response, response.status_code == 200 and w.member.member_no in response.content.decode()


def _see_full_phone(client: Client, w: World) -> tuple[Any, bool]:
    response = client.get(f"/admin/members/member/{w.member.pk}/change/")
    return response, response.status_code == 200 and PHONE in response.content.decode()


def _freeze_member(client: Client, w: World) -> tuple[Any, bool]:
    response = client.post(f"/admin/members/member/{w.member.pk}/freeze/", {"post": "yes", "reason": "fraud"})
    return response, Member.objects.get(pk=w.member.pk).status == Member.Status.FROZEN


def _delete_member(client: Client, w: World) -> tuple[Any, bool]:
    response = client.post(f"/admin/members/member/{w.member.pk}/delete/", {"post": "yes"})
    return response, not Member.objects.filter(pk=w.member.pk).exists()


def _adjust_points(client: Client, w: World) -> tuple[Any, bool]:
    response = client.post(
        "/admin/points/pointsadjustment/add/", {"member": w.member.member_no, "points": 50, "reason": "goodwill"}
    )
    return response, PointsAdjustment.objects.filter(member=w.member, points=50).exists()


def _approve_adjustment(client: Client, w: World) -> tuple[Any, bool]:
    response = client.post(f"/admin/points/pointsadjustment/{w.pending.pk}/decide/", {"decision": "approve"})
    return response, PointsAdjustment.objects.get(pk=w.pending.pk).status == PointsAdjustment.Status.APPLIED


def _change_tier(client: Client, w: World) -> tuple[Any, bool]:
    gold = Tier.objects.get(code="gold")
    response = client.post(
        f"/admin/members/member/{w.member.pk}/tier/", {"post": "yes", "tier": gold.pk, "reason": "VIP"}
    )
    return response, TierChange.objects.filter(member=w.member, reason=TierChange.Reason.MANUAL).exists()


def _grant_coupon(client: Client, w: World) -> tuple[Any, bool]:
    response = client.post(
        "/admin/campaigns/coupon/grant/",
        {"member": w.member.member_no, "benefit": w.coupon.benefit_id, "reason": "complaint"},
    )
    return response, Coupon.objects.filter(member=w.member, source=Coupon.Source.OPERATOR).count() == 2


def _void_coupon(client: Client, w: World) -> tuple[Any, bool]:
    response = client.post(f"/admin/campaigns/coupon/{w.coupon.pk}/void/", {"post": "yes", "reason": "mistake"})
    return response, Coupon.objects.get(pk=w.coupon.pk).status == Coupon.Status.VOID


def _switch_on_campaign(client: Client, w: World) -> tuple[Any, bool]:
    response = client.post(
        "/admin/campaigns/campaign/", {"action": "activate", "_selected_action": [w.campaign.pk], "index": 0}
    )
    return response, Campaign.objects.get(pk=w.campaign.pk).status == Campaign.Status.ACTIVE


def _view_report(client: Client, w: World) -> tuple[Any, bool]:
    response = client.get("/reports/", {"month": "2025-03"})
    return response, response.status_code == 200


def _export_report(client: Client, w: World) -> tuple[Any, bool]:
    response = client.get("/reports/export/kpis.csv", {"month": "2025-03"})
    return response, response.status_code == 200 and response["Content-Type"].startswith("text/csv")


def _export_coupon_codes(client: Client, w: World) -> tuple[Any, bool]:
    response = client.get(f"/admin/campaigns/couponbatch/{w.batch.pk}/export/")
    codes = list(Coupon.objects.filter(batch=w.batch).values_list("code", flat=True))
    body = b"".join(response.streaming_content) if response.streaming else response.content
    return response, response.status_code == 200 and all(code in body.decode("utf-8-sig") for code in codes)


CHAIN_READERS = {OPERATOR, MARKETING, AUDITOR, STORE_MANAGER}
MATRIX: dict[str, tuple[Operation, set[str], tuple[int, ...]]] = {
    "view members": (_view_members, CHAIN_READERS, REFUSED),
    "see full phone numbers": (_see_full_phone, {OPERATOR}, (200, *REFUSED)),
    "freeze a member": (_freeze_member, {OPERATOR}, REFUSED),
    "delete a member": (_delete_member, set(), REFUSED),
    "adjust points": (_adjust_points, {OPERATOR}, REFUSED),
    "approve another operator's adjustment": (_approve_adjustment, {OPERATOR}, REFUSED),
    "change a member's tier": (_change_tier, {OPERATOR}, REFUSED),
    "grant a coupon": (_grant_coupon, {OPERATOR, MARKETING}, REFUSED),
    "void a coupon": (_void_coupon, {OPERATOR, MARKETING}, REFUSED),
    # The campaign admin (a plain ModelAdmin) answers an action the user may not
    # run with its changelist and "no action selected" (200): nothing changes.
    "switch on a campaign": (_switch_on_campaign, {OPERATOR, MARKETING}, (200, *REFUSED)),
    "view the monthly report": (_view_report, CHAIN_READERS, REFUSED),
    "export the monthly report": (_export_report, CHAIN_READERS, REFUSED),
    "export printable coupon codes": (_export_coupon_codes, {OPERATOR, MARKETING}, REFUSED),
}


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("operation", list(MATRIX))
def test_role_matrix(world, role, operation):
    run, allowed_roles, refusals = MATRIX[operation]
    client = _client(_user("someone", role, world.store))
    # when
    response, took_effect = run(client, world)
    # then
    assert took_effect is (role in allowed_roles), (role, operation, response.status_code)
    if role not in allowed_roles:
        assert response.status_code in refusals, (role, operation, response.status_code)
        if response.status_code == 302 and role == CLERK:
            assert response["Location"].startswith("/admin/login/")


def test_a_clerk_reaches_the_console_and_nothing_of_the_admin(world):
    client = _client(_user("clerk", CLERK, world.store))
    # when
    console = client.get("/console/")
    admin_index = client.get("/admin/")
    # then
    assert console.status_code == 200
    assert admin_index.status_code == 302
    assert admin_index["Location"].startswith("/admin/login/")


def test_a_store_manager_exports_only_their_own_store(world, other_store):
    client = _client(_user("manager", STORE_MANAGER, world.store))
    # when
    own = client.get("/reports/export/stores.csv", {"month": "2025-03"})
    other = client.get("/reports/export/kpis.csv", {"month": "2025-03", "store": other_store.code})
    # then
    assert own.status_code == 200
    assert other.status_code == 403


@pytest.mark.parametrize("role", [MARKETING, AUDITOR, STORE_MANAGER])
def test_roles_without_the_phone_permission_see_masked_phones_only(world, role):
    client = _client(_user("someone", role, world.store))
    # when
    pages = [
        client.get("/admin/members/member/"),
        client.get(f"/admin/members/member/{world.member.pk}/change/"),
        client.get("/admin/points/pointsadjustment/"),
        client.get("/admin/campaigns/coupon/"),
    ]
    search = client.get("/admin/members/member/", {"q": PHONE})
    # then
    assert [page.status_code for page in pages] == [200] * len(pages)
    assert "138****5678" in pages[0].content.decode()
    for page in pages:
        assert PHONE not in page.content.decode()
    # and searching by the full phone finds the member, shown masked (the page
    # repeats only the query the user typed: search box, sort and change links)
    result = re.sub(rf"q(=|%3D){PHONE}|value=\"{PHONE}\"", "", search.content.decode())
    assert world.member.member_no in result
    assert "138****5678" in result
    assert PHONE not in result


# -----------------------------------------------------------------------------
# Audit trail: who, what, when, why
# -----------------------------------------------------------------------------
def test_every_operator_change_to_points_tiers_and_coupons_is_recorded_with_who_what_when_why(world):
    operator = _user("second-operator", OPERATOR, None)
    client = _client(operator)
    started = timezone.now()
    # when the operator adjusts points, approves a colleague's adjustment, changes a tier,
    # grants and voids coupons, all in the admin
    for run in (_adjust_points, _approve_adjustment, _change_tier, _grant_coupon, _void_coupon):
        response, took_effect = run(client, world)
        assert took_effect, run.__name__
    # then each change has its row naming who, what, when and why
    adjustment = PointsAdjustment.objects.get(member=world.member, points=50)
    assert (adjustment.requested_by, adjustment.reason, adjustment.status) == (operator, "goodwill", "applied")
    assert adjustment.created_at >= started
    assert adjustment.entry.reason == "goodwill"
    approved = PointsAdjustment.objects.get(pk=world.pending.pk)
    assert (approved.requested_by, approved.decided_by, approved.reason) == (world.operator, operator, "lost receipt")
    assert approved.decided_at >= started
    tier_change = TierChange.objects.get(member=world.member, reason=TierChange.Reason.MANUAL)
    assert (tier_change.by_user, tier_change.note, tier_change.from_tier.code, tier_change.to_tier.code) == (
        operator,
        "VIP",
        "silver",
        "gold",
    )
    assert tier_change.created_at >= started
    granted = CouponEvent.objects.get(coupon__member=world.member, kind="issued", by_user=operator)
    assert (granted.reason, granted.created_at >= started) == ("complaint", True)
    voided = CouponEvent.objects.get(coupon=world.coupon, kind="void")
    assert (voided.by_user, voided.reason, voided.created_at >= started) == (operator, "mistake", True)


AUDIT_MODELS = [PointsAdjustment, PointsEntry, PointsLot, PointsAllocation, Purchase, Refund, TierChange]
AUDIT_MODELS += [MemberEvent, CouponEvent, CampaignGrant]


def _superuser() -> Any:
    return get_user_model().objects.create_superuser(username="root", password="x", email="root@example.com")


@pytest.mark.parametrize("role", [*ROLES, "superuser"])
@pytest.mark.parametrize("model", AUDIT_MODELS, ids=lambda model: model.__name__)
def test_audit_rows_cannot_be_changed_or_deleted_from_the_admin_by_anyone(world, role, model):
    user = _superuser() if role == "superuser" else _user("someone", role, world.store)
    request = RequestFactory().get("/admin/")
    request.user = user
    model_admin = admin.site._registry[model]
    # then no admin permission to change or delete, for any row
    assert model_admin.has_change_permission(request) is False
    assert model_admin.has_delete_permission(request) is False
    if model is not PointsAdjustment:  # a new adjustment is the operation itself, not an edit
        assert model_admin.has_add_permission(request) is False


@pytest.mark.parametrize("model", [PointsAdjustment, TierChange, MemberEvent, CouponEvent])
def test_a_superusers_post_to_change_or_delete_an_audit_row_is_refused_and_changes_nothing(world, model):
    # given audit rows of each kind (the fixture's adjustment, enrolment and coupon history)
    client = _client(_superuser())
    row = model.objects.order_by("pk").first()
    before = model.objects.values().get(pk=row.pk)
    opts = model._meta
    text_field = next(
        field.name for field in opts.concrete_fields if isinstance(field, models.CharField) and field.name != "kind"
    )
    # when
    change = client.post(
        reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[row.pk]), {text_field: "rewritten"}
    )
    delete = client.post(reverse(f"admin:{opts.app_label}_{opts.model_name}_delete", args=[row.pk]), {"post": "yes"})
    # then
    assert change.status_code == 403
    assert delete.status_code == 403
    assert model.objects.values().get(pk=row.pk) == before


def test_the_admins_own_log_is_not_editable_from_the_admin():
    # LogEntry (the admin's history of each object) has no admin page at all.
    assert LogEntry not in admin.site._registry


def test_tier_definition_edits_are_in_the_admin_history_with_who_and_when(world):
    # given
    operator = _user("second-operator", OPERATOR, None)
    gold = Tier.objects.get(code="gold")
    data = {
        field: getattr(gold, field)
        for field in ("code", "name", "rank", "qualification_months", "validity_months", "discount_rate")
    }
    data.update(threshold="6000.00", earn_multiplier="1.25", is_active="on")
    started = timezone.now() - timedelta(seconds=1)
    # when
    response = _client(operator).post(f"/admin/members/tier/{gold.pk}/change/", data)
    # then
    assert response.status_code == 302, response.content
    entry = LogEntry.objects.get(object_id=str(gold.pk), content_type__model="tier")
    assert (entry.user, entry.action_flag, entry.action_time >= started) == (operator, 2, True)
    assert "qualifying spend" in entry.get_change_message().lower()
