from django.core.management.base import BaseCommand, CommandParser

from loyalty.models import Heartbeat
from members import demo


class Command(BaseCommand):
    help = "Seed demo data once: stores, terminals (keys printed), members, and their history."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--members", type=int, default=3000)
        parser.add_argument("--force", action="store_true", help="Seed again even if done before")

    def handle(self, *args: object, **options: int) -> None:
        if Heartbeat.objects.filter(name="seed_demo").exists() and not options["force"]:
            self.stdout.write("Demo data already seeded; keeping it.")
            return
        from datetime import timedelta

        from django.utils import timezone

        stores, keys = demo.seed_stores_and_terminals()
        count = demo.seed_members(count=options["members"], stores=stores)
        self.stdout.write(f"Seeded {len(stores)} stores and {count} members.")
        from points.demo import seed_history

        self.stdout.write(seed_history())
        from campaigns.demo import seed_catalogue_and_campaigns
        from campaigns.services.segments import segments_compute

        self.stdout.write(seed_catalogue_and_campaigns())
        result = segments_compute()
        self.stdout.write(f"Computed lifecycle stages and RFM scores ({result.updated} members updated).")
        from reports.services import kpi_snapshot_build, month_first, rollups_build

        rollups_build()
        last_month = month_first(month_first(timezone.localdate()) - timedelta(days=1))
        kpi_snapshot_build(month=last_month)
        self.stdout.write(f"Built report rollups and the {last_month:%Y-%m} snapshot.")
        Heartbeat.objects.update_or_create(name="seed_demo", defaults={"at": timezone.now()})
        if keys:
            self.stdout.write("Terminal API keys (shown once):")
            for terminal, key in keys:
                self.stdout.write(f"  {terminal}: {key}")
