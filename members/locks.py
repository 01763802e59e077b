"""Row-lock helpers. Lock order across the project: member → points balance →
lots (expires_at, pk) → coupons. Callers evaluate the queryset at once."""

from django.db.models import QuerySet

from members.models import Member


def member_qs_for_update() -> QuerySet[Member]:
    return Member.objects.order_by("pk").select_for_update(of=("self",), no_key=True)
