"""Reads of the benefit catalogue and coupons."""

from __future__ import annotations

from datetime import datetime

from django.db.models import Count, Q, QuerySet
from django.utils import timezone

from campaigns.models import Benefit, Coupon
from members.models import Member


def coupon_list(*, member: Member, status: str | None = None) -> QuerySet[Coupon]:
    queryset = Coupon.objects.filter(member=member).select_related("benefit").order_by("-issued_at", "-pk")
    if status:
        queryset = queryset.filter(status=status)
    return queryset


def benefit_catalogue(*, member: Member, at: datetime | None = None) -> list[tuple[Benefit, str | None]]:
    """Benefits shown to a member, each with why the member cannot exchange it now (None if they can)."""
    from campaigns.services.coupons import benefit_unavailable_reason
    from points.selectors import points_summary_get

    at = at or timezone.now()
    benefits = (
        Benefit.objects.filter(is_active=True, points_price__gt=0)
        .filter(Q(active_until__isnull=True) | Q(active_until__gt=at))
        .prefetch_related("eligible_tiers", "stores")
        .order_by("points_price", "pk")
    )
    held = dict(
        Coupon.objects.filter(member=member)
        .exclude(status=Coupon.Status.VOID)
        .values_list("benefit_id")
        .annotate(n=Count("id"))
        .values_list("benefit_id", "n")
    )
    spendable = points_summary_get(member=member)["spendable"]
    result = []
    for benefit in benefits:
        reason = benefit_unavailable_reason(benefit=benefit, member=member, at=at)
        if reason is None and benefit.per_member_limit is not None and held.get(benefit.pk, 0) >= benefit.per_member_limit:
            reason = "limit"
        if reason is None and spendable < benefit.points_price:
            reason = "points"
        if reason is None and member.status != Member.Status.ACTIVE:
            reason = "inactive"
        result.append((benefit, reason))
    return result
