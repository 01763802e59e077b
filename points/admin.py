"""Admin of the points ledger: the operators' side.

* The ledger (entries, lots, allocations), purchases, refunds and accounts are
  view-only for everyone, superusers included: they change only through
  ``points.services`` (DESIGN "Points ledger": append-only, corrections are
  new entries).
* "Explain balance" (``admin/points/pointsaccount/<member_id>/explain/``)
  lists a member's open lots, what opened each and what drew from it, so that
  balance = open lots − clawback debt can be read off the page.
* Adjustments are requested through ``adjustment_request`` (never by saving
  a ``PointsEntry``), approved or rejected through ``adjustment_approve`` /
  ``adjustment_reject``, and never edited or deleted afterwards. A CSV bulk
  credit page (``admin/points/pointsadjustment/bulk-credit/``) calls
  ``points.imports.bulk_credit_csv``.
* The last ``check_ledger`` result is shown above the accounts list.

Store managers see only the members registered at their store
(``StaffProfile.store``) and the purchases and refunds made there; anything
else is a 404, as in the members admin whose access rules are reused here.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import PurePath
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import Count, Model, Q, QuerySet, Sum
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.translation import gettext, ngettext
from django.utils.translation import gettext_lazy as _
from django.views.decorators.http import require_POST

from loyalty.errors import LoyaltyError
from loyalty.models import Heartbeat
from members.admin import (
    LoyaltyModelAdmin,
    ReadOnlyAdminMixin,
    ReadOnlyInline,
    ScopedStoreListFilter,
    can_view_phone,
    store_scope,
)
from members.errors import InvalidPhone, MemberNotFound
from members.models import Member
from members.selectors import member_get_by_identifier
from members.services import phone_normalise
from points.imports import MAX_POINTS, bulk_credit_csv
from points.models import (
    PointsAccount,
    PointsAdjustment,
    PointsAllocation,
    PointsEntry,
    PointsLot,
    Purchase,
    Refund,
)
from points.services import adjustment_approve, adjustment_reject, adjustment_request

# check_ledger runs nightly (03:00); older than this, its result is flagged as stale.
LEDGER_CHECK_STALE_HOURS = 36
# Used-up and expired lots listed on the explain page when asked for.
CLOSED_LOTS_SHOWN = 50
# A bulk credit file is read into memory (its SHA-256 is the batch id).
BULK_CREDIT_MAX_BYTES = 5 * 1024 * 1024
LEDGER_CHECK_HEARTBEAT = "check_ledger"


def _admin_url(model: type[Model], view: str, *args: Any) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{view}", args=args)


def _signed(points: int) -> str:
    return f"{points:+d}"


def explain_balance_url(member: Member | int) -> str:
    """URL of the "explain balance" page of a member (for links from other admins)."""
    member_id = member.pk if isinstance(member, Member) else member
    return _admin_url(PointsAccount, "explain", member_id)


def member_points_links(request: HttpRequest, member: Member) -> Iterator[tuple[Any, str]]:
    """Links about a member's points that ``request.user`` may follow, as
    (label, url): for the member's admin page."""
    user = request.user
    if user.has_perm("points.view_pointsaccount"):
        yield _("Explain points balance"), explain_balance_url(member)
    if user.has_perm("points.view_pointsentry"):
        yield _("Points ledger"), f"{_admin_url(PointsEntry, 'changelist')}?member__id__exact={member.pk}"
    if user.has_perm("points.add_pointsadjustment"):
        yield _("Adjust points"), f"{_admin_url(PointsAdjustment, 'add')}?member={member.member_no}"


# -----------------------------------------------------------------------------
# Reads behind the pages (belong with points.selectors)
# -----------------------------------------------------------------------------
@dataclass
class LotExplanation:
    lot: PointsLot
    allocations: list[PointsAllocation]

    @property
    def drawn(self) -> int:
        return -sum(allocation.points for allocation in self.allocations if allocation.points < 0)

    @property
    def returned(self) -> int:
        return sum(allocation.points for allocation in self.allocations if allocation.points > 0)

    @property
    def valid_through(self) -> date:
        """The last local day the lot's points can be used (they expire at the
        local midnight after it)."""
        return (timezone.localtime(self.lot.expires_at) - timedelta(microseconds=1)).date()

    @property
    def consistent(self) -> bool:
        return self.lot.original - self.drawn + self.returned == self.lot.remaining


@dataclass(frozen=True)
class TotalsCheck:
    label: Any
    expected: int
    actual: int
    formula: Any = ""

    @property
    def ok(self) -> bool:
        return self.expected == self.actual


