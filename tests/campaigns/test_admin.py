"""Admin of benefits and coupons: the catalogue, void / re-issue / grant
through the services, the read-only history, the issue queue and its retry,
batches (generate, import, export), role permissions and store scoping."""

from __future__ import annotations

import csv
import io
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.contrib.messages import get_messages
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from campaigns.models import Benefit, Coupon, CouponBatch, CouponEvent, CouponIssueRequest
from campaigns.services.batches import coupon_batch_generate
from campaigns.services.coupons import coupon_void, coupon_write_off
from campaigns.services.issuing import coupon_issue_enqueue, coupon_issue_process
from loyalty.roles import AUDITOR, MARKETING, OPERATOR, STORE_MANAGER
from members.models import Member, StaffProfile, Tier
from members.services import member_enrol, member_freeze, terminal_create
from tests.campaigns.factories import BenefitFactory, coupon_give, coupon_snapshot

pytestmark = pytest.mark.django_db


def _url(model: Any, view: str, *args: Any) -> str:
    return reverse(f"admin:campaigns_{model._meta.model_name}_{view}", args=args)


def _messages(response: Any) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


def _staff(username: str, role: str | None = None, store: Any = None, **extra: Any) -> Any:
    user = get_user_model().objects.create_user(username=username, password="x", is_staff=True, **extra)
    if role:
        user.groups.add(Group.objects.get(name=role))
    if store is not None:
        StaffProfile.objects.create(user=user, store=store)
    return user


