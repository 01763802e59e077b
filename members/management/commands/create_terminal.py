from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from members.models import Terminal
from members.services import store_get_or_create, terminal_create


class Command(BaseCommand):
    help = "Create a terminal of a store (creating the store if needed) and print its API key on the last line."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--store", required=True, help="Store code")
        parser.add_argument("--name", required=True, help="Terminal name, unique within the store")
        parser.add_argument("--store-name", default="", help="Name of the store if it is created")

    def handle(self, *args: object, **options: str) -> None:
        if Terminal.objects.filter(store__code=options["store"], name=options["name"]).exists():
            raise CommandError(f"Store {options['store']} already has a terminal named {options['name']}.")
        with transaction.atomic(durable=True):
            store, created = store_get_or_create(code=options["store"], name=options["store_name"])
            terminal, key = terminal_create(store=store, name=options["name"])
        if created:
            self.stdout.write(f"Created store {store.code}.")
        self.stdout.write(f"Created terminal {terminal} (id {terminal.pk}). The key is shown only once:")
        self.stdout.write(key)