@dataclass
class BalanceExplanation:
    member: Member
    account: PointsAccount | None
    lots: list[LotExplanation]
    closed_lots: list[LotExplanation]
    closed_lots_count: int
    entries_total: int
    entries_count: int
    checks: list[TotalsCheck] = field(default_factory=list)

    @property
    def balance(self) -> int:
        return self.account.balance if self.account else 0

    @property
    def pending(self) -> int:
        return self.account.pending if self.account else 0

    @property
    def debt(self) -> int:
        return self.account.debt if self.account else 0

    @property
    def spendable(self) -> int:
        return self.account.spendable if self.account else 0

    @property
    def open_total(self) -> int:
        return sum(item.lot.remaining for item in self.lots)

    @property
    def pending_total(self) -> int:
        return sum(item.lot.remaining for item in self.lots if item.lot.pending_until is not None)

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)


def _lot_explanations(lots: list[PointsLot]) -> list[LotExplanation]:
    allocations: dict[int, list[PointsAllocation]] = {lot.pk: [] for lot in lots}
    if lots:
        rows = (
            PointsAllocation.objects.filter(lot__in=[lot.pk for lot in lots])
            .select_related("entry__purchase", "entry__refund", "entry__store")
            .order_by("entry__created_at", "pk")
        )
        for allocation in rows:
            allocations[allocation.lot_id].append(allocation)
    return [LotExplanation(lot=lot, allocations=allocations[lot.pk]) for lot in lots]


def balance_explain(*, member: Member, with_closed_lots: bool = False) -> BalanceExplanation:
    """A member's balance lot by lot: open lots (first to expire first) with
    the entry that opened each and every draw from and return into it, the
    ledger totals, and the checks of DESIGN "Points ledger" for this member.
    Used-up and expired lots (latest ``CLOSED_LOTS_SHOWN``) only when asked."""
    account = PointsAccount.objects.filter(member=member).first()
    lots_qs = PointsLot.objects.filter(member=member).select_related(
        "entry__purchase", "entry__refund", "entry__store", "entry__by_user"
    )
    lots = list(lots_qs.filter(remaining__gt=0).order_by("expires_at", "pk"))
    closed_count = PointsLot.objects.filter(member=member, remaining=0).count()
    closed = (
        list(lots_qs.filter(remaining=0).order_by("-earned_at", "-pk")[:CLOSED_LOTS_SHOWN]) if with_closed_lots else []
    )
    explained = _lot_explanations(lots + closed)
    totals = PointsEntry.objects.filter(member=member).aggregate(total=Sum("points"), count=Count("id"))
    result = BalanceExplanation(
        member=member,
        account=account,
        lots=explained[: len(lots)],
        closed_lots=explained[len(lots) :],
        closed_lots_count=closed_count,
        entries_total=totals["total"] or 0,
        entries_count=totals["count"] or 0,
    )
    inconsistent = [item for item in result.lots + result.closed_lots if not item.consistent]
    result.checks = [
        TotalsCheck(
            label=_("Balance = open lots − clawback debt"),
            expected=result.balance,
            actual=result.open_total - result.debt,
            formula=f"{result.open_total} − {result.debt}",
        ),
        TotalsCheck(
            label=_("Balance = sum of ledger entries"),
            expected=result.balance,
            actual=result.entries_total,
        ),
        TotalsCheck(label=_("Pending = open lots still pending"), expected=result.pending, actual=result.pending_total),
        TotalsCheck(
            label=_("Lots whose remaining ≠ original − draws + returns"),
            expected=0,
            actual=len(inconsistent),
        ),
    ]
    return result


@dataclass(frozen=True)
class LedgerCheckStatus:
    at: Any
    ok: bool
    violations: int
    accounts: int | None
    checks: list[tuple[str, int]]
    stale: bool


def ledger_check_status() -> LedgerCheckStatus | None:
    """The last ``check_ledger`` result (None if it never ran)."""
    beat = Heartbeat.objects.filter(name=LEDGER_CHECK_HEARTBEAT).first()
    if beat is None:
        return None
    detail = beat.detail if isinstance(beat.detail, dict) else {}
    checks = detail.get("checks") or {}
    return LedgerCheckStatus(
        at=beat.at,
        ok=bool(detail.get("ok")),
        violations=int(detail.get("violations") or 0),
        accounts=detail.get("accounts"),
        checks=sorted((str(name), int(count)) for name, count in checks.items()) if isinstance(checks, dict) else [],
        stale=timezone.now() - beat.at > timedelta(hours=LEDGER_CHECK_STALE_HOURS),
    )


# -----------------------------------------------------------------------------
# Shared: search by member or receipt, read-only ledger base
# -----------------------------------------------------------------------------
def _phone_or_none(text: str) -> str | None:
    try:
        return phone_normalise(text)
    except InvalidPhone:
        return None


