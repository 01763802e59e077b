"""Operator API of the reports app: the monthly KPIs as JSON.

Who asks (session, user, permissions, staff profile) is checked on the
primary; the figures and their ``as_of`` are read from
``loyalty.dbrouters.reporting_alias()`` (the reporting replica when one is
configured), both from the same database so that they agree."""

from __future__ import annotations

from datetime import date
from typing import Any

from django.http import HttpRequest
from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from loyalty.api.schema import errors
from loyalty.dbrouters import reporting_alias
from loyalty.errors import Forbidden
from members.models import Store, Tier
from reports import selectors


class ReportsPermission(BasePermission):
    """Staff who may read reports (every reporting role; see ``loyalty.roles``)."""

    def has_permission(self, request: Request, view: APIView) -> bool:
        user = request.user
        return bool(
            user is not None
            and getattr(user, "is_staff", False)
            and user.is_active
            and user.has_perm(selectors.REPORTS_PERMISSION)
        )


def _store_scope(request: HttpRequest) -> Any:
    # The admin's access rule: a member of a store-bound role sees only their store.
    from members.admin import store_scope

    return store_scope(request)


class ReportMonthlyApi(APIView):
    """Every KPI of a calendar month (Asia/Shanghai), for the chain or one store
    and/or tier. Store managers see only their own store: without ``store`` the
    figures are their store's; another store is refused (403)."""

    permission_classes = [ReportsPermission]

    class FilterSerializer(serializers.Serializer):
        month = serializers.RegexField(
            r"^\d{4}-(0[1-9]|1[0-2])$", help_text="YYYY-MM", error_messages={"invalid": _("Use the form YYYY-MM.")}
        )
        store = serializers.SlugRelatedField(
            slug_field="code", queryset=Store.objects.all(), required=False, help_text="Store code."
        )
        tier = serializers.SlugRelatedField(
            slug_field="code", queryset=Tier.objects.all(), required=False, help_text="Tier code."
        )

        def validate_month(self, value: str) -> date:
            year, month = value.split("-")
            if int(year) < 2000:
                raise serializers.ValidationError(_("Use the form YYYY-MM."))
            first = date(int(year), int(month), 1)
            # As the report page: no month after this one (9999-12 would also
            # overflow the month arithmetic).
            if first > timezone.localdate().replace(day=1):
                raise serializers.ValidationError(_("Choose a month between 2000-01 and this month."))
            return first

    class OutputSerializer(serializers.Serializer):
        month = serializers.CharField(help_text="YYYY-MM")
        store = serializers.CharField(allow_null=True, help_text="Store code, or null for the whole chain.")
        tier = serializers.CharField(allow_null=True, help_text="Tier code, or null for every tier.")
        as_of = serializers.DateTimeField(help_text="When month-end figures are taken (end of the last built day).")
        new_members = serializers.IntegerField()
        members_at_month_end = serializers.IntegerField()
        active_members = serializers.IntegerField()
        repeat_rate = serializers.DecimalField(max_digits=6, decimal_places=4)
        member_sales = serializers.DecimalField(max_digits=16, decimal_places=2)
        purchases = serializers.IntegerField()
        average_order_value = serializers.DecimalField(max_digits=16, decimal_places=2)
        points_issued = serializers.IntegerField()
        points_redeemed = serializers.IntegerField()
        points_expired = serializers.IntegerField()
        points_reversed = serializers.IntegerField()
        points_outstanding = serializers.IntegerField()
        points_liability_cny = serializers.DecimalField(max_digits=16, decimal_places=2)
        points_expiring_next_month = serializers.IntegerField()
        coupons_issued = serializers.IntegerField()
        coupons_written_off = serializers.IntegerField()
        coupons_expired = serializers.IntegerField()
        coupon_write_off_rate = serializers.DecimalField(max_digits=8, decimal_places=4)
        tier_distribution = serializers.DictField(child=serializers.IntegerField(), help_text="Tier code → members.")
        upgrades = serializers.IntegerField()
        downgrades = serializers.IntegerField()
        sleeping_members = serializers.IntegerField()
        churned_members = serializers.IntegerField()

    @extend_schema(
        operation_id="reports_monthly",
        tags=["operator"],
        parameters=[FilterSerializer],
        responses={200: OutputSerializer, **errors(400, 401, 403)},
    )
    def get(self, request: Request) -> Response:
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        month: date = filters.validated_data["month"]
        store: Store | None = filters.validated_data.get("store")
        tier: Tier | None = filters.validated_data.get("tier")
        scope = _store_scope(request._request)
        if scope is not None:
            if scope.store_id is None or (store is not None and store.pk != scope.store_id):
                raise Forbidden()
            store = Store.objects.get(pk=scope.store_id)
        using = reporting_alias()
        kpis = selectors.kpis_monthly(month=month, store=store, tier=tier, using=using)
        data = {
            "month": f"{month:%Y-%m}",
            "store": store.code if store else None,
            "tier": tier.code if tier else None,
            "as_of": selectors.report_as_of(month=month, using=using),
            **kpis,
        }
        return Response(self.OutputSerializer(data).data)
