from django.core.management.base import BaseCommand, CommandError, CommandParser

from points.batch import ledger_check


class Command(BaseCommand):
    help = "Verify every points ledger invariant for every member; exits non-zero naming the violations."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--limit", type=int, default=100, help="Examples shown per kind of violation")

    def handle(self, *args: object, **options: int) -> None:
        report = ledger_check(limit=options["limit"])
        if report.ok:
            self.stdout.write(self.style.SUCCESS(f"Ledger OK: {report.checked_accounts} accounts, 0 violations."))
            return
        for name, rows in report.violations.items():
            self.stdout.write(self.style.ERROR(f"{name}: {len(rows)}"))
            for row in rows:
                self.stdout.write(f"  {row}")
        raise CommandError(f"{report.count} ledger violations found.")
