"""Row locks of coupons. Lock order: member → points account → coupons (by pk)."""

from django.db.models import QuerySet

from campaigns.models import Coupon


def coupon_qs_for_update() -> QuerySet[Coupon]:
    return Coupon.objects.order_by("pk").select_for_update(of=("self",), no_key=True)
