"""Admin of the member outbox and the outbound webhooks.

* ``OutboxMessage``: read-only for everyone (a message is history once
  queued), filterable by status, kind, channel and consent, with the text the
  member reads; "retry" sends failed messages back to the queue
  (``message_retry``) for users who may change outbox messages.
* ``WebhookEndpoint``: added and edited by Operators (and superusers) only —
  Marketing's blanket campaigns permission does not extend to where member
  data is sent. The signing secret is generated (or typed) on creation and on
  "rotate", shown once in a message, and masked everywhere else. Endpoints are
  disabled, not deleted, so their delivery log stays. "Send a test event"
  posts a ``ping``.
* ``WebhookDelivery``: the read-only delivery log (attempts, last HTTP status,
  last error, the exact payload); "retry" sends failed deliveries again with
  the same event id (``webhook_delivery_retry``).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db import models, transaction
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html
from django.utils.translation import gettext, ngettext
from django.utils.translation import gettext_lazy as _

from campaigns.models import OutboxMessage, WebhookDelivery, WebhookEndpoint
from campaigns.services.notifications import message_render, message_retry
from campaigns.services.webhooks import EVENTS, webhook_delivery_retry, webhook_ping, webhook_secret_new
from loyalty.roles import OPERATOR
from members.admin import LoyaltyModelAdmin, ReadOnlyAdminMixin

# Shortest secret an operator may type (a generated one is 43 characters + prefix).
MIN_SECRET_LENGTH = 24


def _short(text: str, length: int = 120) -> str:
    text = text or ""
    return text if len(text) <= length else text[: length - 1] + "…"


def _pretty_json(data: Any) -> str:
    return format_html(
        '<pre style="white-space: pre-wrap; margin: 0">{}</pre>', json.dumps(data, indent=2, ensure_ascii=False)
    )


def _retried(request: HttpRequest, model_admin: admin.ModelAdmin, done: int, skipped: int) -> None:
    if done:
        model_admin.message_user(
            request,
            ngettext("%(count)d item sent back to the queue.", "%(count)d items sent back to the queue.", done)
            % {"count": done},
            messages.SUCCESS,
        )
    if skipped:
        model_admin.message_user(
            request,
            ngettext(
                "%(count)d item was not failed and was left as it is: only failed items are retried.",
                "%(count)d items were not failed and were left as they are: only failed items are retried.",
                skipped,
            )
            % {"count": skipped},
            messages.WARNING,
        )


# -----------------------------------------------------------------------------
# Outbox
# -----------------------------------------------------------------------------
@admin.register(OutboxMessage)
class OutboxMessageAdmin(ReadOnlyAdminMixin, LoyaltyModelAdmin):
    store_scope_field = "member__registration_store"
    list_display = [
        "created_at",
        "member",
        "kind",
        "channel",
        "marketing",
        "status",
        "attempts",
        "next_attempt_at",
        "sent_at",
        "last_error_short",
    ]
    list_filter = ["status", "kind", "channel", "marketing", "created_at"]
    list_select_related = ["member"]
    search_fields = ["=member__member_no", "=dedupe_key"]
    search_help_text = _("Member number or de-duplication key (exact).")
    extra_lookup_fields = ("member",)
    date_hierarchy = "created_at"
    actions = ["retry_messages"]
    fields = [
        "member",
        "kind",
        "channel",
        "marketing",
        "status",
        "text",
        "attempts",
        "next_attempt_at",
        "last_error",
        "sent_at",
        "dedupe_key",
        "payload_pretty",
        "created_at",
    ]
    readonly_fields = fields

    def has_retry_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.has_perm("campaigns.change_outboxmessage")

    @admin.display(description=_("last error"))
    def last_error_short(self, obj: OutboxMessage) -> str:
        return _short(obj.last_error)

    @admin.display(description=_("text"))
    def text(self, obj: OutboxMessage) -> str:
        try:
            return message_render(obj)
        except (KeyError, TypeError, ValueError):
            return "-"

    @admin.display(description=_("payload"))
    def payload_pretty(self, obj: OutboxMessage) -> str:
        return _pretty_json(obj.payload)

    @admin.action(description=_("Retry selected failed messages"), permissions=["retry"])
    def retry_messages(self, request: HttpRequest, queryset: QuerySet[OutboxMessage]) -> None:
        done = skipped = 0
        for message in queryset.order_by("pk"):
            with transaction.atomic(durable=True):
                retried = message_retry(message=message)
            if retried:
                done += 1
                self.log_change(request, message, gettext("Sent back to the queue"))
            else:
                skipped += 1
        _retried(request, self, done, skipped)


# -----------------------------------------------------------------------------
# Webhook endpoints
# -----------------------------------------------------------------------------
def _event_label(event: str) -> str:
    labels = {
        "points_changed": _("Points changed"),
        "tier_changed": _("Tier changed"),
        "coupon_written_off": _("Coupon written off"),
        "member_enrolled": _("Member enrolled"),
    }
    return str(labels.get(event, event))


def mask_secret(secret: str) -> str:
    return "••••••••" + secret[-4:] if secret else ""


def _formfield(db_field: models.Field, **kwargs: Any) -> forms.Field | None:
    # A URL typed without a scheme is https (Django 6's default, without the warning).
    if isinstance(db_field, models.URLField):
        kwargs.setdefault("assume_scheme", "https")
    return db_field.formfield(**kwargs)


class WebhookEndpointForm(forms.ModelForm):
    events = forms.MultipleChoiceField(
        label=_("Events"),
        required=False,
        choices=[(event, _event_label(event)) for event in EVENTS],
        widget=forms.CheckboxSelectMultiple,
        help_text=_("None ticked: every event, including events added later."),
    )
    new_secret = forms.CharField(
        label=_("Signing secret"),
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text=_("Leave empty to have a strong secret generated. It is shown once, after saving."),
    )
    rotate_secret = forms.BooleanField(
        label=_("Replace the signing secret"),
        required=False,
        help_text=_("The new secret is shown once after saving; the endpoint must use it from then on."),
    )

    class Meta:
        model = WebhookEndpoint
        fields = ["name", "url", "events", "is_active"]
        formfield_callback = _formfield

    def clean_url(self) -> str:
        url = self.cleaned_data["url"]
        if not url.lower().startswith(("http://", "https://")):
            raise forms.ValidationError(_("Only http and https URLs are delivered to."), code="invalid_scheme")
        return url

    def clean_new_secret(self) -> str:
        secret = self.cleaned_data.get("new_secret") or ""
        if secret and len(secret) < MIN_SECRET_LENGTH:
            raise forms.ValidationError(
                _("Use at least %(length)d characters, or leave it empty to generate one."),
                code="secret_too_short",
                params={"length": MIN_SECRET_LENGTH},
            )
        return secret


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(LoyaltyModelAdmin):
    form = WebhookEndpointForm
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}
    list_display = ["name", "url", "events_display", "is_active", "secret_masked", "deliveries_link", "updated_at"]
    list_filter = ["is_active"]
    search_fields = ["name", "url"]
    actions = ["send_ping"]

    def _may_edit(self, request: HttpRequest) -> bool:
        user = request.user
        return user.is_superuser or (user.is_active and user.groups.filter(name=OPERATOR).exists())

    def has_add_permission(self, request: HttpRequest) -> bool:
        return self._may_edit(request) and super().has_add_permission(request)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self._may_edit(request) and super().has_change_permission(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # disable instead: the delivery log stays

    def has_ping_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self.has_change_permission(request)

    def get_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        if obj is None:
            return ["name", "url", "events", "is_active", "new_secret"]
        if not self.has_change_permission(request, obj):
            return ["name", "url", "events_display", "is_active", "secret_masked", "created_at", "updated_at"]
        return ["name", "url", "events", "is_active", "secret_masked", "rotate_secret", "new_secret"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        if obj is not None and not self.has_change_permission(request, obj):
            return self.get_fields(request, obj)
        return ["secret_masked"] if obj is not None else []

    def save_model(self, request: HttpRequest, obj: WebhookEndpoint, form: Any, change: bool) -> None:
        typed = form.cleaned_data.get("new_secret") or ""
        shown = ""
        if not change or form.cleaned_data.get("rotate_secret") or typed:
            obj.secret = typed or webhook_secret_new()
            shown = obj.secret
        super().save_model(request, obj, form, change)
        if shown:
            self.message_user(
                request,
                format_html(
                    "{} <code>{}</code>",
                    gettext("Signing secret of “%(name)s” — copy it now, it will not be shown again:")
                    % {"name": obj.name},
                    shown,
                ),
                messages.WARNING,
            )

    @admin.display(description=_("events"))
    def events_display(self, obj: WebhookEndpoint) -> str:
        if not obj.events:
            return gettext("All events")
        return ", ".join(_event_label(event) for event in obj.events)

    @admin.display(description=_("signing secret"))
    def secret_masked(self, obj: WebhookEndpoint) -> str:
        return mask_secret(obj.secret)

    @admin.display(description=_("deliveries"))
    def deliveries_link(self, obj: WebhookEndpoint) -> str:
        url = reverse("admin:campaigns_webhookdelivery_changelist") + f"?endpoint__id__exact={obj.pk}"
        return format_html('<a href="{}">{}</a>', url, gettext("Delivery log"))

    @admin.action(description=_("Send a test event (ping) to selected endpoints"), permissions=["ping"])
    def send_ping(self, request: HttpRequest, queryset: QuerySet[WebhookEndpoint]) -> None:
        count = 0
        for endpoint in queryset.order_by("pk"):
            with transaction.atomic(durable=True):
                webhook_ping(endpoint=endpoint)
            count += 1
        self.message_user(
            request,
            ngettext(
                "Test event queued for %(count)d endpoint; see its delivery log.",
                "Test event queued for %(count)d endpoints; see their delivery log.",
                count,
            )
            % {"count": count},
            messages.SUCCESS,
        )


# -----------------------------------------------------------------------------
# Webhook deliveries
# -----------------------------------------------------------------------------
@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(ReadOnlyAdminMixin, LoyaltyModelAdmin):
    list_display = [
        "created_at",
        "event",
        "event_id",
        "endpoint",
        "status",
        "attempts",
        "last_status_code",
        "next_attempt_at",
        "delivered_at",
        "last_error_short",
    ]
    list_filter = ["status", "event", "endpoint", "created_at"]
    list_select_related = ["endpoint"]
    search_fields = ["=event_id"]  # shows the search box; matching is in get_search_results
    search_help_text = _("Event id (exact).")
    date_hierarchy = "created_at"
    actions = ["retry_deliveries"]
    fields = [
        "endpoint",
        "event",
        "event_id",
        "status",
        "attempts",
        "last_status_code",
        "last_error",
        "next_attempt_at",
        "delivered_at",
        "created_at",
        "payload_pretty",
    ]
    readonly_fields = fields

    def has_retry_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.has_perm("campaigns.change_webhookdelivery")

    def get_search_results(self, request: HttpRequest, queryset: QuerySet[Any], search_term: str) -> Any:
        term = search_term.strip()
        if not term:
            return queryset, False
        try:
            event_id = uuid.UUID(term)
        except ValueError:
            return queryset.none(), False
        return queryset.filter(event_id=event_id), False

    @admin.display(description=_("last error"))
    def last_error_short(self, obj: WebhookDelivery) -> str:
        return _short(obj.last_error)

    @admin.display(description=_("payload"))
    def payload_pretty(self, obj: WebhookDelivery) -> str:
        return _pretty_json(obj.payload)

    @admin.action(description=_("Retry selected failed deliveries"), permissions=["retry"])
    def retry_deliveries(self, request: HttpRequest, queryset: QuerySet[WebhookDelivery]) -> None:
        done = skipped = 0
        for delivery in queryset.order_by("pk"):
            with transaction.atomic(durable=True):
                retried = webhook_delivery_retry(delivery=delivery)
            if retried:
                done += 1
                self.log_change(request, delivery, gettext("Sent back to the queue"))
            else:
                skipped += 1
        _retried(request, self, done, skipped)