class LedgerSearchMixin:
    """Search by member number, phone or receipt number, all exact.

    The term is first resolved to member and purchase ids (two small indexed
    queries), then the list is filtered on its foreign keys: an OR across
    joined tables would scan the whole ledger.
    """

    search_fields = ["=member__member_no"]  # shows the search box; matching is below
    search_help_text = _("Member number, phone number or receipt number (exact).")
    search_member_lookup: str | None = "member"
    search_purchase_lookup: str | None = None  # path to a Purchase (or "pk" on purchases)
    # Path to the member, ANDed with the purchase where rows are indexed by
    # member and not by purchase (lots: the purchase's member finds them).
    search_purchase_member_lookup: str | None = None
    search_own_fields: tuple[str, ...] = ()  # exact matches on the model's own columns

    def get_search_results(self, request: HttpRequest, queryset: QuerySet[Any], search_term: str) -> Any:
        term = search_term.strip()
        if not term:
            return queryset, False
        condition = Q()
        if self.search_member_lookup:
            phone = _phone_or_none(term)
            members = Q(member_no=term) | Q(phone=phone) if phone else Q(member_no=term)
            member_ids = list(Member.objects.filter(members).values_list("pk", flat=True)[:10])
            if member_ids:
                condition |= Q(**{f"{self.search_member_lookup}__in": member_ids})
        if self.search_purchase_lookup:
            purchases = list(Purchase.objects.filter(receipt_no=term).values_list("pk", "member_id")[:100])
            if purchases:
                by_purchase = Q(**{f"{self.search_purchase_lookup}__in": [pk for pk, _member in purchases]})
                if self.search_purchase_member_lookup:
                    by_purchase &= Q(
                        **{f"{self.search_purchase_member_lookup}__in": [m for _pk, m in purchases if m is not None]}
                    )
                condition |= by_purchase
        for name in self.search_own_fields:
            condition |= Q(**{name: term})
        if not condition:
            return queryset.none(), False
        return queryset.filter(condition), False


class LedgerAdmin(ReadOnlyAdminMixin, LedgerSearchMixin, LoyaltyModelAdmin):
    """View-only for everyone, superusers included."""

    store_scope_field: str | None = "member__registration_store"
    extra_lookup_fields: tuple[str, ...] = ("member",)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return self.get_fields(request, obj)


# -----------------------------------------------------------------------------
# Inlines
# -----------------------------------------------------------------------------
class AllocationByEntryInline(ReadOnlyInline):
    model = PointsAllocation
    fk_name = "entry"
    fields = ["lot", "points"]
    readonly_fields = fields
    verbose_name_plural = _("drawn from / returned into lots")

    def get_queryset(self, request: HttpRequest) -> QuerySet[PointsAllocation]:
        return super().get_queryset(request).select_related("lot")


class AllocationByLotInline(ReadOnlyInline):
    model = PointsAllocation
    fk_name = "lot"
    fields = ["entry", "points", "entry_kind", "entry_at"]
    readonly_fields = fields
    verbose_name_plural = _("draws and returns")

    def get_queryset(self, request: HttpRequest) -> QuerySet[PointsAllocation]:
        return super().get_queryset(request).select_related("entry").order_by("entry__created_at", "pk")

    @admin.display(description=_("kind"))
    def entry_kind(self, obj: PointsAllocation) -> str:
        return obj.entry.get_kind_display()

    @admin.display(description=_("at"))
    def entry_at(self, obj: PointsAllocation) -> Any:
        return obj.entry.created_at


class LotOpenedInline(ReadOnlyInline):
    model = PointsLot
    fk_name = "entry"
    fields = ["original", "remaining", "earned_at", "expires_at", "pending_until"]
    readonly_fields = fields
    verbose_name_plural = _("lot opened")


class EntryByPurchaseInline(ReadOnlyInline):
    model = PointsEntry
    fk_name = "purchase"
    fields = ["created_at", "kind", "points", "balance_after", "source", "refund"]
    readonly_fields = fields
    verbose_name_plural = _("ledger entries")


class RefundInline(ReadOnlyInline):
    model = Refund
    fk_name = "purchase"
    fields = ["created_at", "refund_no", "amount", "points_reversed", "points_returned", "clawback", "terminal"]
    readonly_fields = fields


