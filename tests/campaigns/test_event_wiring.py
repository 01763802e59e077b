"""The services report their events: member messages and webhooks are written
in the same transaction as the change they describe."""

from datetime import timedelta

import pytest
from django.utils import timezone

from campaigns.models import OutboxMessage, WebhookDelivery, WebhookEndpoint
from campaigns.services.coupons import coupon_write_off
from members.services import member_enrol
from points.batch import points_expire_due
from tests.campaigns.factories import BenefitFactory, coupon_give
from tests.points.factories import buy

pytestmark = pytest.mark.django_db


@pytest.fixture
def endpoint():
    return WebhookEndpoint.objects.create(name="ERP", url="http://127.0.0.1:9/hook", secret="s" * 32, events=[])


def _events() -> list[str]:
    return sorted(WebhookDelivery.objects.values_list("event", flat=True))


def test_purchase_reports_points_changed_and_points_earned(member, store, terminal, endpoint):
    # when
    buy(store=store, terminal=terminal, member=member, receipt_no="R-1", amount="88.00", at=timezone.now())
    # then one webhook per ledger entry, and the member's message
    assert _events() == ["points_changed"]
    assert list(OutboxMessage.objects.values_list("kind", flat=True)) == ["points_earned"]


def test_upgrade_reports_tier_changed_message_and_webhook(member, store, terminal, endpoint):
    # when ¥5,000 crosses the gold threshold
    buy(store=store, terminal=terminal, member=member, receipt_no="R-1", amount="5000.00", at=timezone.now())
    # then
    assert "tier_changed" in _events()
    assert OutboxMessage.objects.filter(kind="tier_changed", member=member).count() == 1


def test_write_off_and_enrolment_report_webhooks(member, store, terminal, endpoint):
    # given a coupon
    coupon = coupon_give(BenefitFactory(points_price=0), member, at=timezone.now())
    # when it is written off and a new member enrols
    coupon_write_off(code=coupon.code, store=store, terminal=terminal, receipt_no="R-9", member=member)
    member_enrol(phone="13900001111", name="李雷", store=store)
    # then
    assert {"coupon_written_off", "member_enrolled"} <= set(_events())
    assert OutboxMessage.objects.filter(kind="coupon_issued", member=member).count() == 1


def test_nightly_expiry_reports_one_points_changed_per_expire_entry(member, store, terminal, endpoint):
    # given points earned long ago
    buy(store=store, terminal=terminal, member=member, receipt_no="R-1", amount="10.00", at=timezone.now())
    WebhookDelivery.objects.all().delete()
    # when they expire
    points_expire_due(as_of=timezone.now() + timedelta(days=800))
    # then one event for the member's expire entry
    assert _events() == ["points_changed"]
    assert WebhookDelivery.objects.get().payload["data"]["kind"] == "expire"
