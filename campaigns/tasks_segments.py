"""The nightly segments job (beat ``segments-compute``, 00:40 local).

Loaded through the import at the end of ``campaigns/tasks.py`` (Celery's
autodiscovery reads only ``tasks.py``).
"""

from celery import shared_task

from campaigns.services.segments import segments_compute
from loyalty.tasks import single_instance


@shared_task(name="campaigns.compute_segments")
def compute_segments_task() -> int:
    """Recompute lifecycle stages and RFM groups; returns the members changed.
    Idempotent (a second run changes nothing) and never runs twice at once."""
    with single_instance("campaigns.compute_segments") as acquired:
        return segments_compute().updated if acquired else 0
