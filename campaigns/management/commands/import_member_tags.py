from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils.translation import gettext as _

from campaigns.services.segments import TagImportReport, member_tags_import_csv
from loyalty.errors import LoyaltyError


class Command(BaseCommand):
    help = (
        "Tag members from a CSV file of member_no,tag rows (optional header row; UTF-8 or GBK). Idempotent: tags a "
        "member already has are counted, not added again, so a file can be imported twice. Unknown tags are "
        "created unless --no-create-tags. Rejected rows are listed with their line; exits with status 1 if any "
        "row was rejected, after applying the good rows."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", type=Path, help="CSV file of member_no,tag rows")
        parser.add_argument("--user", help="Username of the operator (audit trail)")
        parser.add_argument(
            "--no-create-tags", action="store_true", help="Reject rows whose tag does not exist instead of creating it"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        user = None
        if options["user"]:
            user = get_user_model().objects.filter(username=options["user"], is_active=True).first()
            if user is None:
                raise CommandError(_("No active user “%(user)s”.") % {"user": options["user"]})
        path: Path = options["file"]
        try:
            with path.open("rb") as file:
                report = member_tags_import_csv(file=file, by_user=user, create_tags=not options["no_create_tags"])
        except OSError as error:
            raise CommandError(str(error)) from error
        except LoyaltyError as error:
            raise CommandError(
                _("%(code)s: %(message)s") % {"code": error.code, "message": error.render_message()}
            ) from error
        self._print(report)
        if not report.ok:
            raise CommandError(
                _("%(rejected)d rows were not imported; see above.") % {"rejected": report.rejected}, returncode=1
            )

    def _print(self, report: TagImportReport) -> None:
        for row in report.rejected_rows:
            self.stdout.write(
                _("line %(line)d: %(problem)s: %(message)s (member “%(member_no)s”, tag “%(tag)s”)")
                % {
                    "line": row.line,
                    "problem": row.problem,
                    "message": row.message,
                    "member_no": row.member_no,
                    "tag": row.tag,
                }
            )
        if report.created_tags:
            self.stdout.write(_("New tags: %(tags)s") % {"tags": ", ".join(report.created_tags)})
        summary = _(
            "Tags: added %(tagged)d, already there %(already)d, rejected %(rejected)d (%(total)d rows, %(encoding)s)."
        ) % {
            "tagged": report.tagged,
            "already": report.already,
            "rejected": report.rejected,
            "total": report.total,
            "encoding": report.encoding,
        }
        self.stdout.write(self.style.SUCCESS(summary) if report.ok else self.style.WARNING(summary))
