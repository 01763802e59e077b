from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction
from django.utils.translation import gettext as _

from campaigns.models import Benefit, CouponBatch
from campaigns.services.batches import coupon_batch_csv_write, coupon_batch_generate
from loyalty.errors import LoyaltyError


class Command(BaseCommand):
    help = (
        "Generate bearer coupons of a benefit for print, as one batch named by --reference. Each coupon takes one "
        "unit of the benefit's stock; if the stock is short, nothing is generated. Running it again with the same "
        "reference generates nothing and (with --csv) writes the batch's codes again. --csv writes "
        "code,benefit,valid_from,valid_until (UTF-8 with BOM, local times). Exits with status 1 on any error."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--benefit", type=int, required=True, help="Benefit id")
        parser.add_argument("--quantity", type=int, required=True, help="Number of coupons")
        parser.add_argument("--reference", required=True, help="Batch reference (unique name of the print run)")
        parser.add_argument("--csv", type=Path, help="Write the batch's codes to this CSV file")
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
        reference = options["reference"].strip()
        existed = CouponBatch.objects.filter(reference=reference).exists()
        try:
            with transaction.atomic(durable=True):
                batch = coupon_batch_generate(
                    benefit=benefit, quantity=options["quantity"], reference=reference, by_user=user
                )
        except LoyaltyError as error:
            raise CommandError(
                _("%(code)s: %(message)s") % {"code": error.code, "message": error.render_message()}
            ) from error
        if existed:
            self.stdout.write(
                self.style.WARNING(
                    _("Batch %(reference)s already existed (%(quantity)d coupons of “%(benefit)s”): nothing generated.")
                    % {"reference": batch.reference, "quantity": batch.quantity, "benefit": benefit.name}
                )
            )
        else:
            self.stdout.write(
                self.style.SUCCESS(
                    _("Batch %(reference)s: %(quantity)d coupons of “%(benefit)s” generated.")
                    % {"reference": batch.reference, "quantity": batch.quantity, "benefit": benefit.name}
                )
            )
        if options["csv"]:
            try:
                with options["csv"].open("w", encoding="utf-8-sig", newline="") as out:
                    count = coupon_batch_csv_write(batches=[batch], out=out)
            except OSError as error:
                raise CommandError(str(error)) from error
            self.stdout.write(_("%(count)d codes written to %(path)s.") % {"count": count, "path": options["csv"]})
