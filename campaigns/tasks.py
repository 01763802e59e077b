"""Periodic coupon jobs; each idempotent and guarded against overlapping runs."""

from celery import Task, shared_task

from campaigns.services import issuing
from campaigns.services.coupons import coupons_expire_due
from loyalty.tasks import single_instance, single_instance_or_retry


@shared_task(name="campaigns.coupon_issue_process")
def coupon_issue_process_task(request_id: int) -> str:
    return issuing.coupon_issue_process(request_id=request_id)


@shared_task(name="campaigns.coupon_issue_sweep")
def coupon_issue_sweep_task() -> int:
    with single_instance("campaigns.coupon_issue_sweep") as acquired:
        return issuing.coupon_issue_sweep() if acquired else 0


@shared_task(name="campaigns.coupons_expire", bind=True)
def coupons_expire_task(self: Task) -> int:
    with single_instance_or_retry(self, "campaigns.coupons_expire"):
        return coupons_expire_due()


@shared_task(name="campaigns.tier_privileges_monthly", bind=True)
def tier_privileges_monthly_task(self: Task) -> int:
    with single_instance_or_retry(self, "campaigns.tier_privileges_monthly"):
        return issuing.tier_privileges_grant_monthly()


@shared_task(name="campaigns.run_scheduled", bind=True)
def campaigns_run_scheduled_task(self: Task) -> int:
    from campaigns.services.campaigns import campaigns_run_scheduled

    with single_instance_or_retry(self, "campaigns.run_scheduled"):
        return campaigns_run_scheduled()


from campaigns.tasks_messaging import *  # noqa: E402,F401,F403
from campaigns.tasks_segments import compute_segments_task  # noqa: E402,F401
