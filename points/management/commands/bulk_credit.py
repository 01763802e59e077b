from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils.translation import gettext as _

from loyalty.errors import LoyaltyError
from points.imports import ImportReport, bulk_credit_csv


class Command(BaseCommand):
    help = (
        "Credit points to members from a CSV file of rows member_no,points (member number or phone; header "
        "optional; UTF-8 or GBK), with one reason for the whole file. A file is applied once: running it again "
        "applies nothing twice. Credits above LOYALTY_ADJUST_APPROVAL_THRESHOLD wait for a second operator's "
        "approval in the admin. Exits with status 1 if any row was rejected, after applying the good rows."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", type=Path, help="CSV file of member_no,points rows")
        parser.add_argument("--reason", required=True, help="Reason recorded on every credit of the file")
        parser.add_argument(
            "--user", required=True, help="Username of the operator requesting the credits (audit trail)"
        )
        parser.add_argument("--dry-run", action="store_true", help="Check and report every row, write nothing")

    def handle(self, *args: Any, **options: Any) -> None:
        user = get_user_model().objects.filter(username=options["user"], is_active=True).first()
        if user is None:
            raise CommandError(_("No active user “%(user)s”.") % {"user": options["user"]})
        self.username = user.get_username()
        path: Path = options["file"]
        progress = self._progress if options["verbosity"] >= 2 else None
        try:
            with path.open("rb") as file:
                report = bulk_credit_csv(
                    file=file, reason=options["reason"], by_user=user, dry_run=options["dry_run"], on_batch=progress
                )
        except OSError as error:
            raise CommandError(str(error)) from error
        except LoyaltyError as error:
            raise CommandError(error.render_message()) from error
        self._print(report)
        if not report.ok:
            raise CommandError(
                _("%(rejected)d rows were rejected; see above.") % {"rejected": report.rejected}
                if report.error is None
                else _("The file could not be read completely; see above."),
                returncode=1,
            )

    def _progress(self, report: ImportReport) -> None:
        self.stderr.write(_("… %(total)d rows") % {"total": report.total})

    def _print(self, report: ImportReport) -> None:
        for row in report.rejected_rows:
            self.stdout.write(
                _("line %(line)d: %(code)s: %(message)s (member “%(member)s”)")
                % {"line": row.line, "code": row.code, "message": row.message, "member": row.key}
            )
        for row in report.already_rows:
            self.stdout.write(
                _("line %(line)d: already applied by an earlier run of this file (member %(member)s, %(status)s)")
                % {"line": row.line, "member": row.member_no, "status": row.note}
            )
        if report.error is not None:
            self.stdout.write(
                self.style.ERROR(
                    _("%(code)s: %(message)s") % {"code": report.error.code, "message": report.error.message}
                )
            )
        if report.ignored_columns:
            self.stdout.write(_("Ignored columns: %(columns)s") % {"columns": ", ".join(report.ignored_columns)})
        summary = _(
            "Batch %(batch)s: applied %(applied)d (%(points)d points), waiting for approval %(pending)d "
            "(%(pending_points)d points), already applied %(already)d, rejected %(rejected)d "
            "(%(total)d rows, %(encoding)s, %(seconds).1f s)."
        ) % {
            "batch": report.batch,
            "applied": report.applied,
            "points": report.points_applied,
            "pending": report.pending,
            "pending_points": report.points_pending,
            "already": report.already_applied,
            "rejected": report.rejected,
            "total": report.total,
            "encoding": report.encoding,
            "seconds": report.seconds,
        }
        if report.dry_run:
            summary = _("Dry run, nothing was written. %(summary)s") % {"summary": summary}
        self.stdout.write(self.style.SUCCESS(summary) if report.ok else self.style.WARNING(summary))
        if report.pending and not report.dry_run:
            self.stdout.write(
                _(
                    "%(pending)d credits wait for a second operator's approval: Admin → Points → "
                    "Points adjustments (another user than %(user)s must approve them)."
                )
                % {"pending": report.pending, "user": self.username}
            )
