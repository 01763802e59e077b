from __future__ import annotations

import re
from datetime import date, timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from loyalty.tasks import single_instance
from reports.services import kpi_snapshot_build, month_next, rollups_build
from reports.tasks import LOCK_NAME


class Command(BaseCommand):
    help = "Rebuild the rollups of one month (YYYY-MM), then its report snapshot (replacing an earlier one)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--month", required=True, help="The month, YYYY-MM (local calendar month).")

    def handle(self, *args: Any, **options: Any) -> None:
        text = options["month"]
        if not re.fullmatch(r"\d{4}-(0[1-9]|1[0-2])", text):
            raise CommandError(f"Not a month (YYYY-MM): {text}")
        month = date(int(text[:4]), int(text[5:]), 1)
        today = timezone.localdate()
        if month > today:
            raise CommandError(f"{text} has not started yet.")
        until = min(month_next(month), today)
        with single_instance(LOCK_NAME) as acquired:
            if not acquired:
                raise CommandError("The report rollups are being built by another process; try again later.")
            result = rollups_build(since=month, until=until) if until > month else None
            snapshot = kpi_snapshot_build(month=month)
        days = len(result.days) if result else 0
        built_at = timezone.localtime(snapshot.built_at)
        through = until - timedelta(days=1)
        self.stdout.write(
            f"Rebuilt {days} days of {text} (through {through:%Y-%m-%d}); snapshot built at {built_at:%Y-%m-%d %H:%M:%S}."
        )
