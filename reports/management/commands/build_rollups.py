from __future__ import annotations

from datetime import date
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from loyalty.tasks import single_instance
from reports.services import rollups_build
from reports.tasks import LOCK_NAME


def _day(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise CommandError(f"Not a date (YYYY-MM-DD): {value}") from None


class Command(BaseCommand):
    help = (
        "Build the report rollups as the nightly job does: days not built yet, the last two days and days "
        "changed since the last run. --since rebuilds every day from that day on."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--since", help="Rebuild every day from this local day (YYYY-MM-DD) on.")
        parser.add_argument("--until", help="Build days before this local day (YYYY-MM-DD; default today).")

    def handle(self, *args: Any, **options: Any) -> None:
        since = _day(options["since"]) if options["since"] else None
        until = _day(options["until"]) if options["until"] else None
        with single_instance(LOCK_NAME) as acquired:
            if not acquired:
                raise CommandError("The report rollups are being built by another process; try again later.")
            result = rollups_build(since=since, until=until)
        self.stdout.write(
            f"Built {len(result.days)} days and {len(result.months)} months in {result.seconds:.2f} s "
            f"(longest run of days {result.max_day_run_seconds:.2f} s, longest month {result.max_month_seconds:.2f} s)."
        )
