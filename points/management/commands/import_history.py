from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils.translation import gettext as _

from points.batch import tiers_evaluate
from points.imports import ImportReport, Kind, history_balances_csv, history_purchases_csv


class Command(BaseCommand):
    help = (
        "Import a chain's history from its previous system (UTF-8 or GBK CSV, header optional). "
        "--kind balances (default): rows phone_or_member_no,points,expires_on credit each member's opening "
        "balance once. --kind purchases: rows store,receipt_no,member,amount,paid_at are recorded as past "
        "purchases that earn no points, for tier qualification and reports; run evaluate_tiers afterwards "
        "(or pass --evaluate-tiers). Import members first (import_members). Safe to run again: nothing is "
        "imported twice. Exits with status 1 if any row was rejected, after importing the good rows."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", type=Path, help="CSV file to import")
        parser.add_argument("--kind", choices=[Kind.BALANCES, Kind.PURCHASES], default=Kind.BALANCES)
        parser.add_argument("--user", default="", help="Username recorded as the operator of opening balances")
        parser.add_argument("--dry-run", action="store_true", help="Check and report every row, write nothing")
        parser.add_argument(
            "--evaluate-tiers",
            action="store_true",
            help="After importing purchases, re-evaluate every member's tier (as evaluate_tiers does)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        user = None
        if options["user"]:
            user = get_user_model().objects.filter(username=options["user"]).first()
            if user is None:
                raise CommandError(_("No user “%(user)s”.") % {"user": options["user"]})
        kind = options["kind"]
        progress = self._progress if options["verbosity"] >= 2 else None
        try:
            with options["file"].open("rb") as file:
                if kind == Kind.PURCHASES:
                    report = history_purchases_csv(file=file, dry_run=options["dry_run"], on_batch=progress)
                else:
                    report = history_balances_csv(
                        file=file, by_user=user, dry_run=options["dry_run"], on_batch=progress
                    )
        except OSError as error:
            raise CommandError(str(error)) from error
        self._print(report)
        if kind == Kind.PURCHASES and not report.dry_run and report.applied:
            if options["evaluate_tiers"]:
                result = tiers_evaluate()
                self.stdout.write(
                    _("Tiers re-evaluated: %(upgraded)d upgraded, %(downgraded)d downgraded.")
                    % {"upgraded": result.upgraded, "downgraded": result.downgraded}
                )
            else:
                self.stdout.write(
                    self.style.WARNING(
                        _(
                            "Tiers are not updated yet: run “python manage.py evaluate_tiers” now so that the "
                            "imported purchases count towards each member's tier."
                        )
                    )
                )
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
                _("line %(line)d: %(code)s: %(message)s (“%(key)s”)")
                % {"line": row.line, "code": row.code, "message": row.message, "key": row.key}
            )
        if report.error is not None:
            self.stdout.write(
                self.style.ERROR(
                    _("%(code)s: %(message)s") % {"code": report.error.code, "message": report.error.message}
                )
            )
        if report.ignored_columns:
            self.stdout.write(_("Ignored columns: %(columns)s") % {"columns": ", ".join(report.ignored_columns)})
        values = {
            "applied": report.applied,
            "points": report.points_applied,
            "already": report.already_applied,
            "skipped": report.skipped,
            "rejected": report.rejected,
            "total": report.total,
            "encoding": report.encoding,
            "seconds": report.seconds,
        }
        if report.kind == Kind.PURCHASES:
            summary = (
                _(
                    "Purchases imported %(applied)d, already recorded %(already)d, rejected %(rejected)d "
                    "(%(total)d rows, %(encoding)s, %(seconds).1f s)."
                )
                % values
            )
        else:
            summary = (
                _(
                    "Opening balances credited %(applied)d (%(points)d points), already imported %(already)d, "
                    "zero skipped %(skipped)d, rejected %(rejected)d (%(total)d rows, %(encoding)s, %(seconds).1f s)."
                )
                % values
            )
        if report.dry_run:
            summary = _("Dry run, nothing was written. %(summary)s") % {"summary": summary}
        self.stdout.write(self.style.SUCCESS(summary) if report.ok else self.style.WARNING(summary))
