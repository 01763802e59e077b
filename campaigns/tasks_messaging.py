"""Celery tasks of the member outbox and the webhooks.

The per-message and per-delivery tasks are queued after commit by the
services; the sweeps and the reminders run from beat (``CELERY_BEAT_SCHEDULE``:
"outbox-send" and "webhooks-deliver" every minute, "points-expiry-reminders"
at 10:00 and "coupons-expiring-reminders" at 10:05 local). Every task takes
ids, re-reads under a row lock and is safe to run twice (``acks_late``); the
scheduled ones are also guarded by an advisory lock so two runs never overlap.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

from celery import Task, shared_task

from campaigns.services import notifications, webhooks
from loyalty.tasks import single_instance, single_instance_or_retry

# A sweep works batches of this size while a backlog remains, for at most
# this long (the next beat tick is a minute away).
SWEEP_BATCH = 500
SWEEP_SECONDS = 45.0

__all__ = [
    "coupons_expiring_reminders_task",
    "outbox_send_due_task",
    "outbox_send_many_task",
    "outbox_send_task",
    "points_expiry_reminders_task",
    "webhook_deliver_many_task",
    "webhook_deliver_task",
    "webhooks_deliver_due_task",
]


def _drain(sweep: Callable[..., Counter[str]]) -> int:
    """Run ``sweep`` batch after batch while batches come back full of work
    (a backlog: marketing released at the end of quiet hours, a gateway back
    after an outage), within ``SWEEP_SECONDS``. Rows another worker holds
    ("untouched") do not count as work, so a locked batch never spins."""
    started, done = time.monotonic(), 0
    while True:
        outcomes = sweep(limit=SWEEP_BATCH)
        worked = sum(outcomes.values()) - outcomes["untouched"]
        done += worked
        if sum(outcomes.values()) < SWEEP_BATCH or worked == 0 or time.monotonic() - started > SWEEP_SECONDS:
            return done


@shared_task(name="campaigns.outbox_send")
def outbox_send_task(message_id: int) -> str | None:
    return notifications.outbox_send(message_id=message_id)


@shared_task(name="campaigns.outbox_send_many")
def outbox_send_many_task(message_ids: list[int]) -> int:
    return sum(notifications.outbox_send_many(message_ids=message_ids).values())


@shared_task(name="campaigns.outbox_send_due")
def outbox_send_due_task() -> int:
    with single_instance("campaigns.outbox_send_due") as acquired:
        return _drain(notifications.outbox_send_due) if acquired else 0


# The daily reminders retry when they find their lock taken; the every-minute
# sweeps skip (the next minute's run comes soon enough).
@shared_task(name="campaigns.points_expiry_reminders", bind=True)
def points_expiry_reminders_task(self: Task) -> int:
    with single_instance_or_retry(self, "campaigns.points_expiry_reminders"):
        return notifications.points_expiry_reminders()


@shared_task(name="campaigns.coupons_expiring_reminders", bind=True)
def coupons_expiring_reminders_task(self: Task) -> int:
    with single_instance_or_retry(self, "campaigns.coupons_expiring_reminders"):
        return notifications.coupons_expiring_reminders()


@shared_task(name="campaigns.webhook_deliver")
def webhook_deliver_task(delivery_id: int) -> str | None:
    return webhooks.webhook_deliver(delivery_id=delivery_id)


@shared_task(name="campaigns.webhook_deliver_many")
def webhook_deliver_many_task(delivery_ids: list[int]) -> int:
    return sum(webhooks.webhooks_deliver_many(delivery_ids=delivery_ids).values())


@shared_task(name="campaigns.webhooks_deliver_due")
def webhooks_deliver_due_task() -> int:
    with single_instance("campaigns.webhooks_deliver_due") as acquired:
        return _drain(webhooks.webhooks_deliver_due) if acquired else 0
