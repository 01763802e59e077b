"""Admin of campaigns: edit, switch on/off, dry-run forecast and results."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from campaigns.models import Campaign, CampaignGrant
from campaigns.services.campaigns import campaign_dry_run, campaign_results, campaign_run


@admin.register(Campaign)
class CampaignAdmin(admin.ModelAdmin):
    list_display = ["name", "kind", "status", "starts_at", "ends_at", "multiplier", "budget_used"]
    list_filter = ["kind", "status"]
    search_fields = ["name"]
    filter_horizontal = ["stores", "tiers"]
    readonly_fields = ["spent_points", "spent_coupons"]
    actions = ["activate", "pause", "run_now"]
    fieldsets = [
        (None, {"fields": ["name", "kind", "status", "starts_at", "ends_at", "segment", "stores", "tiers"]}),
        (_("Multiplier"), {"fields": ["multiplier", "weekdays", "month_day", "stackable"]}),
        (
            _("Bonus and referral"),
            {"fields": ["condition", "streak_days", "points", "threshold_count", "threshold_points"]},
        ),
        (_("Coupons and waves"), {"fields": ["benefit", "waves"]}),
        (
            _("Limits and budget"),
            {"fields": ["per_member_limit", "budget_points", "budget_coupons", "spent_points", "spent_coupons"]},
        ),
    ]

    @admin.display(description=_("budget used"))
    def budget_used(self, obj: Campaign) -> str:
        """Budget counters exist only for budgeted campaigns; results are on the forecast page."""
        parts = []
        if obj.budget_points is not None:
            parts.append(
                gettext("%(spent)s / %(budget)s points") % {"spent": obj.spent_points, "budget": obj.budget_points}
            )
        if obj.budget_coupons is not None:
            parts.append(
                gettext("%(spent)s / %(budget)s coupons") % {"spent": obj.spent_coupons, "budget": obj.budget_coupons}
            )
        return "; ".join(parts) or "—"

    def get_urls(self) -> list[Any]:
        urls = super().get_urls()
        extra = [
            path(
                "<int:pk>/forecast/",
                self.admin_site.admin_view(self.forecast_view),
                name="campaigns_campaign_forecast",
            )
        ]
        return extra + urls

    def forecast_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        """Dry run over the last N weeks of purchases, and the results so far."""
        if not self.has_view_permission(request):
            from django.core.exceptions import PermissionDenied

            raise PermissionDenied
        campaign = get_object_or_404(Campaign, pk=pk)
        try:
            weeks = max(1, min(int(request.GET.get("weeks", "4")), 52))
        except ValueError:
            weeks = 4
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "campaign": campaign,
            "weeks": weeks,
            "forecast": campaign_dry_run(campaign=campaign, weeks=weeks),
            "results": campaign_results(campaign=campaign),
            "title": gettext("Forecast and results: %(name)s") % {"name": campaign.name},
        }
        return TemplateResponse(request, "admin/campaigns/campaign/forecast.html", context)

    @admin.action(description=_("Switch on"), permissions=["change"])
    def activate(self, request: HttpRequest, queryset: Any) -> None:
        count = queryset.update(status=Campaign.Status.ACTIVE)
        messages.success(request, gettext("%(count)s campaigns switched on.") % {"count": count})

    @admin.action(description=_("Pause"), permissions=["change"])
    def pause(self, request: HttpRequest, queryset: Any) -> None:
        count = queryset.update(status=Campaign.Status.PAUSED)
        messages.success(request, gettext("%(count)s campaigns paused.") % {"count": count})

    @admin.action(description=_("Run scheduled grants now"), permissions=["change"])
    def run_now(self, request: HttpRequest, queryset: Any) -> None:
        made = sum(campaign_run(campaign=campaign) for campaign in queryset)
        messages.success(request, gettext("%(count)s grants made (nothing is given twice).") % {"count": made})


@admin.register(CampaignGrant)
class CampaignGrantAdmin(admin.ModelAdmin):
    list_display = ["campaign", "member", "reference", "points", "coupon", "created_at"]
    list_filter = ["campaign"]
    search_fields = ["member__member_no", "reference"]
    list_select_related = ["campaign", "member", "coupon"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
