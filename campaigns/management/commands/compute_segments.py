from datetime import date
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils.translation import gettext as _

from campaigns.services.segments import segments_compute, segments_summary
from loyalty.tasks import single_instance
from members.models import Member
from points.batch import as_of_datetime


class Command(BaseCommand):
    help = (
        "Recompute every member's last purchase, lifecycle stage, RFM scores and RFM group (what the nightly "
        "beat job does), writing only the members whose values changed; then print the members by stage and group."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--as-of", type=date.fromisoformat, help="Compute as of local midnight starting this day (YYYY-MM-DD)"
        )
        parser.add_argument("--batch-size", type=int, help="Members per transaction")

    def handle(self, *args: Any, **options: Any) -> None:
        as_of = as_of_datetime(options["as_of"]) if options["as_of"] else None
        with single_instance("campaigns.compute_segments") as acquired:
            if not acquired:
                raise CommandError(_("Segments are being computed by another process; try again later."))
            result = segments_compute(as_of=as_of, batch_size=options["batch_size"])
        self.stdout.write(
            self.style.SUCCESS(
                _("Segments: %(updated)d members changed, %(scored)d with RFM scores, %(batches)d batches.")
                % {"updated": result.updated, "scored": result.scored, "batches": result.batches}
            )
        )
        summary = segments_summary()
        for value, label in Member.Lifecycle.choices:
            self.stdout.write(f"  {label}: {summary['lifecycle_stage'].get(value, 0)}")
        for value, label in [*Member.RfmGroup.choices, ("", _("No RFM group"))]:
            self.stdout.write(f"  {label}: {summary['rfm_group'].get(value, 0)}")
