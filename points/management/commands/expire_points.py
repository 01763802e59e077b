from django.core.management.base import BaseCommand, CommandParser

from points.batch import as_of_datetime, points_expire_due
from points.management.commands._common import parse_day


class Command(BaseCommand):
    help = "Expire points whose expiry date has passed (as the nightly task does). Safe to re-run."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--as-of", help="Expire as of the start of this local date (YYYY-MM-DD); default now")
        parser.add_argument("--batch-size", type=int, default=None)

    def handle(self, *args: object, **options: str) -> None:
        as_of = as_of_datetime(parse_day(options["as_of"]))
        result = points_expire_due(as_of=as_of, batch_size=options["batch_size"])
        self.stdout.write(
            f"Expired {result.points} points in {result.lots} lots of {result.members} members "
            f"({result.batches} batches, longest {result.max_batch_seconds:.2f} s) as of {as_of:%Y-%m-%d %H:%M %Z}."
        )
