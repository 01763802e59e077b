"""Row locks of coupons. Lock order: member → points account → coupons (by pk)."""

from django.db.models import QuerySet

from campaigns.models import Coupon, CouponIssueRequest


def coupon_qs_for_update() -> QuerySet[Coupon]:
    return Coupon.objects.order_by("pk").select_for_update(of=("self",), no_key=True)


def issue_request_qs_for_update(*, skip_locked: bool = False) -> QuerySet[CouponIssueRequest]:
    # of=("self",): joined benefit and member rows must stay unlocked, or a
    # worker would skip every request of a benefit another worker is issuing,
    # and hold the member row while waiting for the points account (the
    # reverse of the till's lock order).
    return CouponIssueRequest.objects.order_by("pk").select_for_update(
        of=("self",), no_key=True, skip_locked=skip_locked
    )
