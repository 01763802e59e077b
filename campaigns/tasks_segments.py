"""The nightly segments job (beat ``segments-compute``, 00:40 local).

Loaded through the import at the end of ``campaigns/tasks.py`` (Celery's
autodiscovery reads only ``tasks.py``).
"""

from celery import Task, shared_task

from campaigns.services.segments import segments_compute
from loyalty.tasks import single_instance_or_retry


@shared_task(name="campaigns.compute_segments", bind=True)
def compute_segments_task(self: Task) -> int:
    """Recompute lifecycle stages and RFM groups; returns the members changed.
    Idempotent (a second run changes nothing) and never runs twice at once:
    a run that finds the lock taken tries again later (``single_instance_or_retry``)."""
    with single_instance_or_retry(self, "campaigns.compute_segments"):
        return segments_compute().updated
