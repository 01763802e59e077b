"""Asynchronous coupon issuing with a retry queue, and tier privileges.

Coupons that campaigns and tier privileges grant are queued as
``CouponIssueRequest`` rows (unique per benefit, member and reference, so a
re-run queues nothing twice) and issued by a worker. A business refusal (out of
stock, member frozen…) fails the request at once; anything else is retried
with backoff (1, 2, 4, 8 minutes: within 15 minutes), then marked failed and
listed in admin, where an operator can retry it.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.db import IntegrityError, transaction
from django.utils import timezone

from campaigns.models import Benefit, Coupon, CouponIssueRequest
from loyalty.errors import LoyaltyError
from members.models import Member, Tier

logger = logging.getLogger(__name__)
BACKOFF_MINUTES = (1, 2, 4, 8)


@transaction.atomic
def coupon_issue_enqueue(*, benefit: Benefit, member: Member, source: str, reference: str) -> CouponIssueRequest | None:
    """Queue one coupon; None when this (benefit, member, reference) was queued before."""
    try:
        with transaction.atomic():
            request = CouponIssueRequest.objects.create(
                benefit=benefit, member=member, source=source, reference=reference, next_attempt_at=timezone.now()
            )
    except IntegrityError:
        return None
    transaction.on_commit(lambda: _process_soon(request.pk))
    return request


def _process_soon(request_id: int) -> None:
    from campaigns.tasks import coupon_issue_process_task

    try:
        coupon_issue_process_task.delay(request_id)
    except Exception as exc:  # broker down: the every-minute sweep picks the row up
        logger.warning("could not queue coupon issue %s (%s); the periodic sweep will", request_id, exc)


def coupon_issue_process(*, request_id: int, now: datetime | None = None) -> str:
    """Try to issue one queued coupon. Returns its new status."""
    from campaigns.locks import issue_request_qs_for_update
    from campaigns.services.coupons import coupon_issue

    now = now or timezone.now()
    with transaction.atomic():
        request = (
            issue_request_qs_for_update(skip_locked=True)
            .filter(pk=request_id, status=CouponIssueRequest.Status.PENDING, next_attempt_at__lte=now)
            .select_related("benefit", "member")
            .first()
        )
        if request is None:
            return "skipped"
        request.attempts += 1
        try:
            with transaction.atomic():
                coupon = coupon_issue(
                    benefit=request.benefit, member=request.member, source=request.source, reference=request.reference
                )
        except LoyaltyError as exc:
            request.status = CouponIssueRequest.Status.FAILED
            request.last_error = f"{exc.code}: {exc.render_message()}"
        except Exception as exc:  # transient (database, lock timeout…): retried with backoff
            logger.warning("coupon issue %s failed (attempt %s): %s", request.pk, request.attempts, exc)
            request.last_error = repr(exc)[:2000]
            if request.attempts > len(BACKOFF_MINUTES):
                request.status = CouponIssueRequest.Status.FAILED
            else:
                request.next_attempt_at = now + timedelta(minutes=BACKOFF_MINUTES[request.attempts - 1])
        else:
            request.status = CouponIssueRequest.Status.DONE
            request.coupon = coupon
            request.last_error = ""
        request.save(update_fields=["attempts", "status", "last_error", "next_attempt_at", "coupon"])
        return request.status


def coupon_issue_sweep(*, now: datetime | None = None, limit: int = 500) -> int:
    """Process every due pending request (run every minute by beat)."""
    now = now or timezone.now()
    ids = list(
        CouponIssueRequest.objects.filter(
            status=CouponIssueRequest.Status.PENDING, next_attempt_at__lte=now
        ).values_list("pk", flat=True)[:limit]
    )
    for request_id in ids:
        coupon_issue_process(request_id=request_id, now=now)
    return len(ids)


@transaction.atomic
def coupon_issue_retry(*, request: CouponIssueRequest) -> CouponIssueRequest:
    """An operator sends a failed request back to the queue."""
    CouponIssueRequest.objects.filter(pk=request.pk, status=CouponIssueRequest.Status.FAILED).update(
        status=CouponIssueRequest.Status.PENDING, attempts=0, next_attempt_at=timezone.now()
    )
    request.refresh_from_db()
    transaction.on_commit(lambda: _process_soon(request.pk))
    return request


def tier_privilege_period(at: datetime) -> str:
    return f"tier:{timezone.localtime(at):%Y-%m}"


def tier_privileges_grant(*, member: Member, tier: Tier | None = None, at: datetime | None = None) -> int:
    """Queue this month's tier privileges of ``member`` (once per period)."""
    at = at or timezone.now()
    tier = tier or member.tier
    queued = 0
    for benefit in Benefit.objects.filter(granted_by_tiers=tier, is_active=True):
        reference = f"{tier_privilege_period(at)}:{tier.code}"
        if coupon_issue_enqueue(benefit=benefit, member=member, source=Coupon.Source.TIER_PRIVILEGE, reference=reference):
            queued += 1
    return queued


def tier_privileges_grant_monthly(*, at: datetime | None = None, batch_size: int = 2000) -> int:
    """Monthly: queue every active member's privileges for this period."""
    at = at or timezone.now()
    queued = 0
    tiers = Tier.objects.filter(granted_benefits__is_active=True).distinct()
    for tier in tiers:
        member_ids = Member.objects.filter(tier=tier, status=Member.Status.ACTIVE).values_list("pk", flat=True)
        for member in Member.objects.filter(pk__in=member_ids).select_related("tier").iterator(chunk_size=batch_size):
            queued += tier_privileges_grant(member=member, tier=tier, at=at)
    return queued