def _client(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _action(client: Client, model: Any, action: str, objects: list[Any], **data: Any) -> Any:
    return client.post(
        _url(model, "changelist"),
        {"action": action, "_selected_action": [str(obj.pk) for obj in objects], "index": "0", **data},
    )


def _confirm(client: Client, model: Any, action: str, objects: list[Any], reason: str) -> Any:
    return _action(client, model, action, objects, post="yes", reason=reason)


@pytest.fixture
def operator(db: Any) -> Any:
    return _staff("op1", OPERATOR)


@pytest.fixture
def auditor(db: Any) -> Any:
    return _staff("audit", AUDITOR)


@pytest.fixture
def manager(store: Any) -> Any:
    return _staff("mgr", STORE_MANAGER, store=store)


@pytest.fixture
def benefit(db: Any) -> Benefit:
    return BenefitFactory(name="满100减10元券", total_stock=100)


@pytest.fixture
def coupon(benefit: Benefit, member: Member) -> Coupon:
    return coupon_give(benefit, member)


@pytest.fixture
def other_member(other_store: Any) -> Member:
    member, _ = member_enrol(phone="13900001111", name="李雷", store=other_store)
    return member


# -----------------------------------------------------------------------------
# Pages render for every role
# -----------------------------------------------------------------------------
@pytest.mark.parametrize("role", ["superuser", OPERATOR, MARKETING, AUDITOR])
def test_pages_render_for_superuser_and_roles(role, coupon, operator):
    # given
    user = _staff("root", is_superuser=True) if role == "superuser" else _staff("someone", role)
    client = _client(user)
    batch = coupon_batch_generate(benefit=coupon.benefit, quantity=2, reference="B-1", by_user=operator)
    event = CouponEvent.objects.filter(coupon=coupon).first()
    request = CouponIssueRequest.objects.create(
        benefit=coupon.benefit,
        member=coupon.member,
        source=Coupon.Source.CAMPAIGN,
        reference="c-1",
        next_attempt_at=timezone.now(),
    )
    pages = [
        _url(Benefit, "changelist"),
        _url(Benefit, "change", coupon.benefit.pk),
        _url(Coupon, "changelist"),
        _url(Coupon, "change", coupon.pk),
        _url(CouponEvent, "changelist"),
        _url(CouponEvent, "change", event.pk),
        _url(CouponIssueRequest, "changelist"),
        _url(CouponIssueRequest, "change", request.pk),
        _url(CouponBatch, "changelist"),
        _url(CouponBatch, "change", batch.pk),
    ]

    # when / then
    for page in pages:
        response = client.get(page)
        assert response.status_code == 200, page


def test_coupon_page_shows_its_history_read_only(coupon, operator):
    # given
    coupon_void(coupon=coupon, by_user=operator, reason="客户投诉")

    # when
    response = _client(operator).get(_url(Coupon, "change", coupon.pk))

    # then
    content = response.content.decode()
    assert response.status_code == 200
    assert "客户投诉" in content
    assert 'name="_save"' not in content
    assert 'name="events-0-reason"' not in content
    assert CouponEvent.objects.filter(coupon=coupon).count() == 2


# -----------------------------------------------------------------------------
# Benefits
# -----------------------------------------------------------------------------
def _benefit_form(**overrides: Any) -> dict[str, Any]:
    data = {
        "name": "生日礼",
        "description": "",
        "kind": Benefit.Kind.GIFT,
        "value": "30.00",
        "min_spend": "0",
        "is_active": "on",
        "points_price": "500",
        "cash_price": "0",
        "total_stock": "50",
        "per_member_limit": "1",
        "validity": Benefit.Validity.DAYS,
        "valid_days": "30",
    }
    data.update(overrides)
    return {key: value for key, value in data.items() if value is not None}


@pytest.mark.parametrize("role", [OPERATOR, MARKETING])
def test_operator_and_marketing_add_a_benefit(role, store):
    # given
    client = _client(_staff("editor", role))
    gold = Tier.objects.get(code="gold")

    # when
    response = client.post(
        _url(Benefit, "add"),
        _benefit_form(eligible_tiers=[str(gold.pk)], stores=[str(store.pk)], issued_count="999"),
    )

    # then
    assert response.status_code == 302, response.content
    benefit = Benefit.objects.get(name="生日礼")
    assert (benefit.points_price, benefit.total_stock, benefit.per_member_limit, benefit.issued_count) == (
        500,
        50,
        1,
        0,
    )
    assert list(benefit.eligible_tiers.all()) == [gold]
    assert list(benefit.stores.all()) == [store]


def test_benefit_list_shows_stock_left_and_window(operator, member):
    # given
    benefit = BenefitFactory(name="限量券", total_stock=10, active_until=timezone.now() + timedelta(days=3))
    coupon_give(benefit, member)
    coupon_give(benefit, member)
    BenefitFactory(name="无限券", total_stock=None)

    # when
    response = _client(operator).get(_url(Benefit, "changelist"))

    # then
    content = response.content.decode()
    assert '<td class="field-stock_left">8</td>' in content
    assert '<td class="field-stock_left">unlimited</td>' in content
    assert "until " in content


def test_benefit_change_keeps_the_issued_count(operator, benefit, member):
    # given: 2 issued
    coupon_give(benefit, member)
    coupon_give(benefit, member)

    # when: an operator saves the benefit with a stale issued count in the post
    response = _client(operator).post(
        _url(Benefit, "change", benefit.pk),
        _benefit_form(name="满100减10元券", kind=Benefit.Kind.CASH_OFF, total_stock="60", issued_count="0"),
    )

    # then
    assert response.status_code == 302, response.content
    benefit.refresh_from_db()
    assert (benefit.total_stock, benefit.issued_count, benefit.kind) == (60, 2, Benefit.Kind.CASH_OFF)


def test_benefit_stock_below_issued_is_a_form_error(operator, benefit, member):
    # given
    coupon_give(benefit, member)
    coupon_give(benefit, member)

    # when
    response = _client(operator).post(_url(Benefit, "change", benefit.pk), _benefit_form(name="x", total_stock="1"))

    # then
    assert response.status_code == 200
    assert "2 coupons are already issued" in response.content.decode()
    benefit.refresh_from_db()
    assert (benefit.name, benefit.total_stock) == ("满100减10元券", 100)


def test_benefit_fixed_validity_needs_an_end(operator):
    response = _client(operator).post(_url(Benefit, "add"), _benefit_form(validity=Benefit.Validity.FIXED))
    assert response.status_code == 200
    assert "Fixed-date validity needs an end." in response.content.decode()
    assert not Benefit.objects.filter(name="生日礼").exists()


# -----------------------------------------------------------------------------
# Void and re-issue
# -----------------------------------------------------------------------------
def test_void_action_asks_for_a_reason_then_voids(operator, coupon):
    # given
    client = _client(operator)

    # when: the action shows the confirmation page
    page = _action(client, Coupon, "void_coupons", [coupon])

    # then
    assert page.status_code == 200
    assert 'name="reason"' in page.content.decode()
    assert Coupon.objects.get(pk=coupon.pk).status == Coupon.Status.ISSUED

    # when: confirmed with a reason
    response = _confirm(client, Coupon, "void_coupons", [coupon], reason="印错了")

    # then
    assert response.status_code == 302
    assert Coupon.objects.get(pk=coupon.pk).status == Coupon.Status.VOID
    event = CouponEvent.objects.filter(coupon=coupon).order_by("pk").last()
    assert (event.kind, event.reason, event.by_user_id) == (CouponEvent.Kind.VOID, "印错了", operator.pk)
    assert "1 coupon voided." in _messages(response)


def test_void_without_reason_changes_nothing(operator, coupon):
    # given
    before = coupon_snapshot()

    # when
    response = _confirm(_client(operator), Coupon, "void_coupons", [coupon], reason="  ")

    # then
    assert response.status_code == 200
    assert "A reason is required." in response.content.decode()
    assert coupon_snapshot() == before


def test_void_of_a_written_off_coupon_is_refused_with_a_message(operator, coupon, store, terminal):
    # given
    coupon_write_off(code=coupon.code, store=store, terminal=terminal, receipt_no="R-1", member=coupon.member)
    before = coupon_snapshot()

    # when
    response = _confirm(_client(operator), Coupon, "void_coupons", [coupon], reason="mistake")

    # then
    assert response.status_code == 302
    assert coupon_snapshot() == before
    (message,) = _messages(response)
    assert message.startswith(f"{coupon.code}: This coupon cannot be changed in its current state")


def test_void_button_on_the_coupon_page(operator, coupon):
    # given
    client = _client(operator)
    url = _url(Coupon, "void", coupon.pk)
    assert url in client.get(_url(Coupon, "change", coupon.pk)).content.decode()

    # when
    assert client.get(url).status_code == 200
    response = client.post(url, {"post": "yes", "reason": "客户要求"})

    # then
    assert response.status_code == 302
    assert response["Location"] == _url(Coupon, "change", coupon.pk)
    assert Coupon.objects.get(pk=coupon.pk).status == Coupon.Status.VOID


def test_reissue_action_replaces_the_coupon(operator, coupon, benefit):
    # given
    stock_before = Benefit.objects.get(pk=benefit.pk).issued_count

    # when
    response = _confirm(_client(operator), Coupon, "reissue_coupons", [coupon], reason="二维码损坏")

    # then
    assert response.status_code == 302
    old = Coupon.objects.get(pk=coupon.pk)
    new = Coupon.objects.get(replaces=old)
    assert old.status == Coupon.Status.VOID
    assert (new.status, new.source, new.member_id, new.benefit_id) == (
        Coupon.Status.ISSUED,
        Coupon.Source.REISSUE,
        coupon.member_id,
        benefit.pk,
    )
    assert new.code != old.code
    assert Benefit.objects.get(pk=benefit.pk).issued_count == stock_before
    assert CouponEvent.objects.get(coupon=new).reason == "二维码损坏"
    assert any(new.code in message and old.code in message for message in _messages(response))


def test_void_then_reissue_links_the_new_coupon_to_the_old(operator, coupon):
    # given
    client = _client(operator)
    _confirm(client, Coupon, "void_coupons", [coupon], reason="丢失")

    # when
    response = client.post(_url(Coupon, "reissue", coupon.pk), {"post": "yes", "reason": "补发"})

    # then
    assert response.status_code == 302
    new = Coupon.objects.get(replaces=coupon)
    assert new.status == Coupon.Status.ISSUED
    page = client.get(_url(Coupon, "change", coupon.pk)).content.decode()
    assert new.code in page  # "replaced by" on the old coupon's page
    assert _url(Coupon, "reissue", coupon.pk) not in page  # no second re-issue offered


def test_second_reissue_is_refused_and_writes_nothing(operator, coupon):
    # given
    client = _client(operator)
    _confirm(client, Coupon, "reissue_coupons", [coupon], reason="first")
    before = coupon_snapshot()

    # when
    response = _confirm(client, Coupon, "reissue_coupons", [coupon], reason="second")

    # then
    assert coupon_snapshot() == before
    assert any("cannot be changed" in message for message in _messages(response))


# -----------------------------------------------------------------------------
# Grant
# -----------------------------------------------------------------------------
def test_grant_page_issues_an_operator_coupon(operator, member, benefit):
    # given
    client = _client(operator)
    assert client.get(_url(Coupon, "grant")).status_code == 200

    # when
    response = client.post(
        _url(Coupon, "grant"), {"member": member.member_no, "benefit": str(benefit.pk), "reason": "生日补偿"}
    )

    # then
    coupon = Coupon.objects.get(member=member)
    assert response.status_code == 302
    assert response["Location"] == _url(Coupon, "change", coupon.pk)
    assert (coupon.source, coupon.status, coupon.benefit_id) == (
        Coupon.Source.OPERATOR,
        Coupon.Status.ISSUED,
        benefit.pk,
    )
    event = CouponEvent.objects.get(coupon=coupon)
    assert (event.kind, event.by_user_id, event.reason) == (CouponEvent.Kind.ISSUED, operator.pk, "生日补偿")
    assert Benefit.objects.get(pk=benefit.pk).issued_count == 1


def test_grant_by_phone(operator, member, benefit):
    response = _client(operator).post(
        _url(Coupon, "grant"), {"member": "138 1234 5678", "benefit": str(benefit.pk), "reason": "goodwill"}
    )
    assert response.status_code == 302
    assert Coupon.objects.filter(member=member, source=Coupon.Source.OPERATOR).count() == 1


def test_grant_refusals_are_shown_and_write_nothing(operator, member, benefit):
    # given
    client = _client(operator)
    member_freeze(member=member, by_user=operator, reason="risk")
    empty = BenefitFactory(total_stock=0)
    before = coupon_snapshot()

    # when
    frozen = client.post(_url(Coupon, "grant"), {"member": member.member_no, "benefit": str(benefit.pk), "reason": "x"})
    unknown = client.post(_url(Coupon, "grant"), {"member": "80000000000", "benefit": str(benefit.pk), "reason": "x"})
    no_reason = client.post(_url(Coupon, "grant"), {"member": member.member_no, "benefit": str(benefit.pk)})

    # then
    assert frozen.status_code == 200
    assert "This member account is frozen" in frozen.content.decode()
    assert "No member matches" in unknown.content.decode()
    assert "A reason is required." in no_reason.content.decode()
    assert coupon_snapshot() == before

    # when: out of stock
    other, _ = member_enrol(phone="13700000000", name="张三")
    response = client.post(_url(Coupon, "grant"), {"member": other.member_no, "benefit": str(empty.pk), "reason": "x"})

    # then
    assert "out of stock" in response.content.decode()
    assert coupon_snapshot() == before


# -----------------------------------------------------------------------------
# Read-only history, auditor
# -----------------------------------------------------------------------------
def test_coupon_events_are_read_only_for_everyone(coupon):
    # given
    client = _client(_staff("root", is_superuser=True))
    event = CouponEvent.objects.get(coupon=coupon)

    # when / then
    assert client.get(_url(CouponEvent, "add")).status_code == 403
    assert client.post(_url(CouponEvent, "change", event.pk), {"reason": "edited"}).status_code == 403
    assert client.post(_url(CouponEvent, "delete", event.pk), {"post": "yes"}).status_code == 403
    assert client.get(_url(Coupon, "add")).status_code == 403
    assert client.post(_url(Coupon, "delete", coupon.pk), {"post": "yes"}).status_code == 403
    assert CouponEvent.objects.get(pk=event.pk).reason == event.reason


def test_coupon_detail_is_not_editable(operator, coupon):
    # when
    response = _client(operator).post(_url(Coupon, "change", coupon.pk), {"status": "void", "code": "HACKED"})

    # then
    assert response.status_code == 403
    stored = Coupon.objects.get(pk=coupon.pk)
    assert (stored.status, stored.code) == (Coupon.Status.ISSUED, coupon.code)


def test_auditor_is_view_only(auditor, coupon, benefit, member):
    # given
    client = _client(auditor)
    batch = coupon_batch_generate(benefit=benefit, quantity=1, reference="B-A", by_user=None)
    issue = CouponIssueRequest.objects.create(
        benefit=benefit,
        member=member,
        source=Coupon.Source.CAMPAIGN,
        reference="c",
        next_attempt_at=timezone.now(),
        status=CouponIssueRequest.Status.FAILED,
    )
    before = coupon_snapshot()

    # when / then
    assert client.get(_url(Coupon, "changelist")).status_code == 200
    assert _action(client, Coupon, "void_coupons", [coupon]).status_code == 403
    assert _confirm(client, Coupon, "reissue_coupons", [coupon], reason="x").status_code == 403
    assert client.post(_url(Coupon, "void", coupon.pk), {"post": "yes", "reason": "x"}).status_code == 403
    assert client.get(_url(Coupon, "grant")).status_code == 403
    assert (
        client.post(
            _url(Coupon, "grant"), {"member": member.member_no, "benefit": str(benefit.pk), "reason": "x"}
        ).status_code
        == 403
    )
    assert client.get(_url(Coupon, "add")).status_code == 403
    assert client.get(_url(Benefit, "add")).status_code == 403
    assert client.post(_url(Benefit, "change", benefit.pk), _benefit_form()).status_code == 403
    assert _action(client, CouponIssueRequest, "retry_requests", [issue]).status_code == 403
    assert client.get(_url(CouponBatch, "generate")).status_code == 403
    assert client.get(_url(CouponBatch, "import")).status_code == 403
    assert client.get(_url(CouponBatch, "export", batch.pk)).status_code == 403
    assert _action(client, CouponBatch, "export_codes", [batch]).status_code == 403
    assert coupon_snapshot() == before
    assert CouponIssueRequest.objects.get(pk=issue.pk).status == CouponIssueRequest.Status.FAILED
    page = client.get(_url(Coupon, "change", coupon.pk)).content.decode()
    assert _url(Coupon, "void", coupon.pk) not in page
    assert _url(Coupon, "grant") not in client.get(_url(Coupon, "changelist")).content.decode()


# -----------------------------------------------------------------------------
# Issue queue
# -----------------------------------------------------------------------------
@pytest.fixture
def failed_issue(member: Member) -> CouponIssueRequest:
    benefit = BenefitFactory(name="会员月礼", total_stock=0)
    request = coupon_issue_enqueue(benefit=benefit, member=member, source=Coupon.Source.TIER_PRIVILEGE, reference="t:1")
    coupon_issue_process(request_id=request.pk)
    request.refresh_from_db()
    assert request.status == CouponIssueRequest.Status.FAILED
    return request


def test_failed_issue_is_listed_with_its_error(operator, failed_issue):
    # given
    done = CouponIssueRequest.objects.create(
        benefit=failed_issue.benefit,
        member=failed_issue.member,
        source=Coupon.Source.CAMPAIGN,
        reference="done",
        status=CouponIssueRequest.Status.DONE,
        next_attempt_at=timezone.now(),
    )

    # when
    response = _client(operator).get(_url(CouponIssueRequest, "changelist"))

    # then
    assert response.status_code == 200
    listed = list(response.context["cl"].result_list)
    assert listed == [failed_issue]
    assert done not in listed
    content = response.content.decode()
    assert "out_of_stock: This benefit is out of stock." in content
    assert '<td class="field-attempts">1</td>' in content


def test_retry_sends_a_failed_issue_back_and_it_is_issued(operator, failed_issue, django_capture_on_commit_callbacks):
    # given: the cause is fixed
    Benefit.objects.filter(pk=failed_issue.benefit_id).update(total_stock=10)

    # when
    with django_capture_on_commit_callbacks(execute=True):
        response = _action(_client(operator), CouponIssueRequest, "retry_requests", [failed_issue])

    # then
    assert response.status_code == 302
    assert "1 issue sent back to the queue." in _messages(response)
    failed_issue.refresh_from_db()
    assert failed_issue.status == CouponIssueRequest.Status.DONE
    assert failed_issue.coupon is not None
    assert (failed_issue.coupon.member_id, failed_issue.coupon.source) == (
        failed_issue.member_id,
        Coupon.Source.TIER_PRIVILEGE,
    )


def test_retry_of_a_request_that_did_not_fail_changes_nothing(operator, member, benefit):
    # given
    pending = CouponIssueRequest.objects.create(
        benefit=benefit,
        member=member,
        source=Coupon.Source.CAMPAIGN,
        reference="p",
        next_attempt_at=timezone.now() + timedelta(minutes=4),
        attempts=2,
    )

    # when
    response = _action(_client(operator), CouponIssueRequest, "retry_requests", [pending])

    # then
    pending.refresh_from_db()
    assert (pending.status, pending.attempts) == (CouponIssueRequest.Status.PENDING, 2)
    assert any("only failed issues are retried" in message for message in _messages(response))


# -----------------------------------------------------------------------------
# Store managers
# -----------------------------------------------------------------------------
def test_store_manager_sees_only_coupons_of_their_store(manager, member, other_member, benefit, store, other_store):
    # given
    own = coupon_give(benefit, member)  # held by a member registered at the manager's store
    used_here = coupon_give(benefit, other_member)  # another store's member, written off here
    terminal, _ = terminal_create(store=store, name="till-x")
    coupon_write_off(code=used_here.code, store=store, terminal=terminal, receipt_no="R-7", member=other_member)
    elsewhere = coupon_give(benefit, other_member)  # not the manager's business
    client = _client(manager)

    # when
    response = client.get(_url(Coupon, "changelist"))

    # then
    assert response.status_code == 200
    assert set(response.context["cl"].result_list) == {own, used_here}
    assert client.get(_url(Coupon, "change", own.pk)).status_code == 200
    assert client.get(_url(Coupon, "change", used_here.pk)).status_code == 200
    assert client.get(_url(Coupon, "change", elsewhere.pk)).status_code == 404
    assert client.get(f"{_url(Coupon, 'changelist')}?q={elsewhere.code}").context["cl"].result_count == 0


def test_store_manager_cannot_void_or_grant(manager, member, benefit):
    # given
    coupon = coupon_give(benefit, member)
    client = _client(manager)
    before = coupon_snapshot()

    # when / then
    assert _confirm(client, Coupon, "void_coupons", [coupon], reason="x").status_code == 403
    assert client.post(_url(Coupon, "void", coupon.pk), {"post": "yes", "reason": "x"}).status_code == 403
    assert client.get(_url(Coupon, "grant")).status_code == 403
    assert client.get(_url(Benefit, "changelist")).status_code == 403
    assert coupon_snapshot() == before
    page = client.get(_url(Coupon, "change", coupon.pk)).content.decode()
    assert _url(Coupon, "void", coupon.pk) not in page
    assert 'id="events-group"' in page  # the history is shown to whoever sees the coupon


def test_store_manager_without_store_sees_no_coupon(member, benefit):
    # given
    coupon = coupon_give(benefit, member)
    client = _client(_staff("lost", STORE_MANAGER))

    # when / then
    assert client.get(_url(Coupon, "changelist")).context["cl"].result_count == 0
    assert client.get(_url(Coupon, "change", coupon.pk)).status_code == 404


# -----------------------------------------------------------------------------
# Search and filters
# -----------------------------------------------------------------------------
def test_search_by_code_and_member_number(operator, member, other_member, benefit):
    # given
    mine = coupon_give(benefit, member)
    theirs = coupon_give(benefit, other_member)
    client = _client(operator)

    def found(term: str) -> set[Coupon]:
        return set(client.get(_url(Coupon, "changelist"), {"q": term}).context["cl"].result_list)

    # when / then
    spaced = f"{theirs.code[:4].lower()} {theirs.code[4:8]}-{theirs.code[8:]}"
    assert found(spaced) == {theirs}
    assert found(member.member_no) == {mine}
    assert found("13900001111") == {theirs}
    assert found("NOPE") == set()


def test_filters_by_status_source_benefit_and_store(operator, member, benefit, store, terminal):
    # given
    used = coupon_give(benefit, member)
    coupon_write_off(code=used.code, store=store, terminal=terminal, receipt_no="R-2", member=member)
    fresh = coupon_give(BenefitFactory(), member, source=Coupon.Source.CAMPAIGN)
    client = _client(operator)

    def listed(**params: str) -> set[Coupon]:
        return set(client.get(_url(Coupon, "changelist"), params).context["cl"].result_list)

    # when / then
    assert listed(status__exact="written_off") == {used}
    assert listed(source__exact="campaign") == {fresh}
    assert listed(benefit__id__exact=str(benefit.pk)) == {used}
    assert listed(written_off_store__id__exact=str(store.pk)) == {used}
    # a lookup outside the filters (probing codes by prefix) is refused
    assert client.get(_url(Coupon, "changelist"), {"code__startswith": used.code[:3]}).status_code == 400


# -----------------------------------------------------------------------------
# Batches
# -----------------------------------------------------------------------------
def test_generate_page_makes_a_batch_once(operator, benefit):
    # given
    client = _client(operator)
    assert client.get(_url(CouponBatch, "generate")).status_code == 200
    form = {"benefit": str(benefit.pk), "quantity": "5", "reference": "flyer-2026-12"}

    # when
    response = client.post(_url(CouponBatch, "generate"), form)

    # then
    batch = CouponBatch.objects.get(reference="flyer-2026-12")
    assert response.status_code == 302
    assert response["Location"] == _url(CouponBatch, "change", batch.pk)
    assert batch.coupons.count() == 5
    assert batch.created_by_id == operator.pk

    # when: submitted again
    again = client.post(_url(CouponBatch, "generate"), form)

    # then
    assert again.status_code == 302
    assert Coupon.objects.count() == 5
    assert any("already existed" in message for message in _messages(again))


def test_generate_page_out_of_stock_shows_the_error(operator):
    # given
    benefit = BenefitFactory(total_stock=3)

    # when
    response = _client(operator).post(
        _url(CouponBatch, "generate"), {"benefit": str(benefit.pk), "quantity": "4", "reference": "r"}
    )

    # then
    assert response.status_code == 200
    assert "This benefit is out of stock." in response.content.decode()
    assert not CouponBatch.objects.exists()
    assert not Coupon.objects.exists()


def test_export_link_and_action_download_the_codes(operator, benefit):
    # given
    batch = coupon_batch_generate(benefit=benefit, quantity=3, reference="print/1", by_user=operator)
    client = _client(operator)
    codes = sorted(batch.coupons.values_list("code", flat=True))

    # when
    link = client.get(_url(CouponBatch, "export", batch.pk))
    action = _action(client, CouponBatch, "export_codes", [batch])

    # then
    for response in (link, action):
        assert response.status_code == 200
        assert response["Content-Type"] == "text/csv; charset=utf-8"
        assert 'filename="coupons-print-1.csv"' in response["Content-Disposition"]
        rows = list(csv.reader(io.StringIO(response.content.decode("utf-8-sig"))))
        assert rows[0] == ["code", "benefit", "valid_from", "valid_until"]
        assert sorted(row[0] for row in rows[1:]) == codes
        assert {row[1] for row in rows[1:]} == {"满100减10元券"}
    assert _url(CouponBatch, "export", batch.pk) in client.get(_url(CouponBatch, "changelist")).content.decode()


def test_import_page_reports_rows_and_is_idempotent(operator, benefit, member):
    # given
    existing = coupon_give(benefit, member)
    content = f"code,valid_until\nTP-0001,2027-12-31\n{existing.code}\nbad_code\nTP-0002\n".encode()
    client = _client(operator)
    assert client.get(_url(CouponBatch, "import")).status_code == 200

    def upload() -> Any:
        return client.post(
            _url(CouponBatch, "import"),
            {"benefit": str(benefit.pk), "file": SimpleUploadedFile("codes.csv", content, content_type="text/csv")},
        )

    # when
    response = upload()

    # then
    assert response.status_code == 200
    report = response.context["report"]
    assert (report.imported, len(report.duplicates), len(report.invalid)) == (2, 1, 1)
    page = response.content.decode()
    assert "Imported 2, duplicates 1, invalid 1 of 4 rows" in page
    assert "<td>3</td><td><code>" in page
    assert "This code already exists." in page
    assert "<td>4</td><td><code>bad_code</code></td>" in page
    assert set(Coupon.objects.filter(source=Coupon.Source.IMPORT).values_list("code", flat=True)) == {
        "TP0001",
        "TP0002",
    }

    # when: the same file again
    again = upload()

    # then
    assert again.context["report"].already_imported
    assert "This file was already imported" in again.content.decode()
    assert Coupon.objects.filter(source=Coupon.Source.IMPORT).count() == 2


def test_import_page_shows_file_errors(operator, benefit):
    # when
    response = _client(operator).post(
        _url(CouponBatch, "import"),
        {"benefit": str(benefit.pk), "file": SimpleUploadedFile("codes.csv", b"number,valid_until\n1,2027-01-01\n")},
    )
    wrong_type = _client(operator).post(
        _url(CouponBatch, "import"),
        {"benefit": str(benefit.pk), "file": SimpleUploadedFile("codes.xlsx", b"PK\x03\x04")},
    )

    # then
    assert "the header row has no column “code”" in response.content.decode()
    assert "Upload a .csv file" in wrong_type.content.decode()
    assert not Coupon.objects.exists()
