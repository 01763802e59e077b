"""Demo catalogue, coupons and campaigns (through the real services)."""

from __future__ import annotations

import random
from datetime import timedelta
from decimal import Decimal

from django.db import transaction
from django.utils import timezone

from campaigns.models import Benefit, Campaign, Coupon
from campaigns.services.coupons import benefit_exchange, coupon_write_off
from loyalty.errors import LoyaltyError
from members.models import Member, Tier
from points.models import PointsAccount


def seed_catalogue_and_campaigns(*, seed: int = 20260103) -> str:
    rng = random.Random(seed)
    now = timezone.now()
    gold = Tier.objects.filter(code="gold").first()
    benefits = [
        Benefit.objects.create(
            name="满100减10元券",
            kind=Benefit.Kind.CASH_OFF,
            value=Decimal("10"),
            min_spend=Decimal("100"),
            points_price=1000,
            valid_days=30,
        ),
        Benefit.objects.create(
            name="全场9折券",
            kind=Benefit.Kind.PERCENT_OFF,
            value=Decimal("10"),
            points_price=3000,
            valid_days=14,
            total_stock=500,
            per_member_limit=2,
        ),
        Benefit.objects.create(
            name="品牌帆布袋",
            kind=Benefit.Kind.GIFT,
            value=Decimal("39"),
            points_price=2500,
            cash_price=Decimal("9.90"),
            total_stock=200,
            valid_days=30,
        ),
        Benefit.objects.create(
            name="免费咖啡一杯", kind=Benefit.Kind.SERVICE, value=Decimal("18"), points_price=800, valid_days=7
        ),
    ]
    privilege = Benefit.objects.create(
        name="金卡月度礼券 满200减30",
        kind=Benefit.Kind.TIER_PRIVILEGE,
        value=Decimal("30"),
        min_spend=Decimal("200"),
        valid_days=30,
    )
    if gold:
        privilege.granted_by_tiers.set([gold])
    Campaign.objects.create(
        name="会员日双倍积分（每月8日）",
        kind=Campaign.Kind.MULTIPLIER,
        status=Campaign.Status.ACTIVE,
        starts_at=now - timedelta(days=1),
        multiplier=Decimal("2"),
        month_day=8,
        budget_points=500_000,
    )
    Campaign.objects.create(
        name="生日月1.5倍积分",
        kind=Campaign.Kind.BIRTHDAY,
        status=Campaign.Status.ACTIVE,
        starts_at=now - timedelta(days=1),
        multiplier=Decimal("1.5"),
        benefit=benefits[3],
    )
    Campaign.objects.create(
        name="邀请好友：首单奖励200积分，满3人再奖500",
        kind=Campaign.Kind.REFERRAL,
        status=Campaign.Status.ACTIVE,
        starts_at=now - timedelta(days=1),
        points=200,
        threshold_count=3,
        threshold_points=500,
        budget_points=200_000,
    )
    exchanged = written_off = 0
    rich = list(
        PointsAccount.objects.filter(balance__gte=3000, member__status=Member.Status.ACTIVE)
        .select_related("member__tier")
        .order_by("member_id")[:150]
    )
    for account in rich:
        benefit = rng.choice(benefits)
        try:
            with transaction.atomic():
                coupon = benefit_exchange(benefit=benefit, member=account.member)
        except LoyaltyError:
            continue
        exchanged += 1
        if rng.random() < 0.4:
            store = account.member.registration_store
            if store is None:
                continue
            try:
                with transaction.atomic():
                    coupon_write_off(
                        code=coupon.code, store=store, terminal=None, receipt_no=f"DW{coupon.pk}", member=account.member
                    )
                written_off += 1
            except LoyaltyError:
                continue
    issued = Coupon.objects.count()
    return (
        f"Seeded {len(benefits) + 1} benefits, 3 campaigns, {exchanged} points exchanges "
        f"({written_off} written off; {issued} coupons in all)."
    )
