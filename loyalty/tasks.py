import logging
import zlib
from collections.abc import Iterator
from contextlib import contextmanager

from celery import shared_task
from django.db import connection
from django.utils import timezone

from loyalty.models import Heartbeat

logger = logging.getLogger(__name__)


@contextmanager
def single_instance(name: str) -> Iterator[bool]:
    """Hold a PostgreSQL session advisory lock for ``name``: a second run of the
    same job (overlapping beat tick, redelivery after acks_late) skips instead
    of racing. The lock dies with the connection if the worker is killed."""
    key = zlib.crc32(name.encode())
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [key])
        (acquired,) = cursor.fetchone()
    if not acquired:
        logger.info("%s is already running elsewhere; skipped", name)
        yield False
        return
    try:
        yield True
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [key])


@shared_task(name="loyalty.tasks.heartbeat")
def heartbeat() -> None:
    """Scheduled every minute by beat; /healthz reads its time."""
    Heartbeat.objects.update_or_create(name="beat", defaults={"at": timezone.now()})
