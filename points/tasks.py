"""Periodic points jobs. Each is idempotent and guarded so two runs never overlap."""

from celery import shared_task

from loyalty.tasks import single_instance
from points import batch


@shared_task(name="points.expire_due")
def expire_due_task() -> int:
    with single_instance("points.expire_due") as acquired:
        return batch.points_expire_due().points if acquired else 0


@shared_task(name="points.release_pending")
def release_pending_task() -> int:
    with single_instance("points.release_pending") as acquired:
        return batch.points_release_pending() if acquired else 0


@shared_task(name="points.evaluate_tiers")
def evaluate_tiers_task() -> int:
    with single_instance("points.evaluate_tiers") as acquired:
        if not acquired:
            return 0
        result = batch.tiers_evaluate()
        return result.upgraded + result.downgraded


@shared_task(name="points.check_ledger")
def check_ledger_task() -> int:
    with single_instance("points.check_ledger") as acquired:
        return batch.ledger_check().count if acquired else -1
