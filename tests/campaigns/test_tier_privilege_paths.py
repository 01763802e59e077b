"""Tier privileges are granted on every path to a higher tier, once per period."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from campaigns.models import Coupon
from members.models import Tier
from members.services import member_set_tier
from points.batch import tiers_evaluate
from points.models import Purchase
from tests.campaigns.factories import BenefitFactory

pytestmark = pytest.mark.django_db


def test_manual_upgrade_grants_the_new_tiers_privileges_once(
    member, django_user_model, django_capture_on_commit_callbacks
):
    # given a gold privilege
    operator = django_user_model.objects.create_user("op", is_staff=True)
    benefit = BenefitFactory(points_price=0, granted_by_tiers=["gold"])
    gold = Tier.objects.get(code="gold")
    # when an operator moves the member to gold (coupons are issued by the queue after commit)
    with django_capture_on_commit_callbacks(execute=True):
        member_set_tier(member=member, tier=gold, by_user=operator, reason="VIP customer")
    member_set_tier(
        member=member, tier=gold, by_user=operator, reason="again", override_until=timezone.now() + timedelta(days=30)
    )
    # then one coupon of that benefit, tier privilege source
    coupons = Coupon.objects.filter(member=member, benefit=benefit)
    assert coupons.count() == 1
    assert coupons.get().source == Coupon.Source.TIER_PRIVILEGE


def test_upgrade_by_evaluation_grants_privileges(member, store, django_capture_on_commit_callbacks):
    # given ¥6,000 of imported history (no points) and a gold privilege
    benefit = BenefitFactory(points_price=0, granted_by_tiers=["gold"])
    Purchase.objects.create(
        store=store,
        receipt_no="OLD-1",
        member=member,
        amount=Decimal("6000.00"),
        paid_at=timezone.now() - timedelta(days=10),
    )
    # when tiers are evaluated (twice)
    with django_capture_on_commit_callbacks(execute=True):
        first = tiers_evaluate()
        second = tiers_evaluate()
    # then the member is gold with one privilege coupon, and the re-run changed nothing
    member.refresh_from_db()
    assert member.tier.code == "gold"
    assert (first.upgraded, second.upgraded) == (1, 0)
    assert Coupon.objects.filter(member=member, benefit=benefit).count() == 1
