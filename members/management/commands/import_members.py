import csv
from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils.translation import gettext as _

from members.imports import ImportReport, member_import_csv, rejected_rows_csv
from members.models import Store


class Command(BaseCommand):
    help = (
        "Import members from a CSV file (columns: phone, name, gender, birthday, store, marketing_consent, "
        "member_no, registered_at; UTF-8 or GBK). Prints a summary and every rejected row, and exits with "
        "status 1 if any row was rejected; the good rows are imported all the same."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", type=Path, help="CSV file to import")
        parser.add_argument("--store", default="", help="Store code for rows without one")
        parser.add_argument("--dry-run", action="store_true", help="Check and report every row, write nothing")
        parser.add_argument("--user", default="", help="Username recorded as the operator in the audit trail")
        parser.add_argument(
            "--rejected-csv", type=Path, default=None, help="Write the rejected rows here (UTF-8 with BOM) to fix them"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        path: Path = options["file"]
        store = None
        if options["store"]:
            store = Store.objects.filter(code=options["store"]).first()
            if store is None:
                raise CommandError(_("No store with code “%(store)s”.") % {"store": options["store"]})
        user = None
        if options["user"]:
            user = get_user_model().objects.filter(username=options["user"]).first()
            if user is None:
                raise CommandError(_("No user “%(user)s”.") % {"user": options["user"]})
        progress = self._progress if options["verbosity"] >= 2 else None
        try:
            with path.open("rb") as file:
                report = member_import_csv(
                    file=file, default_store=store, by_user=user, dry_run=options["dry_run"], on_batch=progress
                )
        except OSError as error:
            raise CommandError(str(error)) from error
        self._print(report)
        if options["rejected_csv"] and report.rejected:
            with options["rejected_csv"].open("w", encoding="utf-8-sig", newline="") as out:
                csv.writer(out).writerows(rejected_rows_csv(report))
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
                _("line %(line)d: %(code)s: %(message)s (phone “%(phone)s”)")
                % {"line": row.line, "code": row.code, "message": row.message, "phone": row.phone}
            )
        if report.error is not None:
            self.stdout.write(self.style.ERROR(f"{report.error.code}: {report.error.message}"))
        if report.ignored_columns:
            self.stdout.write(_("Ignored columns: %(columns)s") % {"columns": ", ".join(report.ignored_columns)})
        summary = _(
            "Imported %(imported)d, existing %(existing)d, rejected %(rejected)d "
            "(%(total)d rows, %(encoding)s, %(seconds).1f s, %(rate).0f rows/s)."
        ) % {
            "imported": report.imported,
            "existing": report.existing,
            "rejected": report.rejected,
            "total": report.total,
            "encoding": report.encoding,
            "seconds": report.seconds,
            "rate": report.rows_per_second,
        }
        if report.dry_run:
            summary = _("Dry run, nothing was written. %(summary)s") % {"summary": summary}
        self.stdout.write(self.style.SUCCESS(summary) if report.ok else self.style.WARNING(summary))
