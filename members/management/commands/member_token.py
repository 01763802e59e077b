from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from members.models import Member
from members.services import member_token_issue


class Command(BaseCommand):
    help = "Issue a member API token (for support and tests) and print it on the last line."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("member_no")

    def handle(self, *args: object, **options: str) -> None:
        member = Member.objects.filter(member_no=options["member_no"]).first()
        if member is None:
            raise CommandError(f"No member with number {options['member_no']}.")
        with transaction.atomic(durable=True):
            token, raw = member_token_issue(member=member)
        self.stdout.write(f"Token for member {member.member_no}, valid until {token.expires_at:%Y-%m-%d %H:%M %Z}:")
        self.stdout.write(raw)
