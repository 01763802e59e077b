"""Admin of the benefit catalogue and coupons: the operators' side.

* Benefits are catalogue data that Operators and Marketing edit here; the
  issued counter is bumped only by the coupon services (``F()`` under a CHECK
  constraint), so the admin never writes it back.
* Coupons are never added or edited through a form. They change through
  ``campaigns.services.coupons``: "void" (``coupon_void``) and "void and
  re-issue" (``coupon_reissue``, the new coupon ``replaces`` the old) ask for
  a reason on a confirmation page, as changelist actions and as buttons on the
  coupon's page; "grant coupon to member" (``admin/campaigns/coupon/grant/``)
  calls ``coupon_issue`` with source ``operator``. A refusal is shown as an
  error and writes nothing. A coupon's page shows its ``CouponEvent`` history.
* ``CouponEvent`` is read-only for everyone, superusers included (append-only).
* ``CouponIssueRequest``: the queue of asynchronous issues (pending and failed
  by default) with their last error; the "retry" action calls
  ``campaigns.services.issuing.coupon_issue_retry``.
* Batches (``campaigns.services.batches``): generate bearer coupons for print
  (``admin/campaigns/couponbatch/generate/``), import a third party's codes
  from CSV (``.../import/``) and download a batch's codes as CSV
  (``.../<id>/export/`` and the "download codes" action).

A "Store manager" (``StaffProfile.store``) sees only the coupons written off
at their store or held by members registered there; anything else is a 404,
as in the members admin whose access rules are reused here.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Iterator
from pathlib import PurePath
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import Q, QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.http import content_disposition_header
from django.utils.translation import gettext, ngettext, ngettext_lazy
from django.utils.translation import gettext_lazy as _

from campaigns.models import Benefit, Coupon, CouponBatch, CouponEvent, CouponIssueRequest
from campaigns.services.batches import (
    MAX_BATCH_QUANTITY,
    MAX_IMPORT_BYTES,
    MAX_REFERENCE_LENGTH,
    coupon_batch_csv_write,
    coupon_batch_generate,
    coupon_batch_import,
)
from campaigns.services.coupons import coupon_code_normalise, coupon_issue, coupon_reissue, coupon_void
from campaigns.services.issuing import coupon_issue_retry
from loyalty.errors import LoyaltyError
from members.admin import (
    LoyaltyModelAdmin,
    Operation,
    OperationsAdminMixin,
    ReadOnlyAdminMixin,
    ReadOnlyInline,
    ScopedStoreListFilter,
    store_scope,
)
from members.errors import InvalidPhone, MemberNotFound
from members.models import Member
from members.selectors import member_get_by_identifier
from members.services import phone_normalise

# Rejected import rows listed on the report page (all are counted).
IMPORT_ROWS_SHOWN = 1000
_FILENAME_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _admin_url(model: type[Any], view: str, *args: Any) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{view}", args=args)


def _local(value: Any) -> str:
    return timezone.localtime(value).strftime("%Y-%m-%d %H:%M") if value else ""


def _member_ids(term: str) -> list[int]:
    """Members whose number or (normalised) phone is ``term``: a few indexed lookups."""
    condition = Q(member_no=term)
    with contextlib.suppress(InvalidPhone):
        condition |= Q(phone=phone_normalise(term))
    return list(Member.objects.filter(condition).values_list("pk", flat=True)[:10])


def coupons_in_store_q(store_id: int, prefix: str = "") -> Q:
    """What a store manager sees of coupons (``prefix`` leads from another model to
    the coupon): written off at the store, or held by a member registered there."""
    return Q(**{f"{prefix}written_off_store_id": store_id}) | Q(**{f"{prefix}member__registration_store_id": store_id})


class CouponScopeMixin:
    """Limits store managers to ``coupons_in_store_q`` (two stores may be
    involved, so ``LoyaltyModelAdmin.store_scope_field`` does not fit);
    anything else is a 404, absent or not."""

    coupon_prefix = ""

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        queryset = super().get_queryset(request)  # type: ignore[misc]
        scope = store_scope(request)
        if scope is None:
            return queryset
        if scope.store_id is None:
            return queryset.none()
        return queryset.filter(coupons_in_store_q(scope.store_id, self.coupon_prefix))

    def get_object(self, request: HttpRequest, object_id: str, from_field: str | None = None) -> Any:
        obj = super().get_object(request, object_id, from_field)  # type: ignore[misc]
        if obj is None and store_scope(request) is not None:
            raise Http404(gettext("No such object in your store."))
        return obj


# -----------------------------------------------------------------------------
# Benefits
# -----------------------------------------------------------------------------
class BenefitForm(forms.ModelForm):
    class Meta:
        model = Benefit
        fields = [
            "name",
            "description",
            "kind",
            "value",
            "min_spend",
            "is_active",
            "points_price",
            "cash_price",
            "eligible_tiers",
            "granted_by_tiers",
            "stores",
            "total_stock",
            "per_member_limit",
            "validity",
            "valid_from",
            "valid_until",
            "valid_days",
            "active_from",
            "active_until",
        ]

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        issued = self.instance.issued_count if self.instance.pk else 0
        total = cleaned.get("total_stock")
        if total is not None and total < issued:
            self.add_error(
                "total_stock",
                forms.ValidationError(
                    _("%(issued)s coupons are already issued: the stock cannot be less."),
                    code="stock_below_issued",
                    params={"issued": issued},
                ),
            )
        if cleaned.get("validity") == Benefit.Validity.FIXED and not cleaned.get("valid_until"):
            self.add_error(
                "valid_until",
                forms.ValidationError(_("Fixed-date validity needs an end."), code="fixed_needs_end"),
            )
        for start, end in (("valid_from", "valid_until"), ("active_from", "active_until")):
            if cleaned.get(start) and cleaned.get(end) and cleaned[start] >= cleaned[end]:
                self.add_error(
                    end, forms.ValidationError(_("The end must be after the start."), code="end_before_start")
                )
        return cleaned


@admin.register(Benefit)
class BenefitAdmin(LoyaltyModelAdmin):
    form = BenefitForm
    list_display = [
        "name",
        "kind",
        "value",
        "points_price",
        "stock_left",
        "per_member_limit",
        "active_window",
        "is_active",
    ]
    list_filter = ["kind", "is_active", "validity", "eligible_tiers", "stores"]
    search_fields = ["name"]
    filter_horizontal = ["eligible_tiers", "granted_by_tiers", "stores"]
    readonly_fields = ["issued_count", "stock_left", "coupons_link", "created_at", "updated_at"]
    fieldsets = [
        (None, {"fields": ["name", "description", "kind", "value", "min_spend", "is_active"]}),
        (_("Price"), {"fields": ["points_price", "cash_price"]}),
        (_("Who may get it, and where it is used"), {"fields": ["eligible_tiers", "granted_by_tiers", "stores"]}),
        (_("Stock"), {"fields": ["total_stock", "issued_count", "stock_left", "per_member_limit"]}),
        (_("Validity of its coupons"), {"fields": ["validity", "valid_from", "valid_until", "valid_days"]}),
        (_("Exchangeable"), {"fields": ["active_from", "active_until"]}),
        (_("History"), {"fields": ["coupons_link", "created_at", "updated_at"]}),
    ]

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> Any:
        # The history (coupons, timestamps) exists once the benefit does.
        return self.fieldsets if obj is not None else self.fieldsets[:-1]

    def save_model(self, request: HttpRequest, obj: Benefit, form: Any, change: bool) -> None:
        if not change:
            obj.save()
            return
        # Only the form's fields: issued_count moves concurrently (F() on every
        # issue) and a full save would write back the value read with the form.
        names = [f.name for f in obj._meta.concrete_fields if f.name in form.cleaned_data and not f.primary_key]
        obj.save(update_fields=[*names, "updated_at"])

    @admin.display(description=_("stock left"))
    def stock_left(self, obj: Benefit) -> Any:
        if obj.total_stock is None:
            return gettext("unlimited")
        return max(obj.total_stock - obj.issued_count, 0)

    @admin.display(description=_("exchangeable"))
    def active_window(self, obj: Benefit) -> str:
        if obj.active_from and obj.active_until:
            return gettext("%(start)s – %(end)s") % {"start": _local(obj.active_from), "end": _local(obj.active_until)}
        if obj.active_from:
            return gettext("from %(start)s") % {"start": _local(obj.active_from)}
        if obj.active_until:
            return gettext("until %(end)s") % {"end": _local(obj.active_until)}
        return gettext("always")

    @admin.display(description=_("coupons"))
    def coupons_link(self, obj: Benefit) -> str:
        if obj.pk is None:
            return ""
        links = [
            (f"{_admin_url(Coupon, 'changelist')}?benefit__id__exact={obj.pk}", gettext("Coupons of this benefit"))
        ]
        if obj.is_active:
            links.append((f"{_admin_url(Coupon, 'grant')}?benefit={obj.pk}", gettext("Grant to a member")))
        return format_html_join(" · ", '<a href="{}">{}</a>', links)


# -----------------------------------------------------------------------------
# Coupons
# -----------------------------------------------------------------------------
class CouponReasonForm(forms.Form):
    reason = forms.CharField(
        label=_("Reason"),
        max_length=255,
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        error_messages={"required": _("A reason is required.")},
        help_text=_("Recorded in the coupon's history."),
    )

    def clean_reason(self) -> str:
        reason = self.cleaned_data["reason"].strip()
        if not reason:
            raise forms.ValidationError(_("A reason is required."), code="reason_required")
        return reason


def _coupon_void(request: HttpRequest, coupon: Coupon, data: dict[str, Any]) -> object:
    with transaction.atomic(durable=True):
        return coupon_void(coupon=coupon, by_user=request.user, reason=data["reason"])


def _coupon_reissue(request: HttpRequest, coupon: Coupon, data: dict[str, Any]) -> object:
    with transaction.atomic(durable=True):
        new = coupon_reissue(coupon=coupon, by_user=request.user, reason=data["reason"])
    messages.success(
        request,
        format_html(
            gettext("Coupon {old} was replaced by coupon {new}."),
            old=coupon.code,
            new=format_html('<a href="{}">{}</a>', _admin_url(Coupon, "change", new.pk), new.code),
        ),
    )
    return new


def _coupon_replaced(coupon: Coupon) -> bool:
    return Coupon.objects.filter(replaces=coupon).exists()


COUPON_OPERATIONS = {
    "void": Operation(
        name="void",
        label=_("Void"),
        title=_("Void coupons"),
        submit_label=_("Void"),
        done=ngettext_lazy("%(count)d coupon voided.", "%(count)d coupons voided.", "count"),
        run=_coupon_void,
        form_class=CouponReasonForm,
        warning=_("A void coupon can no longer be used. Its stock is not returned."),
        available=lambda coupon: coupon.status == Coupon.Status.ISSUED,
    ),
    "reissue": Operation(
        name="reissue",
        label=_("Void and re-issue"),
        title=_("Void and re-issue coupons"),
        submit_label=_("Void and re-issue"),
        done=ngettext_lazy("%(count)d coupon re-issued.", "%(count)d coupons re-issued.", "count"),
        run=_coupon_reissue,
        form_class=CouponReasonForm,
        warning=_(
            "Each coupon is voided (if still issued) and replaced by a new coupon with a new code, for the same "
            "benefit and member. Written-off coupons cannot be re-issued."
        ),
        available=lambda coupon: coupon.status != Coupon.Status.WRITTEN_OFF and not _coupon_replaced(coupon),
    ),
}


class CouponEventInline(ReadOnlyInline):
    model = CouponEvent
    fk_name = "coupon"
    fields = ["created_at", "kind", "store", "terminal", "receipt_no", "by_user", "reason"]
    readonly_fields = fields
    show_change_link = False
    # Not "history": the admin's own "History" button (its change log) is on the same page.
    verbose_name_plural = _("events of this coupon")

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # The history is part of the coupon: whoever may see the coupon sees it.
        return request.user.has_perm("campaigns.view_coupon") or request.user.has_perm("campaigns.view_couponevent")

    def get_queryset(self, request: HttpRequest) -> QuerySet[CouponEvent]:
        return super().get_queryset(request).select_related("store", "terminal__store", "by_user")


class CouponGrantForm(forms.Form):
    member = forms.CharField(label=_("Member"), max_length=32, help_text=_("Member number or mobile phone."))
    benefit = forms.ModelChoiceField(label=_("Benefit"), queryset=Benefit.objects.none())
    reason = forms.CharField(
        label=_("Reason"),
        max_length=255,
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        error_messages={"required": _("A reason is required.")},
        help_text=_("Recorded in the coupon's history."),
    )

    def __init__(self, *args: Any, request: HttpRequest, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.request = request
        self.fields["benefit"].queryset = Benefit.objects.filter(is_active=True).order_by("name", "pk")

    def clean_member(self) -> Member:
        try:
            member = member_get_by_identifier(identifier=self.cleaned_data["member"])
        except MemberNotFound as error:
            raise forms.ValidationError(error.render_message(), code=error.code) from None
        scope = store_scope(self.request)
        if scope is not None and member.registration_store_id != scope.store_id:
            raise forms.ValidationError(MemberNotFound().render_message(), code=MemberNotFound.code)
        return member

    def clean_reason(self) -> str:
        reason = self.cleaned_data["reason"].strip()
        if not reason:
            raise forms.ValidationError(_("A reason is required."), code="reason_required")
        return reason


@admin.register(Coupon)
class CouponAdmin(CouponScopeMixin, OperationsAdminMixin):
    operations = COUPON_OPERATIONS
    list_display = [
        "code",
        "benefit",
        "member",
        "status",
        "source",
        "valid_until",
        "issued_at",
        "written_off_store",
        "written_off_at",
    ]
    list_filter = ["status", "source", "benefit", ("written_off_store", ScopedStoreListFilter), "issued_at"]
    list_select_related = ["benefit", "member", "written_off_store"]
    search_fields = ["=code"]  # shows the search box; matching is in get_search_results
    search_help_text = _("Coupon code, member number or phone number (exact).")
    extra_lookup_fields = ("member", "batch", "replaces")
    actions = ["void_coupons", "reissue_coupons"]
    inlines = [CouponEventInline]
    fieldsets = [
        (None, {"fields": ["code", "benefit", "member", "status", "source", "reference", "batch"]}),
        (_("Validity"), {"fields": ["issued_at", "valid_from", "valid_until"]}),
        (
            _("Write-off"),
            {
                "fields": [
                    "written_off_at",
                    "written_off_store",
                    "written_off_terminal",
                    "written_off_receipt",
                    "purchase",
                ]
            },
        ),
        (_("Links"), {"fields": ["exchange_entry", "replaces", "replaced_by_link"]}),
    ]

    # -- permissions: coupons change only through the services
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_void_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.has_perm("campaigns.change_coupon")

    def has_grant_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("campaigns.add_coupon")

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [name for _title, options in self.fieldsets for name in options["fields"]]

    # -- pages
    def get_urls(self) -> list[URLPattern]:
        own = [path("grant/", self.admin_site.admin_view(self.grant_view), name="campaigns_coupon_grant")]
        # Before the default "<path:object_id>/" catch-all (and the operation pages).
        return own + super().get_urls()

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        extra_context = {**(extra_context or {}), "can_grant": self.has_grant_permission(request)}
        return super().changelist_view(request, extra_context)

    def get_search_results(self, request: HttpRequest, queryset: QuerySet[Coupon], search_term: str) -> Any:
        term = search_term.strip()
        if not term:
            return queryset, False
        condition = Q(code=coupon_code_normalise(term))
        member_ids = _member_ids(term)
        if member_ids:
            condition |= Q(member_id__in=member_ids)
        return queryset.filter(condition), False

    @admin.display(description=_("replaced by"))
    def replaced_by_link(self, obj: Coupon) -> str:
        new = Coupon.objects.filter(replaces=obj).only("pk", "code").first()
        if new is None:
            return ""
        return format_html('<a href="{}">{}</a>', _admin_url(Coupon, "change", new.pk), new.code)

    # -- operations: allowed by has_void_permission (the change permission is off)
    def operation_view(self, request: HttpRequest, object_id: str, operation: str) -> HttpResponse:
        if not self.has_void_permission(request):
            raise PermissionDenied
        obj = self.get_object(request, unquote(object_id))
        if obj is None:
            raise Http404
        response = self.run_operation(request, [obj], self.operations[operation], original=obj)
        if response is not None:
            return response
        return HttpResponseRedirect(self.admin_url("change", obj.pk))

    def extra_object_links(self, request: HttpRequest, obj: Coupon) -> Iterable[tuple[Any, str]]:
        if self.has_void_permission(request, obj):
            for name, operation in self.operations.items():
                if operation.available(obj):
                    yield operation.label, self.admin_url(name, obj.pk)
        if obj.member_id is not None:
            yield _("Coupons of this member"), f"{self.admin_url('changelist')}?member__id__exact={obj.member_id}"

    def operation_headers(self, request: HttpRequest) -> list[Any]:
        return [_("code"), _("benefit"), _("member"), _("status"), _("valid until")]

    def operation_row(self, request: HttpRequest, obj: Coupon) -> list[Any]:
        return [obj.code, obj.benefit, obj.member or "", obj.get_status_display(), _local(obj.valid_until)]

    @admin.action(description=_("Void selected coupons…"), permissions=["void"])
    def void_coupons(self, request: HttpRequest, queryset: QuerySet[Coupon]) -> Any:
        return self.run_action(request, queryset.select_related("benefit", "member"), "void", "void_coupons")

    @admin.action(description=_("Void and re-issue selected coupons…"), permissions=["void"])
    def reissue_coupons(self, request: HttpRequest, queryset: QuerySet[Coupon]) -> Any:
        return self.run_action(request, queryset.select_related("benefit", "member"), "reissue", "reissue_coupons")

    # -- grant
    def grant_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_grant_permission(request):
            raise PermissionDenied
        if request.method == "POST":
            form = CouponGrantForm(request.POST, request=request)
            if form.is_valid():
                data = form.cleaned_data
                try:
                    with transaction.atomic(durable=True):
                        coupon = coupon_issue(
                            benefit=data["benefit"],
                            member=data["member"],
                            source=Coupon.Source.OPERATOR,
                            by_user=request.user,
                            reason=data["reason"],
                        )
                except LoyaltyError as error:
                    form.add_error(None, forms.ValidationError(error.render_message(), code=error.code))
                else:
                    self.log_addition(request, coupon, gettext("Granted to a member"))
                    self.message_user(
                        request,
                        gettext("Coupon %(code)s of “%(benefit)s” granted to member %(member_no)s.")
                        % {"code": coupon.code, "benefit": coupon.benefit.name, "member_no": data["member"].member_no},
                        messages.SUCCESS,
                    )
                    return HttpResponseRedirect(self.admin_url("change", coupon.pk))
        else:
            form = CouponGrantForm(
                request=request,
                initial={"member": request.GET.get("member", ""), "benefit": request.GET.get("benefit") or None},
            )
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": gettext("Grant a coupon to a member"),
            "intro": gettext(
                "The coupon is issued at once, with the benefit's validity; it takes one unit of stock and counts "
                "towards the per-member limit."
            ),
            "form": form,
            "submit_label": gettext("Grant coupon"),
            "media": self.media + form.media,
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, "admin/campaigns/form_page.html", context)


# -----------------------------------------------------------------------------
# Coupon history: append-only
# -----------------------------------------------------------------------------
@admin.register(CouponEvent)
class CouponEventAdmin(CouponScopeMixin, ReadOnlyAdminMixin, LoyaltyModelAdmin):
    coupon_prefix = "coupon__"
    list_display = ["created_at", "coupon", "kind", "store", "terminal", "receipt_no", "by_user", "reason"]
    list_filter = ["kind", ("store", ScopedStoreListFilter), "created_at"]
    list_select_related = ["coupon", "store", "terminal__store", "by_user"]
    search_fields = ["=coupon__code"]
    search_help_text = _("Coupon code, member number or phone number (exact).")
    extra_lookup_fields = ("coupon", "by_user")
    fields = ["coupon", "kind", "store", "terminal", "receipt_no", "by_user", "reason", "created_at"]
    readonly_fields = fields

    def get_search_results(self, request: HttpRequest, queryset: QuerySet[CouponEvent], search_term: str) -> Any:
        term = search_term.strip()
        if not term:
            return queryset, False
        coupon_ids = Coupon.objects.filter(code=coupon_code_normalise(term)).values_list("pk", flat=True)
        condition = Q(coupon_id__in=list(coupon_ids))
        member_ids = _member_ids(term)
        if member_ids:
            condition |= Q(coupon__member_id__in=member_ids)
        return queryset.filter(condition), False


# -----------------------------------------------------------------------------
# Issue queue
# -----------------------------------------------------------------------------
class IssueRequestStatusFilter(admin.SimpleListFilter):
    """Pending and failed by default (what the list is for); "All" shows every status."""

    title = _("status")
    parameter_name = "status"
    OPEN = "open"
    ALL = "all"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        return list(CouponIssueRequest.Status.choices)

    def current(self) -> str:
        return self.value() or self.OPEN

    def choices(self, changelist: Any) -> Iterator[dict[str, Any]]:
        current = self.current()
        for value, label in ((self.OPEN, _("Pending or failed")), (self.ALL, _("All")), *self.lookup_choices):
            yield {
                "selected": current == str(value),
                "query_string": changelist.get_query_string({self.parameter_name: value}),
                "display": label,
            }

    def queryset(self, request: HttpRequest, queryset: QuerySet[CouponIssueRequest]) -> QuerySet[CouponIssueRequest]:
        current = self.current()
        if current == self.ALL:
            return queryset
        if current == self.OPEN:
            return queryset.filter(status__in=[CouponIssueRequest.Status.PENDING, CouponIssueRequest.Status.FAILED])
        return queryset.filter(status=current)


@admin.register(CouponIssueRequest)
class CouponIssueRequestAdmin(ReadOnlyAdminMixin, LoyaltyModelAdmin):
    store_scope_field = "member__registration_store"
    list_display = [
        "created_at",
        "member",
        "benefit",
        "source",
        "reference",
        "status",
        "attempts",
        "last_error_short",
        "next_attempt_at",
        "coupon",
    ]
    list_filter = [IssueRequestStatusFilter, "source", "benefit", "created_at"]
    list_select_related = ["member", "benefit", "coupon"]
    search_fields = ["=member__member_no"]
    search_help_text = _("Member number (exact).")
    extra_lookup_fields = ("member",)
    actions = ["retry_requests"]
    fields = [
        "benefit",
        "member",
        "source",
        "reference",
        "status",
        "attempts",
        "last_error",
        "next_attempt_at",
        "coupon",
        "created_at",
    ]
    readonly_fields = fields

    def has_retry_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.has_perm("campaigns.change_couponissuerequest")

    @admin.display(description=_("last error"))
    def last_error_short(self, obj: CouponIssueRequest) -> str:
        text = obj.last_error or ""
        return text if len(text) <= 120 else text[:119] + "…"

    @admin.action(description=_("Retry selected failed issues"), permissions=["retry"])
    def retry_requests(self, request: HttpRequest, queryset: QuerySet[CouponIssueRequest]) -> None:
        done = 0
        for issue in queryset.select_related("member", "benefit").order_by("pk"):
            if issue.status != CouponIssueRequest.Status.FAILED:
                self.message_user(
                    request,
                    gettext("Issue %(id)s (member %(member_no)s) is %(status)s: only failed issues are retried.")
                    % {"id": issue.pk, "member_no": issue.member.member_no, "status": issue.get_status_display()},
                    messages.WARNING,
                )
                continue
            with transaction.atomic(durable=True):
                coupon_issue_retry(request=issue)
            done += 1
            self.log_change(request, issue, gettext("Sent back to the queue"))
        if done:
            self.message_user(
                request,
                ngettext("%(count)d issue sent back to the queue.", "%(count)d issues sent back to the queue.", done)
                % {"count": done},
                messages.SUCCESS,
            )


# -----------------------------------------------------------------------------
# Batches: generate for print, import third-party codes, export
# -----------------------------------------------------------------------------
class BatchGenerateForm(forms.Form):
    benefit = forms.ModelChoiceField(label=_("Benefit"), queryset=Benefit.objects.none())
    quantity = forms.IntegerField(label=_("Quantity"), min_value=1, max_value=MAX_BATCH_QUANTITY)
    reference = forms.CharField(
        label=_("Reference"),
        max_length=MAX_REFERENCE_LENGTH,
        help_text=_(
            "A name for this print run, e.g. 2025-06-flyer-shanghai. Generating again with the same reference "
            "creates nothing and returns the same batch."
        ),
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["benefit"].queryset = Benefit.objects.filter(is_active=True).order_by("name", "pk")


class BatchImportForm(forms.Form):
    benefit = forms.ModelChoiceField(label=_("Benefit"), queryset=Benefit.objects.none())
    file = forms.FileField(
        label=_("CSV file"),
        help_text=_(
            "Column code (letters, digits and dashes, up to 64 characters), optional column valid_until "
            "(YYYY-MM-DD or YYYY-MM-DD HH:MM, local time); UTF-8 or GBK."
        ),
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["benefit"].queryset = Benefit.objects.filter(is_active=True).order_by("name", "pk")

    def clean_file(self) -> Any:
        file = self.cleaned_data["file"]
        if PurePath(file.name).suffix.lower() not in (".csv", ".txt"):
            raise forms.ValidationError(
                _("Upload a .csv file; in Excel use “Save as” → “CSV UTF-8” or “CSV”."), code="invalid_extension"
            )
        if file.size > MAX_IMPORT_BYTES:
            raise forms.ValidationError(
                _("The file is larger than %(size)s MB; split it, or use “manage.py import_coupons”."),
                code="file_too_large",
                params={"size": MAX_IMPORT_BYTES // (1024 * 1024)},
            )
        return file


def _csv_download(batches: list[CouponBatch], name: str) -> HttpResponse:
    filename = "coupons-{}.csv".format(_FILENAME_UNSAFE.sub("-", name)[:80] or "batch")
    response = HttpResponse(
        content_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": content_disposition_header(as_attachment=True, filename=filename)},
    )
    response.write("\ufeff")  # BOM: Excel then reads the benefit names as UTF-8
    coupon_batch_csv_write(batches=batches, out=response)
    return response


@admin.register(CouponBatch)
class CouponBatchAdmin(LoyaltyModelAdmin):
    list_filter = ["kind", "benefit", "created_at"]
    list_select_related = ["benefit", "created_by"]
    search_fields = ["reference"]
    actions = ["export_codes"]
    fields = ["reference", "benefit", "kind", "quantity", "created_by", "created_at", "coupons_link", "export_link"]
    readonly_fields = fields

    # -- permissions: batches are made by the generate and import pages only
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_create_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("campaigns.add_couponbatch")

    def has_export_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Bearer codes are as good as cash: those who may make batches may print them.
        return request.user.has_perm("campaigns.add_couponbatch")

    def get_list_display(self, request: HttpRequest) -> list[str]:
        columns = ["reference", "benefit", "kind", "quantity", "created_by", "created_at"]
        return [*columns, "export_link"] if self.has_export_permission(request) else columns

    def get_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return self.fields if self.has_export_permission(request) else self.fields[:-1]

    def get_urls(self) -> list[URLPattern]:
        own = [
            path("generate/", self.admin_site.admin_view(self.generate_view), name="campaigns_couponbatch_generate"),
            path("import/", self.admin_site.admin_view(self.import_view), name="campaigns_couponbatch_import"),
            path(
                "<path:object_id>/export/",
                self.admin_site.admin_view(self.export_view),
                name="campaigns_couponbatch_export",
            ),
        ]
        return own + super().get_urls()

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        extra_context = {**(extra_context or {}), "can_create": self.has_create_permission(request)}
        return super().changelist_view(request, extra_context)

    @admin.display(description=_("coupons"))
    def coupons_link(self, obj: CouponBatch) -> str:
        url = f"{_admin_url(Coupon, 'changelist')}?batch__id__exact={obj.pk}"
        return format_html('<a href="{}">{}</a>', url, gettext("Coupons of this batch"))

    @admin.display(description=_("codes for print"))
    def export_link(self, obj: CouponBatch) -> str:
        return format_html('<a href="{}">{}</a>', _admin_url(CouponBatch, "export", obj.pk), gettext("Download CSV"))

    @admin.action(description=_("Download the codes of selected batches (CSV)"), permissions=["export"])
    def export_codes(self, request: HttpRequest, queryset: QuerySet[CouponBatch]) -> HttpResponse:
        batches = list(queryset.order_by("pk"))
        name = batches[0].reference if len(batches) == 1 else "batches"
        return _csv_download(batches, name)

    def export_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        if not self.has_export_permission(request):
            raise PermissionDenied
        batch = self.get_object(request, unquote(object_id))
        if batch is None:
            raise Http404
        return _csv_download([batch], batch.reference)

    def _page(self, request: HttpRequest, template: str, context: dict[str, Any]) -> HttpResponse:
        context = {**self.admin_site.each_context(request), "opts": self.opts, **context}
        request.current_app = self.admin_site.name
        return TemplateResponse(request, template, context)

    def generate_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_create_permission(request):
            raise PermissionDenied
        form = BatchGenerateForm(request.POST if request.method == "POST" else None)
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            existed = CouponBatch.objects.filter(reference=data["reference"].strip()).exists()
            try:
                with transaction.atomic(durable=True):
                    batch = coupon_batch_generate(
                        benefit=data["benefit"],
                        quantity=data["quantity"],
                        reference=data["reference"],
                        by_user=request.user,
                    )
            except LoyaltyError as error:
                form.add_error(None, forms.ValidationError(error.render_message(), code=error.code))
            else:
                if existed:
                    self.message_user(
                        request,
                        gettext("Batch %(reference)s already existed: nothing was generated.")
                        % {"reference": batch.reference},
                        messages.WARNING,
                    )
                else:
                    self.log_addition(request, batch, gettext("Generated"))
                    self.message_user(
                        request,
                        ngettext(
                            "Batch %(reference)s: %(count)d coupon generated.",
                            "Batch %(reference)s: %(count)d coupons generated.",
                            batch.quantity,
                        )
                        % {"reference": batch.reference, "count": batch.quantity},
                        messages.SUCCESS,
                    )
                return HttpResponseRedirect(_admin_url(CouponBatch, "change", batch.pk))
        return self._page(
            request,
            "admin/campaigns/form_page.html",
            {
                "title": gettext("Generate coupons for print"),
                "intro": gettext(
                    "Bearer coupons: whoever holds a code may use it. Each takes one unit of the benefit's stock; "
                    "if the stock is not enough for all of them, none is generated."
                ),
                "form": form,
                "submit_label": gettext("Generate"),
                "media": self.media + form.media,
            },
        )

    def import_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_create_permission(request):
            raise PermissionDenied
        report = None
        form = BatchImportForm(request.POST or None, request.FILES or None)
        if request.method == "POST" and form.is_valid():
            try:
                with transaction.atomic(durable=True):
                    report = coupon_batch_import(
                        benefit=form.cleaned_data["benefit"], file=form.cleaned_data["file"], by_user=request.user
                    )
            except LoyaltyError as error:
                form.add_error(None, forms.ValidationError(error.render_message(), code=error.code))
            else:
                if report.batch is not None and not report.already_imported:
                    self.log_addition(request, report.batch, gettext("Imported"))
        rejected = report.rejected_rows if report else []
        return self._page(
            request,
            "admin/campaigns/batch_import.html",
            {
                "title": gettext("Import coupon codes from CSV"),
                "intro": gettext(
                    "A third party's codes become bearer coupons of the benefit, each taking one unit of its stock. "
                    "The same file is imported only once; codes are stored upper-case without spaces or dashes, "
                    "as the till reads them."
                ),
                "form": form,
                "submit_label": gettext("Import"),
                "media": self.media + form.media,
                "report": report,
                "rejected_rows": rejected[:IMPORT_ROWS_SHOWN],
                "rejected_more": max(len(rejected) - IMPORT_ROWS_SHOWN, 0),
                "batch_url": _admin_url(CouponBatch, "change", report.batch.pk) if report and report.batch else "",
            },
        )
# The other admin modules of this app register themselves on import.
from campaigns import campaign_admin, messaging_admin, segment_admin  # noqa: E402,F401,I001
