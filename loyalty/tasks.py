import logging
import zlib
from collections.abc import Iterator
from contextlib import contextmanager

from celery import Task, shared_task
from django.conf import settings
from django.db import connection
from django.utils import timezone

from loyalty.models import Heartbeat

logger = logging.getLogger(__name__)


# A busy daily job is retried at most this many times (``single_instance_or_retry``).
BUSY_RETRY_MAX = 60


def _try_lock(name: str) -> int | None:
    key = zlib.crc32(name.encode())
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [key])
        (acquired,) = cursor.fetchone()
    return key if acquired else None


def _unlock(key: int) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_unlock(%s)", [key])


@contextmanager
def single_instance(name: str) -> Iterator[bool]:
    """Hold a PostgreSQL session advisory lock for ``name``: a second run of the
    same job (overlapping beat tick, redelivery after acks_late) skips instead
    of racing. The lock dies with the connection if the worker is killed."""
    key = _try_lock(name)
    if key is None:
        logger.info("%s is already running elsewhere; skipped", name)
        yield False
        return
    try:
        yield True
    finally:
        _unlock(key)


@contextmanager
def single_instance_or_retry(task: Task, name: str) -> Iterator[None]:
    """``single_instance`` for daily and monthly jobs: when the lock is taken,
    the task is retried ``LOYALTY_JOB_BUSY_RETRY_SECONDS`` later (raises
    ``celery.exceptions.Retry``; after ``BUSY_RETRY_MAX`` tries it fails,
    logged) instead of waiting for the next day.

    The holder is usually a run still going, and the retry then finds nothing
    left to do. But it may be a pool process that was killed (OOM) in the
    middle of a statement: its database session keeps the lock until that
    statement ends, while the broker has already handed the task (acks_late,
    reject on worker lost) to a new process, whose run a plain skip would drop."""
    key = _try_lock(name)
    if key is None:
        delay = settings.LOYALTY_JOB_BUSY_RETRY_SECONDS
        logger.warning("%s is already running elsewhere; retrying in %s s", name, delay)
        raise task.retry(countdown=delay, max_retries=BUSY_RETRY_MAX)
    try:
        yield
    finally:
        _unlock(key)


@shared_task(name="loyalty.tasks.heartbeat")
def heartbeat() -> None:
    """Scheduled every minute by beat; /healthz reads its time."""
    Heartbeat.objects.update_or_create(name="beat", defaults={"at": timezone.now()})
