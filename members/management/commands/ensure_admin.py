import os

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser


class Command(BaseCommand):
    help = (
        "Make sure a superuser exists (username and password from ADMIN_USERNAME / ADMIN_PASSWORD, "
        "default admin / admin) and print how to log in. Leaves an existing user's password alone."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--url", default="http://127.0.0.1:8000/admin/")

    def handle(self, *args: object, **options: str) -> None:
        username = os.environ.get("ADMIN_USERNAME", "admin")
        password = os.environ.get("ADMIN_PASSWORD", "admin")
        user_model = get_user_model()
        user = user_model.objects.filter(username=username).first()
        if user is None:
            user_model.objects.create_superuser(username=username, email="", password=password)
            self.stdout.write(f"Created superuser {username}.")
            shown = password
        else:
            shown = "(unchanged)"
        self.stdout.write(self.style.SUCCESS(f"Admin: {options['url']}  user: {username}  password: {shown}"))
