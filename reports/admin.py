"""Admin of the reports app: the monthly snapshots, read-only (they are built
by beat and by ``manage.py build_monthly_report``)."""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin
from django.core.serializers.json import DjangoJSONEncoder
from django.http import HttpRequest
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _

from reports.models import MonthlyKpiSnapshot


@admin.register(MonthlyKpiSnapshot)
class MonthlyKpiSnapshotAdmin(admin.ModelAdmin):
    list_display = ["month_label", "built_at"]
    ordering = ["-month"]
    date_hierarchy = "month"
    fields = ["month", "built_at", "data_pretty"]
    readonly_fields = fields

    @admin.display(description=_("month"), ordering="month")
    def month_label(self, obj: MonthlyKpiSnapshot) -> str:
        return f"{obj.month:%Y-%m}"

    @admin.display(description=_("data"))
    def data_pretty(self, obj: MonthlyKpiSnapshot) -> str:
        text = json.dumps(obj.data, cls=DjangoJSONEncoder, ensure_ascii=False, indent=2, sort_keys=False)
        return format_html("<pre>{}</pre>", text)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