# -----------------------------------------------------------------------------
# Ledger
# -----------------------------------------------------------------------------
@admin.register(PointsEntry)
class PointsEntryAdmin(LedgerAdmin):
    list_display = [
        "created_at",
        "member",
        "kind",
        "points",
        "balance_after",
        "source",
        "store",
        "receipt",
        "reason",
        "by_user",
    ]
    list_filter = ["kind", "source", ("store", ScopedStoreListFilter), "created_at"]
    list_select_related = ["member", "store", "purchase", "by_user"]
    search_purchase_lookup = "purchase"
    search_own_fields = ("reference",)
    search_help_text = _("Member number, phone, receipt number or reference (exact).")
    extra_lookup_fields = ("member", "purchase", "refund")
    fields = [
        "member",
        "kind",
        "points",
        "balance_after",
        "source",
        "purchase",
        "refund",
        "store",
        "terminal",
        "by_user",
        "reason",
        "reference",
        "created_at",
    ]
    inlines = [LotOpenedInline, AllocationByEntryInline]

    def get_formset_kwargs(self, request: HttpRequest, obj: Any, inline: Any, prefix: str) -> dict[str, Any]:
        kwargs = super().get_formset_kwargs(request, obj, inline, prefix)
        if isinstance(inline, LotOpenedInline) and obj is not None and obj.pk:
            # Lots have no index on their entry: the member's index finds them.
            kwargs["queryset"] = kwargs["queryset"].filter(member_id=obj.member_id)
        return kwargs

    @admin.display(description=_("receipt number"), ordering="purchase__receipt_no")
    def receipt(self, obj: PointsEntry) -> str:
        return obj.purchase.receipt_no if obj.purchase else ""


class LotStateFilter(admin.SimpleListFilter):
    title = _("state")
    parameter_name = "state"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        return [("open", _("Open (points remaining)")), ("pending", _("Pending")), ("closed", _("Used up or expired"))]

    def queryset(self, request: HttpRequest, queryset: QuerySet[PointsLot]) -> QuerySet[PointsLot]:
        if self.value() == "open":
            return queryset.filter(remaining__gt=0)
        if self.value() == "pending":
            return queryset.filter(remaining__gt=0, pending_until__isnull=False)
        if self.value() == "closed":
            return queryset.filter(remaining=0)
        return queryset


@admin.register(PointsLot)
class PointsLotAdmin(LedgerAdmin):
    list_display = [
        "id",
        "member",
        "original",
        "remaining",
        "earned_at",
        "expires_at",
        "pending_until",
        "opened_by",
        "receipt",
    ]
    list_filter = [
        LotStateFilter,
        "entry__kind",
        "entry__source",
        ("entry__store", ScopedStoreListFilter),
        "earned_at",
        "expires_at",
    ]
    list_select_related = ["member", "entry__purchase"]
    search_purchase_lookup = "entry__purchase"
    search_purchase_member_lookup = "member"
    fields = ["member", "entry", "original", "remaining", "earned_at", "expires_at", "pending_until"]
    inlines = [AllocationByLotInline]

    @admin.display(description=_("opened by"), ordering="entry__kind")
    def opened_by(self, obj: PointsLot) -> str:
        return f"{obj.entry.get_kind_display()} / {obj.entry.get_source_display()}"

    @admin.display(description=_("receipt number"))
    def receipt(self, obj: PointsLot) -> str:
        return obj.entry.purchase.receipt_no if obj.entry.purchase else ""


@admin.register(PointsAllocation)
class PointsAllocationAdmin(LedgerAdmin):
    store_scope_field = "entry__member__registration_store"
    list_display = ["id", "entry_at", "member", "entry_kind", "points", "entry", "lot", "receipt"]
    list_filter = ["entry__kind", "entry__source", ("entry__store", ScopedStoreListFilter), "entry__created_at"]
    list_select_related = ["entry__member", "entry__purchase", "lot"]
    search_fields = ["=entry__member__member_no"]
    search_member_lookup = "entry__member"
    search_purchase_lookup = "entry__purchase"
    extra_lookup_fields = ("entry", "lot")
    fields = ["entry", "lot", "points"]
    ordering = ["-pk"]

    @admin.display(description=_("at"), ordering="entry__created_at")
    def entry_at(self, obj: PointsAllocation) -> Any:
        return obj.entry.created_at

    @admin.display(description=_("member"))
    def member(self, obj: PointsAllocation) -> Member:
        return obj.entry.member

    @admin.display(description=_("kind"), ordering="entry__kind")
    def entry_kind(self, obj: PointsAllocation) -> str:
        return obj.entry.get_kind_display()

    @admin.display(description=_("receipt number"))
    def receipt(self, obj: PointsAllocation) -> str:
        return obj.entry.purchase.receipt_no if obj.entry.purchase else ""


@admin.register(Purchase)
class PurchaseAdmin(LedgerAdmin):
    store_scope_field = "store"
    list_display = [
        "paid_at",
        "store",
        "receipt_no",
        "member",
        "amount",
        "refunded_amount",
        "points_earned",
        "points_used",
        "terminal",
        "offline",
    ]
    list_filter = [("store", ScopedStoreListFilter), "offline", "paid_at"]
    list_select_related = ["store", "member", "terminal__store"]
    search_fields = ["=receipt_no"]
    search_purchase_lookup = "pk"
    fields = [
        "store",
        "terminal",
        "receipt_no",
        "member",
        "tier",
        "amount",
        "refunded_amount",
        "paid_at",
        "lines",
        "points_earned",
        "points_used",
        "cash_paid_by_points",
        "points_reversed",
        "points_returned",
        "multiplier",
        "offline",
        "claimed_at",
        "created_at",
    ]
    inlines = [RefundInline, EntryByPurchaseInline]


