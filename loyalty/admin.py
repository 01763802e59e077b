"""Admin of system rows: heartbeats are written by the beat task only, so
the admin shows them and nothing more."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from loyalty.forms import ThrottledAdminAuthenticationForm
from loyalty.models import Heartbeat

# Failed sign-ins are counted and throttled (loyalty.throttle).
admin.site.login_form = ThrottledAdminAuthenticationForm


@admin.register(Heartbeat)
class HeartbeatAdmin(admin.ModelAdmin):
    list_display = ["name", "at", "detail"]
    fields = ["name", "at", "detail"]
    readonly_fields = fields
    ordering = ["name"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
