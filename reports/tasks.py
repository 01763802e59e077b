"""Periodic report jobs. Each is idempotent and guarded so two runs never overlap."""

from __future__ import annotations

from celery import Task, shared_task
from dateutil.relativedelta import relativedelta
from django.db import DEFAULT_DB_ALIAS
from django.utils import timezone

from loyalty.tasks import single_instance, single_instance_or_retry
from reports import selectors, services

# Rollups and snapshots share one lock: a snapshot reads what a build writes.
LOCK_NAME = "reports.rollups"


@shared_task(name="reports.build_rollups", bind=True)
def build_rollups_task(self: Task) -> int:
    """Nightly: the days not built yet (yesterday), the safety window and dirty
    days; then warms the dashboard's RFM map of the night's segmentation.
    Finding the lock taken, it tries again later (``single_instance_or_retry``)."""
    with single_instance_or_retry(self, LOCK_NAME):
        days = len(services.rollups_build().days)
    # On the primary; the cache key is the segmentation run's, so the pages
    # (on the replica once it has replayed that run) find the same entry.
    selectors.rfm_segment_map(using=DEFAULT_DB_ALIAS)
    return days


@shared_task(name="reports.build_monthly_snapshot", bind=True, max_retries=6, default_retry_delay=600)
def build_monthly_snapshot_task(self) -> str:  # type: ignore[no-untyped-def]
    """On the 1st: the previous month's snapshot, after making sure its days are built."""
    month = services.month_first(timezone.localdate()) - relativedelta(months=1)
    with single_instance(LOCK_NAME) as acquired:
        if not acquired:
            raise self.retry()
        services.rollups_build()
        snapshot = services.kpi_snapshot_build(month=month)
    return f"{snapshot.month:%Y-%m}"
