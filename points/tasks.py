"""Periodic points jobs. Each is idempotent and guarded so two runs never overlap;
the daily ones retry when they find their lock taken (``single_instance_or_retry``)."""

from celery import Task, shared_task

from loyalty.tasks import single_instance, single_instance_or_retry
from points import batch


@shared_task(name="points.expire_due", bind=True)
def expire_due_task(self: Task) -> int:
    with single_instance_or_retry(self, "points.expire_due"):
        return batch.points_expire_due().points


@shared_task(name="points.release_pending")
def release_pending_task() -> int:
    with single_instance("points.release_pending") as acquired:
        return batch.points_release_pending() if acquired else 0


@shared_task(name="points.evaluate_tiers", bind=True)
def evaluate_tiers_task(self: Task) -> int:
    with single_instance_or_retry(self, "points.evaluate_tiers"):
        result = batch.tiers_evaluate()
        return result.upgraded + result.downgraded


@shared_task(name="points.check_ledger", bind=True)
def check_ledger_task(self: Task) -> int:
    with single_instance_or_retry(self, "points.check_ledger"):
        return batch.ledger_check().count
