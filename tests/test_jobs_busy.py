"""Daily and monthly jobs that find their lock taken try again later instead of
being dropped for the day (``loyalty.tasks.single_instance_or_retry``)."""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from celery.exceptions import Retry
from django.db import connection

from campaigns.tasks_messaging import coupons_expiring_reminders_task, points_expiry_reminders_task
from campaigns.tasks_segments import compute_segments_task
from points.tasks import check_ledger_task, evaluate_tiers_task, expire_due_task
from reports.tasks import LOCK_NAME as REPORTS_LOCK
from reports.tasks import build_rollups_task

pytestmark = pytest.mark.django_db

DAILY = [
    (expire_due_task, "points.expire_due"),
    (evaluate_tiers_task, "points.evaluate_tiers"),
    (check_ledger_task, "points.check_ledger"),
    (compute_segments_task, "campaigns.compute_segments"),
    (points_expiry_reminders_task, "campaigns.points_expiry_reminders"),
    (coupons_expiring_reminders_task, "campaigns.coupons_expiring_reminders"),
    (build_rollups_task, REPORTS_LOCK),
]


@contextmanager
def held_elsewhere(name: str) -> Iterator[None]:
    """The job's advisory lock, held by another database session (a run still
    going, or a killed worker's session)."""
    other = connection.get_new_connection(connection.get_connection_params())
    try:
        with other.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_lock(%s)", [zlib.crc32(name.encode())])
        yield
    finally:
        other.close()


@pytest.mark.parametrize(("task", "lock"), DAILY, ids=[lock for _task, lock in DAILY])
def test_a_daily_job_finding_its_lock_taken_retries_later(task, lock, settings, caplog) -> None:
    settings.LOYALTY_JOB_BUSY_RETRY_SECONDS = 123
    with held_elsewhere(lock), pytest.raises(Retry, match="Retry in 123s"):
        task.apply()  # eager, propagating: the retry is raised
    assert f"{lock} is already running elsewhere; retrying in 123 s" in caplog.text


@pytest.mark.parametrize(("task", "lock"), DAILY, ids=[lock for _task, lock in DAILY])
def test_a_daily_job_runs_when_its_lock_is_free(task, lock) -> None:
    result = task.apply()
    assert result.state == "SUCCESS", (result.state, result.result)
