from celery import shared_task
from django.utils import timezone

from loyalty.models import Heartbeat


@shared_task(name="loyalty.tasks.heartbeat")
def heartbeat() -> None:
    """Scheduled every minute by beat; /healthz reads its time."""
    Heartbeat.objects.update_or_create(name="beat", defaults={"at": timezone.now()})
