from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction
from django.utils.translation import gettext as _

from campaigns.models import Benefit
from campaigns.services.batches import CouponImportReport, coupon_batch_import
from loyalty.errors import LoyaltyError


class Command(BaseCommand):
    help = (
        "Import a third party's coupon codes of a benefit from a CSV file (column code, optional valid_until as "
        "YYYY-MM-DD or YYYY-MM-DD HH:MM local time; header row; UTF-8 or GBK) as bearer coupons, each taking one "
        "unit of stock. A file is imported once: running it again imports nothing. Codes that already exist and "
        "invalid rows are listed with their line. Exits with status 1 if any row was not imported or on error, "
        "after importing the good rows."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", type=Path, help="CSV file of codes")
        parser.add_argument("--benefit", type=int, required=True, help="Benefit id")
        parser.add_argument("--user", help="Username of the operator (audit trail)")

    def handle(self, *args: Any, **options: Any) -> None:
        benefit = Benefit.objects.filter(pk=options["benefit"]).first()
        if benefit is None:
            raise CommandError(_("No benefit with id %(id)s.") % {"id": options["benefit"]})
        user = None
        if options["user"]:
            user = get_user_model().objects.filter(username=options["user"], is_active=True).first()
            if user is None:
                raise CommandError(_("No active user “%(user)s”.") % {"user": options["user"]})
        path: Path = options["file"]
        try:
            with path.open("rb") as file, transaction.atomic(durable=True):
                report = coupon_batch_import(benefit=benefit, file=file, by_user=user)
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

    def _print(self, report: CouponImportReport) -> None:
        if report.already_imported and report.batch is not None:
            self.stdout.write(
                self.style.WARNING(
                    _("This file was already imported as batch %(reference)s (%(quantity)d codes): nothing imported.")
                    % {"reference": report.batch.reference, "quantity": report.batch.quantity}
                )
            )
            return
        for row in report.rejected_rows:
            self.stdout.write(
                _("line %(line)d: %(problem)s: %(message)s (code “%(code)s”)")
                % {"line": row.line, "problem": row.problem, "message": row.message, "code": row.given}
            )
        if report.ignored_columns:
            self.stdout.write(_("Ignored columns: %(columns)s") % {"columns": ", ".join(report.ignored_columns)})
        summary = _(
            "Batch %(reference)s: imported %(imported)d, duplicates %(duplicates)d, invalid %(invalid)d "
            "(%(total)d rows, %(encoding)s)."
        ) % {
            "reference": report.reference,
            "imported": report.imported,
            "duplicates": len(report.duplicates),
            "invalid": len(report.invalid),
            "total": report.total,
            "encoding": report.encoding,
        }
        self.stdout.write(self.style.SUCCESS(summary) if report.ok else self.style.WARNING(summary))
