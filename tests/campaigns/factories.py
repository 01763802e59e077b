"""Benefits, coupons and campaigns for tests.

Benefits and campaigns are catalogue data an operator edits in admin, so the
factories write them directly; coupons are always issued through
``coupon_issue`` so that the stock counter and the history are what production
code would write.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

import factory
from django.utils import timezone

from campaigns.models import Benefit, Campaign, CampaignGrant, Coupon, CouponEvent, CouponIssueRequest
from campaigns.services.coupons import coupon_issue
from members.models import Member, Tier


class BenefitFactory(factory.django.DjangoModelFactory):
    """A ¥10-off coupon for 100 points, valid 30 days after issue, any tier, any store.

    ``eligible_tiers`` and ``granted_by_tiers`` take tier codes, ``stores`` takes stores."""

    class Meta:
        model = Benefit
        skip_postgeneration_save = True

    name = factory.Sequence(lambda n: f"满100减10元券-{n}")
    kind = Benefit.Kind.CASH_OFF
    value = Decimal("10.00")
    points_price = 100
    validity = Benefit.Validity.DAYS
    valid_days = 30

    @factory.post_generation
    def eligible_tiers(self, create: bool, extracted: list[str] | None, **kwargs: Any) -> None:
        if create and extracted:
            self.eligible_tiers.set(Tier.objects.filter(code__in=extracted))

    @factory.post_generation
    def granted_by_tiers(self, create: bool, extracted: list[str] | None, **kwargs: Any) -> None:
        if create and extracted:
            self.granted_by_tiers.set(Tier.objects.filter(code__in=extracted))

    @factory.post_generation
    def stores(self, create: bool, extracted: list[Any] | None, **kwargs: Any) -> None:
        if create and extracted:
            self.stores.set(extracted)


def coupon_give(
    benefit: Benefit,
    member: Member,
    *,
    at: datetime | None = None,
    source: str = Coupon.Source.OPERATOR,
    reference: str = "",
) -> Coupon:
    """One coupon of ``benefit`` issued to ``member`` at ``at`` (an operator grant by default)."""
    return coupon_issue(benefit=benefit, member=member, source=source, reference=reference, at=at)


def issued_count(benefit: Benefit) -> int:
    return Benefit.objects.values_list("issued_count", flat=True).get(pk=benefit.pk)


def coupon_state(coupon: Coupon) -> tuple[Any, ...]:
    """(status, written_off_at, store id, terminal id, receipt, purchase id) as stored."""
    return Coupon.objects.values_list(
        "status",
        "written_off_at",
        "written_off_store_id",
        "written_off_terminal_id",
        "written_off_receipt",
        "purchase_id",
    ).get(pk=coupon.pk)


def events_of(coupon: Coupon) -> list[tuple[Any, ...]]:
    """(kind, store id, terminal id, receipt, reason) of the coupon's history, oldest first."""
    return list(
        CouponEvent.objects.filter(coupon=coupon)
        .order_by("pk")
        .values_list("kind", "store_id", "terminal_id", "receipt_no", "reason")
    )


def coupon_snapshot() -> dict[str, list[Any]]:
    """Every row a coupon service can write, to prove that a refusal changed nothing."""
    return {
        "benefits": list(Benefit.objects.order_by("pk").values_list("pk", "issued_count")),
        "coupons": list(
            Coupon.objects.order_by("pk").values_list(
                "pk",
                "code",
                "member_id",
                "status",
                "valid_from",
                "valid_until",
                "written_off_at",
                "written_off_store_id",
                "written_off_terminal_id",
                "written_off_receipt",
                "purchase_id",
                "exchange_entry_id",
                "replaces_id",
            )
        ),
        "events": list(CouponEvent.objects.order_by("pk").values_list("pk", "coupon_id", "kind")),
        "requests": list(
            CouponIssueRequest.objects.order_by("pk").values_list("pk", "status", "attempts", "coupon_id")
        ),
    }


class CampaignFactory(factory.django.DjangoModelFactory):
    """An active ×2 points multiplier running since 2026-01-01 (local), no end,
    no budget, no limit. ``stores`` takes stores, ``tiers`` takes tier codes.

    Campaigns are set up by marketing in admin, so the factory writes them
    directly; their effects always go through ``campaigns.services.campaigns``."""

    class Meta:
        model = Campaign
        skip_postgeneration_save = True

    name = factory.Sequence(lambda n: f"会员日双倍积分-{n}")
    kind = Campaign.Kind.MULTIPLIER
    status = Campaign.Status.ACTIVE
    starts_at = factory.LazyFunction(lambda: datetime(2026, 1, 1, tzinfo=timezone.get_current_timezone()))
    multiplier = Decimal("2.00")

    @factory.post_generation
    def stores(self, create: bool, extracted: list[Any] | None, **kwargs: Any) -> None:
        if create and extracted:
            self.stores.set(extracted)

    @factory.post_generation
    def tiers(self, create: bool, extracted: list[str] | None, **kwargs: Any) -> None:
        if create and extracted:
            self.tiers.set(Tier.objects.filter(code__in=extracted))


def spent(campaign: Campaign) -> tuple[int, int]:
    """(points, coupons) the campaign issued, from its grants; for a campaign
    with a budget this must also be its stored spend (the budget counters)."""
    from django.db.models import Count, Sum

    from campaigns.models import CampaignGrant

    totals = CampaignGrant.objects.filter(campaign=campaign).aggregate(points=Sum("points"), coupons=Count("coupon"))
    issued = (totals["points"] or 0, totals["coupons"] or 0)
    stored = Campaign.objects.values_list("spent_points", "spent_coupons", "budget_points", "budget_coupons").get(
        pk=campaign.pk
    )
    if stored[2] is not None:
        assert stored[0] == issued[0], "the points budget counter matches the grants"
    if stored[3] is not None:
        assert stored[1] == issued[1], "the coupon budget counter matches the grants"
    return issued


def grants_of(campaign: Campaign) -> list[tuple[int, str, int, bool]]:
    """(member id, reference, points, has a coupon) of the campaign's grants, in creation order."""
    return [
        (member_id, reference, points, coupon_id is not None)
        for member_id, reference, points, coupon_id in CampaignGrant.objects.filter(campaign=campaign)
        .order_by("pk")
        .values_list("member_id", "reference", "points", "coupon_id")
    ]
