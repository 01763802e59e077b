from django.core.management.base import BaseCommand

from points.batch import points_release_pending


class Command(BaseCommand):
    help = "Make pending points spendable once their pending period is over."

    def handle(self, *args: object, **options: object) -> None:
        released = points_release_pending()
        self.stdout.write(f"Released {released} pending lots.")
