"""The clerk console: a till in the browser for stores without a POS integration.

The page is plain HTML and JavaScript that calls the terminal API with the
clerk's session: ``ClerkSessionAuthentication`` makes a signed-in clerk act as
their store's ``console`` terminal, so the console and a POS integration share
every rule, error code and idempotency guarantee. These views only sign the
clerk in and out and render the page; they write nothing themselves.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth.views import LoginView, LogoutView, redirect_to_login
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse, reverse_lazy
from django.utils.translation import gettext_lazy as _
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import ensure_csrf_cookie
from django.views.decorators.http import require_GET

from loyalty.forms import ThrottledAuthenticationForm
from members.selectors import clerk_store_for, clerk_terminal_for

# What the clerk should do next, per stable API error code. The API's own
# ``message`` (already translated) says what went wrong; this says what to do.
ERROR_HINTS: dict[str, Any] = {
    "code_expired": _("Ask the member to refresh the code in the mini-program, then scan it again."),
    "code_already_used": _("Ask the member to refresh the code, then scan the new code."),
    "invalid_member_code": _("Scan the code again, or type the member number or phone."),
    "member_code_required": _("Scan the member's code: points and coupons need the code, not the number or phone."),
    "member_not_found": _("Check the number, or enrol the customer by phone."),
    "member_frozen": _("Record the sale without points; the member can contact customer service."),
    "member_closed": _("Record the sale without a member, or enrol the customer again by phone."),
    "insufficient_points": _("Use fewer points (the maximum is shown next to the field), or none."),
    "points_over_cap": _("Use at most the maximum shown next to the field."),
    "duplicate_receipt": _("This receipt is already recorded: do not record it again. Check the receipt number."),
    "purchase_not_found": _("Check the receipt number: only purchases made at this store can be refunded here."),
    "duplicate_refund": _("This refund was already applied; nothing more to do. Use a new refund number for another."),
    "refund_exceeds_purchase": _("Refund at most the amount shown."),
    "coupon_already_written_off": _("Do not accept this coupon again; take it off the purchase."),
    "coupon_expired": _("The coupon cannot be used; take it off the purchase."),
    "coupon_void": _("The coupon cannot be used; take it off the purchase."),
    "coupon_not_yet_valid": _("The coupon cannot be used yet; take it off the purchase."),
    "coupon_wrong_store": _("This coupon is not valid at this store; take it off the purchase."),
    "coupon_not_members": _("Only the member who holds this coupon can use it; scan that member's code."),
    "coupon_minimum_spend": _("Take the coupon off the purchase, or check the amount."),
    "coupon_not_found": _("Check the coupon code and scan or type it again."),
    "invalid_phone": _("Type an 11-digit mobile number."),
    "phone_registered_to_other": _("Scan the member's code instead, or ask the member to contact customer service."),
    "invalid_input": _("Correct the values shown and try again."),
    "invalid_paid_at": _("Check the date and time of the purchase."),
    "too_many_attempts": _("Wait, then scan the member's code again."),
    "service_unavailable": _("Press Retry: the same attempt is sent again and is never recorded twice."),
    "idempotency_key_reused": _("The values changed since the failed attempt; press the button again to send them."),
    "not_authenticated": _("Your session has ended: sign in again."),
    "authentication_failed": _("Your session has ended: sign in again."),
    "permission_denied": _("Reload the page; if this happens again, sign in again."),
    "network": _(
        "The till could not reach the server, so it is not known whether this was recorded. "
        "Press Retry: the same attempt is sent again and is never recorded twice."
    ),
    "server": _("Something went wrong on the server. Press Retry; if it fails again, call support."),
}

# Strings the page's script shows, translated here so one catalogue serves both.
TEXTS: dict[str, Any] = {
    "network_message": _("No answer from the server."),
    "server_message": _("The server could not complete the request."),
    "retry": _("Retry"),
    "sign_in": _("Sign in again"),
    "status_active": _("Active"),
    "status_frozen": _("Frozen: cannot earn or spend points"),
    "status_closed": _("Closed"),
    "by_code": _("Identified by member code: points and coupons can be used."),
    "by_number": _("Identified by member number or phone: the purchase can only earn points."),
    "code_used": _("The member code was used for the last purchase: scan a new code to use points or coupons."),
    "no_expiring": _("None in the next 30 days"),
    "no_coupons": _("No coupons usable at this store"),
    "expiring_row": _("%(points)s points on %(date)s"),
    "max_points": _("Up to %(points)s points (%(cash)s)"),
    "max_points_none": _("Scan the member's code to use points."),
    "preview_line": _("Earns %(points)s points · to pay: %(due)s"),
    "coupons_selected": _("%(count)s coupon(s) selected"),
    "purchase_done": _("Purchase %(receipt)s recorded"),
    "refund_done": _("Refund %(refund)s of receipt %(receipt)s recorded"),
    "write_off_done": _("Coupon %(code)s written off"),
    "enrolled": _("New member enrolled"),
    "already_member": _("Already a member: shown on the left"),
    "tier_changed": _("Tier changed to %(tier)s"),
    "tier_unchanged": _("%(tier)s (unchanged)"),
    "pending_note": _("%(points)s of them pending (spendable later)"),
    "collect_cash": _("Collect %(cash)s in cash for this coupon."),
    "offline_note": _("Recorded as an offline purchase (flagged for audit)."),
    "code_rescan": _("This member code can no longer pay: scan a new code to use points or coupons."),
    "required": _("This field is required."),
    "none": _("none"),
    "labels": {
        "points_earned": _("Points earned"),
        "points_used": _("Points used"),
        "cash_paid_by_points": _("Paid by points"),
        "amount_due": _("Amount due"),
        "balance": _("New balance"),
        "spendable": _("Spendable"),
        "coupons": _("Coupons used"),
        "tier": _("Tier"),
        "amount": _("Amount"),
        "points_reversed": _("Points taken back"),
        "points_returned": _("Points returned"),
        "coupons_restored": _("Coupons restored"),
        "refundable_left": _("Still refundable"),
        "clawback": _("Points owed (clawback)"),
        "coupon": _("Coupon"),
        "value": _("Value"),
        "written_off_at": _("Written off at"),
        "receipt_no": _("Receipt number"),
        "member_no": _("Member number"),
        "phone": _("Mobile phone"),
    },
    "fields": {
        "code": _("Scan"),
        "member": _("Member"),
        "amount": _("Amount"),
        "receipt_no": _("Receipt number"),
        "refund_no": _("Refund number"),
        "points_to_use": _("Points to use"),
        "coupon_codes": _("Coupons"),
        "phone": _("Mobile phone"),
        "name": _("Name"),
        "birthday": _("Birthday"),
        "paid_at": _("Paid at"),
        "non_field_errors": "",
    },
}


class ConsoleLoginView(LoginView):
    template_name = "console/login.html"
    # Failed sign-ins are counted and throttled (loyalty.throttle).
    authentication_form = ThrottledAuthenticationForm
    next_page = reverse_lazy("console:home")


class ConsoleLogoutView(LogoutView):
    next_page = reverse_lazy("console:login")


@require_GET
@never_cache
@ensure_csrf_cookie
def console_home(request: HttpRequest) -> HttpResponse:
    """The console, for a clerk bound to a store; otherwise a page saying what is missing (403)."""
    if not request.user.is_authenticated:
        return redirect_to_login(request.get_full_path(), reverse("console:login"))
    terminal = clerk_terminal_for(request.user)
    if terminal is None:
        context = {
            "has_permission": request.user.has_perm("members.use_console"),
            "store": clerk_store_for(request.user),
        }
        return render(request, "console/not_clerk.html", context, status=403)
    context = {
        "terminal": terminal,
        "store": terminal.store,
        "config": {
            "urls": {
                "identify": reverse("terminal-identify"),
                "enrol": reverse("terminal-member-enrol"),
                "purchase": reverse("terminal-purchase-create"),
                "preview": reverse("terminal-purchase-preview"),
                # The receipt / coupon code replaces the placeholder, URL-encoded.
                "refund": reverse("terminal-refund-create", args=["RECEIPT"]).replace("RECEIPT", "{}"),
                "write_off": reverse("terminal-coupon-write-off", args=["CODE"]).replace("CODE", "{}"),
                "login": reverse("console:login") + "?next=" + reverse("console:home"),
            },
            "time_zone": settings.TIME_ZONE,
            "points_per_cny": settings.LOYALTY_POINTS_PER_CNY,
            "hints": ERROR_HINTS,
            "texts": TEXTS,
        },
    }
    return render(request, "console/console.html", context)