@admin.register(Refund)
class RefundAdmin(LedgerAdmin):
    store_scope_field = "store"
    list_display = [
        "created_at",
        "store",
        "refund_no",
        "receipt",
        "member",
        "amount",
        "points_reversed",
        "points_returned",
        "clawback",
        "terminal",
    ]
    list_filter = [("store", ScopedStoreListFilter), "created_at"]
    list_select_related = ["store", "purchase__member", "terminal__store"]
    search_fields = ["=refund_no"]
    search_member_lookup = "purchase__member"
    search_purchase_lookup = "purchase"
    search_own_fields = ("refund_no",)
    search_help_text = _("Member number, phone, receipt number or refund number (exact).")
    extra_lookup_fields = ("purchase",)
    fields = [
        "purchase",
        "store",
        "terminal",
        "refund_no",
        "amount",
        "points_reversed",
        "points_returned",
        "clawback",
        "created_at",
    ]

    @admin.display(description=_("receipt number"), ordering="purchase__receipt_no")
    def receipt(self, obj: Refund) -> str:
        return obj.purchase.receipt_no

    @admin.display(description=_("member"))
    def member(self, obj: Refund) -> Member | None:
        return obj.purchase.member


# -----------------------------------------------------------------------------
# Accounts and "explain balance"
# -----------------------------------------------------------------------------
class AccountStateFilter(admin.SimpleListFilter):
    title = _("balance")
    parameter_name = "balance_state"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        return [
            ("positive", _("Has points")),
            ("zero", _("Zero")),
            ("pending", _("Has pending points")),
            ("debt", _("Owes points (clawback)")),
        ]

    def queryset(self, request: HttpRequest, queryset: QuerySet[PointsAccount]) -> QuerySet[PointsAccount]:
        value = self.value()
        if value == "positive":
            return queryset.filter(balance__gt=0)
        if value == "zero":
            return queryset.filter(balance=0)
        if value == "pending":
            return queryset.filter(pending__gt=0)
        if value == "debt":
            return queryset.filter(debt__gt=0)
        return queryset


@admin.register(PointsAccount)
class PointsAccountAdmin(LedgerAdmin):
    list_display = ["member", "balance", "pending", "debt", "spendable_points", "updated_at", "explain_link"]
    list_filter = [AccountStateFilter]
    list_select_related = ["member"]
    fields = ["member", "balance", "pending", "debt", "spendable_points", "updated_at", "explain_link"]
    change_list_template = "admin/points/account_change_list.html"

    def get_urls(self) -> list[URLPattern]:
        # Before the default "<path:object_id>/" catch-all.
        own = [
            path(
                "<path:object_id>/explain/",
                self.admin_site.admin_view(self.explain_view),
                name="points_pointsaccount_explain",
            )
        ]
        return own + super().get_urls()

    @admin.display(description=_("spendable"))
    def spendable_points(self, obj: PointsAccount) -> int:
        return obj.spendable

    @admin.display(description=_("explain"))
    def explain_link(self, obj: PointsAccount) -> str:
        return format_html('<a href="{}">{}</a>', explain_balance_url(obj.member_id), gettext("Explain balance"))

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        extra_context = {**(extra_context or {}), "ledger_check": ledger_check_status(), "ledger_check_known": True}
        return super().changelist_view(request, extra_context)

    def _member_in_scope(self, request: HttpRequest, object_id: str) -> Member:
        """The member, if ``request.user`` may see them; else 404 (absent and
        out of a store manager's store get the same answer)."""
        try:
            member_id = int(unquote(object_id))
        except ValueError:
            raise Http404(gettext("No such member.")) from None
        members = Member.objects.select_related("tier", "registration_store").filter(pk=member_id)
        scope = store_scope(request)
        if scope is not None:
            members = members.filter(registration_store_id=scope.store_id) if scope.store_id else members.none()
        member = members.first()
        if member is None:
            raise Http404(gettext("No such member in your store.") if scope else gettext("No such member."))
        return member

    def explain_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        member = self._member_in_scope(request, object_id)
        with_closed = request.GET.get("closed") == "1"
        explanation = balance_explain(member=member, with_closed_lots=with_closed)
        user = request.user
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": gettext("Points balance of member %(member_no)s") % {"member_no": member.member_no},
            "member": member,
            "member_phone": member.phone if can_view_phone(request) else member.masked_phone,
            "member_name": member.name if can_view_phone(request) else member.masked_name,
            "x": explanation,
            "with_closed": with_closed,
            "member_url": _admin_url(Member, "change", member.pk) if user.has_perm("members.view_member") else "",
            "entries_url": (
                f"{_admin_url(PointsEntry, 'changelist')}?member__id__exact={member.pk}"
                if user.has_perm("points.view_pointsentry")
                else ""
            ),
            "adjust_url": (
                f"{_admin_url(PointsAdjustment, 'add')}?member={member.member_no}"
                if user.has_perm("points.add_pointsadjustment") and member.status != Member.Status.CLOSED
                else ""
            ),
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, "admin/points/explain_balance.html", context)


