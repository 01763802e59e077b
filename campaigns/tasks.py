"""Periodic coupon jobs; each idempotent and guarded against overlapping runs."""

from celery import shared_task

from campaigns.services import issuing
from campaigns.services.coupons import coupons_expire_due
from loyalty.tasks import single_instance


@shared_task(name="campaigns.coupon_issue_process")
def coupon_issue_process_task(request_id: int) -> str:
    return issuing.coupon_issue_process(request_id=request_id)


@shared_task(name="campaigns.coupon_issue_sweep")
def coupon_issue_sweep_task() -> int:
    with single_instance("campaigns.coupon_issue_sweep") as acquired:
        return issuing.coupon_issue_sweep() if acquired else 0


@shared_task(name="campaigns.coupons_expire")
def coupons_expire_task() -> int:
    with single_instance("campaigns.coupons_expire") as acquired:
        return coupons_expire_due() if acquired else 0


@shared_task(name="campaigns.tier_privileges_monthly")
def tier_privileges_monthly_task() -> int:
    with single_instance("campaigns.tier_privileges_monthly") as acquired:
        return issuing.tier_privileges_grant_monthly() if acquired else 0


@shared_task(name="campaigns.run_scheduled")
def campaigns_run_scheduled_task() -> int:
    from campaigns.services.campaigns import campaigns_run_scheduled

    with single_instance("campaigns.run_scheduled") as acquired:
        return campaigns_run_scheduled() if acquired else 0


from campaigns.tasks_messaging import *  # noqa: E402,F401,F403
from campaigns.tasks_segments import compute_segments_task  # noqa: E402,F401
