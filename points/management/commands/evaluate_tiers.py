from django.core.management.base import BaseCommand, CommandParser

from points.batch import as_of_datetime, tiers_evaluate
from points.management.commands._common import parse_day


class Command(BaseCommand):
    help = "Re-evaluate member tiers (upgrades, and downgrades after a tier's validity). Safe to re-run."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--as-of", help="Evaluate as of the start of this local date (YYYY-MM-DD); default now")
        parser.add_argument("--batch-size", type=int, default=None)

    def handle(self, *args: object, **options: str) -> None:
        as_of = as_of_datetime(parse_day(options["as_of"]))
        result = tiers_evaluate(as_of=as_of, batch_size=options["batch_size"])
        self.stdout.write(f"Tiers as of {as_of:%Y-%m-%d}: {result.upgraded} upgraded, {result.downgraded} downgraded.")