# -----------------------------------------------------------------------------
# Adjustments
# -----------------------------------------------------------------------------
class AdjustmentAddForm(forms.ModelForm):
    """Input of ``adjustment_request``; the admin never saves this form itself.

    ``request`` is set by ``PointsAdjustmentAdmin.get_form``; a refusal by the
    service on the first submit comes back as ``request.points_adjustment_refusal``
    and is shown as a form error (see ``PointsAdjustmentAdmin.changeform_view``).
    """

    member = forms.CharField(label=_("Member"), max_length=32, help_text=_("Member number or mobile phone."))
    points = forms.IntegerField(label=_("Points"), min_value=-MAX_POINTS, max_value=MAX_POINTS)
    reason = forms.CharField(
        label=_("Reason"),
        max_length=255,
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        error_messages={"required": _("A reason is required.")},
        help_text=_("Recorded in the member's points history."),
    )

    request: HttpRequest | None = None

    class Meta:
        model = PointsAdjustment
        fields = ["member", "points", "reason"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["points"].help_text = _(
            "Positive to credit, negative to debit. More than %(threshold)s points either way waits for a "
            "second operator's approval."
        ) % {"threshold": settings.LOYALTY_ADJUST_APPROVAL_THRESHOLD}

    def clean_member(self) -> Member:
        value = self.cleaned_data["member"].strip()
        try:
            member = member_get_by_identifier(identifier=value)
        except MemberNotFound as error:
            raise forms.ValidationError(error.render_message(), code=error.code) from None
        scope = store_scope(self.request) if self.request is not None else None
        if scope is not None and member.registration_store_id != scope.store_id:
            raise forms.ValidationError(MemberNotFound().render_message(), code=MemberNotFound.code)
        return member

    def clean_points(self) -> int:
        points = self.cleaned_data["points"]
        if points == 0:
            raise forms.ValidationError(_("Points must not be zero."), code="invalid_points")
        return points

    def clean_reason(self) -> str:
        reason = self.cleaned_data["reason"].strip()
        if not reason:
            raise forms.ValidationError(_("A reason is required."), code="reason_required")
        return reason

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        refusal = getattr(self.request, "points_adjustment_refusal", None)
        if refusal is not None and not self.errors:
            self.add_error(None, forms.ValidationError(refusal.render_message(), code=refusal.code))
        return cleaned


class AdjustmentStatusFilter(admin.SimpleListFilter):
    """Waiting for approval by default (what the list is for); "All" shows every
    status. A search looks through every status."""

    title = _("status")
    parameter_name = "status"
    ALL = "all"

    def __init__(self, request: HttpRequest, params: Any, model: Any, model_admin: Any) -> None:
        super().__init__(request, params, model, model_admin)
        self.default = self.ALL if request.GET.get("q") else PointsAdjustment.Status.PENDING.value

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        return list(PointsAdjustment.Status.choices)

    def current(self) -> str:
        return self.value() or self.default

    def choices(self, changelist: Any) -> Iterator[dict[str, Any]]:
        current = self.current()
        yield {
            "selected": current == self.ALL,
            "query_string": changelist.get_query_string({self.parameter_name: self.ALL}),
            "display": _("All"),
        }
        for value, label in self.lookup_choices:
            yield {
                "selected": current == str(value),
                "query_string": changelist.get_query_string({self.parameter_name: value}),
                "display": label,
            }

    def queryset(self, request: HttpRequest, queryset: QuerySet[PointsAdjustment]) -> QuerySet[PointsAdjustment]:
        current = self.current()
        if current == self.ALL:
            return queryset
        return queryset.filter(status=current)


class BulkCreditForm(forms.Form):
    file = forms.FileField(
        label=_("CSV file"),
        help_text=_("Rows member_no,points (member number or phone; header row optional), UTF-8 or GBK."),
    )
    reason = forms.CharField(
        label=_("Reason"),
        max_length=255,
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        error_messages={"required": _("A reason is required.")},
        help_text=_("Recorded on every credit of the file."),
    )
    dry_run = forms.BooleanField(
        label=_("Dry run"), required=False, help_text=_("Check every row and show the report, but write nothing.")
    )

    def clean_file(self) -> Any:
        file = self.cleaned_data["file"]
        if PurePath(file.name).suffix.lower() not in (".csv", ".txt"):
            raise forms.ValidationError(
                _("Upload a .csv file; in Excel use “Save as” → “CSV UTF-8” or “CSV”."), code="invalid_extension"
            )
        if file.size > BULK_CREDIT_MAX_BYTES:
            raise forms.ValidationError(
                _("The file is larger than %(size)s MB; split it, or use “manage.py bulk_credit”."),
                code="file_too_large",
                params={"size": BULK_CREDIT_MAX_BYTES // (1024 * 1024)},
            )
        return file

    def clean_reason(self) -> str:
        reason = self.cleaned_data["reason"].strip()
        if not reason:
            raise forms.ValidationError(_("A reason is required."), code="reason_required")
        return reason


@admin.register(PointsAdjustment)
class PointsAdjustmentAdmin(LedgerSearchMixin, LoyaltyModelAdmin):
    store_scope_field = "member__registration_store"
    list_display = [
        "created_at",
        "member",
        "signed_points",
        "reason",
        "status",
        "requested_by",
        "decided_by",
        "decided_at",
        "balance_after",
    ]
    list_filter = [AdjustmentStatusFilter, "created_at"]
    list_select_related = ["member", "requested_by", "decided_by", "entry"]
    search_own_fields = ("batch",)
    search_help_text = _("Member number, phone number or bulk credit batch (exact).")
    extra_lookup_fields = ("member", "batch")
    actions = ["approve_adjustments", "reject_adjustments"]
    change_list_template = "admin/points/adjustment_change_list.html"
    change_form_template = "admin/points/adjustment_change_form.html"

    # -- permissions: created through the service, then never edited or deleted
    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_approve_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.has_perm("points.change_pointsadjustment")

    # -- pages
    def get_urls(self) -> list[URLPattern]:
        info = self.opts.app_label, self.opts.model_name
        own = [
            path(
                "bulk-credit/",
                self.admin_site.admin_view(self.bulk_credit_view),
                name="{}_{}_bulk_credit".format(*info),
            ),
            path(
                "<path:object_id>/decide/",
                self.admin_site.admin_view(require_POST(self.decide_view)),
                name="{}_{}_decide".format(*info),
            ),
        ]
        return own + super().get_urls()

    def get_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        if obj is None:
            return ["member", "points", "reason"]
        return [
            "member",
            "signed_points",
            "reason",
            "status",
            "requested_by",
            "created_at",
            "decided_by",
            "decided_at",
            "entry",
            "balance_after",
            "batch",
        ]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return self.get_fields(request, obj) if obj is not None else []

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any) -> Any:
        if obj is not None:
            return super().get_form(request, obj, change, **kwargs)
        form = super().get_form(request, obj, change, form=AdjustmentAddForm, **kwargs)
        return type(form.__name__, (form,), {"request": request})

    def get_changeform_initial_data(self, request: HttpRequest) -> dict[str, Any]:
        # ?member=<member number> from the explain page and the member's page.
        return {"member": request.GET.get("member", "")}

    @admin.display(description=_("points"), ordering="points")
    def signed_points(self, obj: PointsAdjustment) -> str:
        return _signed(obj.points)

    @admin.display(description=_("balance after"))
    def balance_after(self, obj: PointsAdjustment) -> int | None:
        return obj.entry.balance_after if obj.entry else None

    def changeform_view(
        self, request: HttpRequest, object_id: str | None = None, form_url: str = "", extra_context: Any = None
    ) -> HttpResponse:
        extra_context = dict(extra_context or {})
        if object_id is None:
            extra_context.update(show_save_and_add_another=False, show_save_and_continue=False)
            try:
                return super().changeform_view(request, object_id, form_url, extra_context)
            except LoyaltyError as refusal:
                # The service refused in save_model: the admin's transaction rolled
                # back (nothing written, no log entry). Show the form again with the
                # refusal as its error.
                if request.method != "POST":
                    raise
                request.points_adjustment_refusal = refusal  # type: ignore[attr-defined]
                return super().changeform_view(request, object_id, form_url, extra_context)
        obj = self.get_object(request, unquote(object_id))
        pending = obj is not None and obj.status == PointsAdjustment.Status.PENDING
        own = obj is not None and obj.requested_by_id == request.user.pk
        # The requester may not approve their own (the service refuses it too).
        extra_context["can_decide"] = bool(pending and not own and self.has_approve_permission(request, obj))
        extra_context["waits_for_other"] = bool(pending and own)
        extra_context["decide_url"] = _admin_url(PointsAdjustment, "decide", object_id)
        return super().changeform_view(request, object_id, form_url, extra_context)

    def save_model(self, request: HttpRequest, obj: PointsAdjustment, form: Any, change: bool) -> None:
        if change:
            return  # never: adjustments are not editable
        data = form.cleaned_data
        adjustment = adjustment_request(
            member=data["member"], points=data["points"], reason=data["reason"], by_user=request.user
        )
        for model_field in adjustment._meta.concrete_fields:
            setattr(obj, model_field.attname, getattr(adjustment, model_field.attname))
        obj._state.adding = False
        obj._state.db = adjustment._state.db

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        return  # no inlines and no many-to-many fields

    def response_add(self, request: HttpRequest, obj: PointsAdjustment, post_url_continue: Any = None) -> HttpResponse:
        values = {"points": _signed(obj.points), "member_no": obj.member.member_no}
        if obj.status == PointsAdjustment.Status.APPLIED:
            balance = obj.entry.balance_after if obj.entry else None
            values["balance"] = balance
            message = gettext("Adjustment of %(points)s points for member %(member_no)s applied; balance %(balance)s.")
            self.message_user(request, message % values, messages.SUCCESS)
        else:
            message = gettext(
                "Adjustment of %(points)s points for member %(member_no)s is waiting for a second operator's approval."
            )
            self.message_user(request, message % values, messages.WARNING)
        return HttpResponseRedirect(_admin_url(PointsAdjustment, "change", obj.pk))

    # -- approve / reject
    def _decide(self, request: HttpRequest, adjustments: list[PointsAdjustment], approve: bool) -> int:
        decide = adjustment_approve if approve else adjustment_reject
        done = 0
        for adjustment in adjustments:
            try:
                with transaction.atomic(durable=True):
                    decide(adjustment=adjustment, by_user=request.user)
            except LoyaltyError as error:
                self.message_user(
                    request,
                    gettext("Adjustment %(id)s (member %(member_no)s, %(points)s points): %(error)s")
                    % {
                        "id": adjustment.pk,
                        "member_no": adjustment.member.member_no,
                        "points": _signed(adjustment.points),
                        "error": error.render_message(),
                    },
                    messages.ERROR,
                )
            else:
                done += 1
                self.log_change(request, adjustment, gettext("Approved") if approve else gettext("Rejected"))
        if done:
            text = (
                ngettext(
                    "%(count)d adjustment approved and applied.", "%(count)d adjustments approved and applied.", done
                )
                if approve
                else ngettext("%(count)d adjustment rejected.", "%(count)d adjustments rejected.", done)
            )
            self.message_user(request, text % {"count": done}, messages.SUCCESS)
        return done

    @admin.action(description=_("Approve selected adjustments"), permissions=["approve"])
    def approve_adjustments(self, request: HttpRequest, queryset: QuerySet[PointsAdjustment]) -> None:
        self._decide(request, list(queryset.select_related("member").order_by("pk")), approve=True)

    @admin.action(description=_("Reject selected adjustments"), permissions=["approve"])
    def reject_adjustments(self, request: HttpRequest, queryset: QuerySet[PointsAdjustment]) -> None:
        self._decide(request, list(queryset.select_related("member").order_by("pk")), approve=False)

    def decide_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        if not self.has_approve_permission(request):
            raise PermissionDenied
        adjustment = self.get_object(request, unquote(object_id))
        if adjustment is None:
            raise Http404
        decision = request.POST.get("decision")
        if decision not in ("approve", "reject"):
            raise PermissionDenied
        self._decide(request, [adjustment], approve=decision == "approve")
        return HttpResponseRedirect(_admin_url(PointsAdjustment, "change", adjustment.pk))

    # -- bulk credit
    def bulk_credit_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_add_permission(request):
            raise PermissionDenied
        report = None
        if request.method == "POST":
            form = BulkCreditForm(request.POST, request.FILES)
            if form.is_valid():
                try:
                    report = bulk_credit_csv(
                        file=form.cleaned_data["file"],
                        reason=form.cleaned_data["reason"],
                        by_user=request.user,  # type: ignore[arg-type]
                        dry_run=form.cleaned_data["dry_run"],
                    )
                except LoyaltyError as error:
                    form.add_error(None, error.render_message())
        else:
            form = BulkCreditForm()
        changelist_url = _admin_url(PointsAdjustment, "changelist")
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": gettext("Bulk credit from CSV"),
            "form": form,
            "report": report,
            "batch_url": f"{changelist_url}?batch={report.batch}&status=all" if report else "",
            "pending_url": f"{changelist_url}?batch={report.batch}&status=pending" if report else "",
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, "admin/points/bulk_credit.html", context)
