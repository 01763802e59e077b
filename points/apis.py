"""Terminal, member and operator API of the points app."""

from __future__ import annotations

import re
from contextlib import nullcontext
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import transaction
from django.http import HttpResponse
from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field
from rest_framework import serializers
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from campaigns.errors import CouponNotFound
from loyalty.api.authentication import TERMINAL_AUTHENTICATION, MemberTokenAuthentication
from loyalty.api.bodies import decimal2
from loyalty.api.idempotency import idempotent
from loyalty.api.pagination import StandardPagination
from loyalty.api.permissions import IsMember, IsTerminal
from loyalty.api.schema import errors
from loyalty.errors import NotFound
from loyalty.throttle import failures_counted
from members.apis import _valid
from members.errors import MemberNotFound, UnknownStore
from members.models import Member, Store, Terminal
from members.selectors import IdentifiedMember, member_resolve
from points import selectors, services, till
from points.errors import PurchaseNotFound
from points.models import PointsAdjustment, PointsEntry

IDEMPOTENCY_HEADER = OpenApiParameter(
    "Idempotency-Key",
    location=OpenApiParameter.HEADER,
    required=False,
    # What loyalty.api.idempotency accepts: 1 to 128 printable ASCII characters
    # (spaces only inside: HTTP servers strip them at the ends).
    type={"type": "string", "minLength": 1, "maxLength": 128, "pattern": "^[!-~]([ -~]*[!-~])?$"},
    description="A retry with the same key and body returns the first response and changes nothing.",
)
RECEIPT_MAX = 64
# What a receipt number may be: ReceiptField's pattern and the till's hand check.
RECEIPT_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_\-./]*"
_PLAIN_DECIMAL = re.compile(r"-?([0-9]+(\.[0-9]*)?|\.[0-9]+)", re.ASCII)


@extend_schema_field(
    {"type": "string", "format": "decimal", "pattern": r"^[0-9]{1,10}(\.[0-9]{1,2})?$", "example": "128.50"}
)
class MoneyField(serializers.DecimalField):
    """An amount in CNY: a JSON number or a plain decimal string such as
    "128.50". Strings in exponent notation ("1e3"), with full-width digits
    ("１２８.５０") or with "NaN"/"Infinity" are refused: a till sends the
    amount it printed, and a look-alike is a bug to report, not to guess."""

    default_error_messages = {"plain": _("Use a plain decimal amount such as 128.50.")}

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, str) and not _PLAIN_DECIMAL.fullmatch(data.strip()):
            self.fail("plain")
        return super().to_internal_value(data)


def _money_field(**kwargs: Any) -> serializers.DecimalField:
    return MoneyField(
        max_digits=12,
        decimal_places=2,
        min_value=Decimal("0.01"),
        max_value=settings.LOYALTY_PURCHASE_MAX_AMOUNT,
        **kwargs,
    )


def _json_text_ok(value: Any) -> bool:
    """Whether every key and string in ``value`` can be stored in PostgreSQL
    ``jsonb``: no NUL (``\\u0000``) and no unpaired surrogate."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            if "\x00" in item:
                return False
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return False
    return True


class LineField(serializers.DictField):
    """One line of the bill, kept as the till sent it (JSON object)."""

    default_error_messages = {"text": _("Text in a line must not contain NUL or unpaired surrogate characters.")}

    def to_internal_value(self, data: Any) -> Any:
        value = super().to_internal_value(data)
        if not _json_text_ok(value):
            self.fail("text")
        return value


def _receipt_from_path(receipt_no: str) -> str:
    """The receipt number in a URL. One that no purchase can have (longer than
    the column, or with NUL, which PostgreSQL text cannot hold) is not found,
    without a query, and is never cut down to another receipt's number."""
    if len(receipt_no) > RECEIPT_MAX or "\x00" in receipt_no:
        raise PurchaseNotFound(receipt_no=receipt_no[:RECEIPT_MAX].replace("\x00", ""))
    return receipt_no


class ReceiptField(serializers.RegexField):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(
            rf"^{RECEIPT_PATTERN}$",
            max_length=RECEIPT_MAX,
            error_messages={"invalid": _("Use letters, digits and - _ . / only.")},
            **kwargs,
        )


class TierBriefSerializer(serializers.Serializer):
    code = serializers.CharField()
    name = serializers.CharField()


# -----------------------------------------------------------------------------
# Purchases
# -----------------------------------------------------------------------------
class PurchaseInputSerializer(serializers.Serializer):
    member = serializers.CharField(
        max_length=64, required=False, allow_blank=True, default="",
        help_text="Scanned member code (needed to use points or coupons), member number or phone; blank for none.",
    )
    receipt_no = ReceiptField()
    amount = _money_field(help_text="Amount of the bill in CNY, after discounts other than points.")
    paid_at = serializers.DateTimeField(required=False, allow_null=True, default=None)
    lines = serializers.ListField(child=LineField(), required=False, default=list, max_length=500)
    points_to_use = serializers.IntegerField(min_value=0, max_value=10**9, required=False, default=0)
    coupon_codes = serializers.ListField(
        child=serializers.CharField(max_length=64), required=False, default=list, max_length=20
    )


_RECEIPT = re.compile(RECEIPT_PATTERN, re.ASCII)
_MONEY = re.compile(r"[0-9]{1,10}(\.[0-9]{1,2})?", re.ASCII)
_PURCHASE_BODY_KEYS = frozenset({"member", "receipt_no", "amount"})


def purchase_body(data: Any) -> dict[str, Any] | None:
    """What ``PurchaseInputSerializer`` makes of the body a till sends on
    almost every sale (member code or number, receipt number, amount as a plain
    string; nothing else), checked by hand: the serializer's walk over seven
    fields was 3% of a purchase's CPU in process. None for any other
    body, which the serializer then validates (and refuses with its errors); a
    test holds the two equal on every body this accepts."""
    if type(data) is not dict or data.keys() != _PURCHASE_BODY_KEYS:
        return None
    member, receipt_no, amount = data["member"], data["receipt_no"], data["amount"]
    if type(member) is not str or not member.isascii() or not member.isprintable() or member != member.strip():
        return None
    if len(member) > 64 or type(receipt_no) is not str or len(receipt_no) > RECEIPT_MAX:
        return None
    if not _RECEIPT.fullmatch(receipt_no) or type(amount) is not str or not _MONEY.fullmatch(amount):
        return None
    value = Decimal(amount).quantize(services.CENT)
    if not services.CENT <= value <= settings.LOYALTY_PURCHASE_MAX_AMOUNT:
        return None
    return {
        "member": member, "receipt_no": receipt_no, "amount": value, "paid_at": None, "lines": [],
        "points_to_use": 0, "coupon_codes": [],
    }


class CouponWrittenOffSerializer(serializers.Serializer):
    code = serializers.CharField()
    name = serializers.CharField()
    kind = serializers.CharField()
    value = serializers.DecimalField(max_digits=10, decimal_places=2)
    cash_price = serializers.DecimalField(max_digits=10, decimal_places=2)


class PurchaseOutputSerializer(serializers.Serializer):
    receipt_no = serializers.CharField()
    member_no = serializers.CharField(allow_null=True)
    amount = serializers.DecimalField(max_digits=12, decimal_places=2)
    points_earned = serializers.IntegerField()
    points_pending = serializers.IntegerField(
        help_text="Points of this purchase that wait out the pending period before they can be spent "
        "(0 without one; points that paid clawback debt are not pending)."
    )
    points_used = serializers.IntegerField()
    cash_paid_by_points = serializers.DecimalField(max_digits=12, decimal_places=2)
    amount_due = serializers.DecimalField(max_digits=12, decimal_places=2)
    coupons_written_off = CouponWrittenOffSerializer(many=True)
    balance = serializers.IntegerField()
    spendable = serializers.IntegerField()
    tier = TierBriefSerializer(allow_null=True)
    tier_changed = serializers.BooleanField()
    offline = serializers.BooleanField()


def purchase_output(result: services.PurchaseResult) -> dict[str, Any]:
    """The response body as ``PurchaseOutputSerializer`` renders it (money as
    "0.00" strings, as the schema says: a raw Decimal would be rendered as a
    JSON float), built directly: the serializer's field-by-field walk was 3% of
    a purchase's CPU in process (docs/performance.md, session 9); a test holds
    the two equal."""
    purchase = result.purchase
    tier = result.tier
    return {
        "receipt_no": str(purchase.receipt_no),
        "member_no": str(purchase.member.member_no) if purchase.member else None,
        "amount": decimal2(purchase.amount),
        "points_earned": int(purchase.points_earned),
        "points_pending": int(result.points_pending),
        "points_used": int(purchase.points_used),
        "cash_paid_by_points": decimal2(purchase.cash_paid_by_points),
        "amount_due": decimal2(purchase.amount - purchase.cash_paid_by_points),
        "coupons_written_off": [
            {
                "code": str(coupon["code"]),
                "name": str(coupon["name"]),
                "kind": str(coupon["kind"]),
                "value": decimal2(coupon["value"]),
                "cash_price": decimal2(coupon["cash_price"]),
            }
            for coupon in result.coupons_written_off
        ],
        "balance": int(result.balance),
        "spendable": int(result.spendable),
        "tier": {"code": str(tier.code), "name": str(tier.name)} if tier else None,
        "tier_changed": bool(result.tier_changed),
        "offline": bool(purchase.offline),
    }


class PurchaseCreateApi(APIView):
    """Record a purchase: earn points, pay part of the bill with points, apply coupons."""

    authentication_classes = TERMINAL_AUTHENTICATION
    permission_classes = [IsTerminal]

    @extend_schema(
        operation_id="terminal_purchase_create",
        tags=["terminal"],
        parameters=[IDEMPOTENCY_HEADER],
        request=PurchaseInputSerializer,
        responses={201: PurchaseOutputSerializer, **errors(400, 401, 403, 404, 409, 410, 422, 429)},
    )
    def post(self, request: Request) -> HttpResponse:
        data = purchase_body(request.data) or _valid(PurchaseInputSerializer, request)
        terminal: Terminal = request.user
        resolved: list[IdentifiedMember] = []  # the member, when ``plain`` read it

        def plain() -> tuple[int, Any] | None:
            # The usual sale (no points paying, no coupons): in one statement
            # when nothing sends it to the general path (points/till.py).
            if data["coupon_codes"] or data["points_to_use"] or not data["member"].strip():
                return None
            resolved.append(member_resolve(value=data["member"], terminal=terminal, paid_at=data["paid_at"]))
            result = till.purchase_one_statement(
                store=terminal.store, terminal=terminal, receipt_no=data["receipt_no"], amount=data["amount"],
                paid_at=data["paid_at"], identified=resolved[0], lines=data["lines"],
            )
            return (201, purchase_output(result)) if result is not None else None

        def operation() -> tuple[int, Any]:
            # Coupon codes guessed inside purchases count with those of the
            # write-off endpoint: one throttle per terminal for both.
            guesses = (
                failures_counted(kind="coupon", terminal=terminal, errors=CouponNotFound, reason="not_found")
                if data["coupon_codes"]
                else nullcontext()
            )
            with guesses:
                identified = resolved[0] if resolved else None
                if identified is None and data["member"].strip():
                    identified = member_resolve(value=data["member"], terminal=terminal, paid_at=data["paid_at"])
                result = services.purchase_record_in_transaction(
                    store=terminal.store,
                    terminal=terminal,
                    receipt_no=data["receipt_no"],
                    amount=data["amount"],
                    paid_at=data["paid_at"],
                    identified=identified,
                    lines=data["lines"],
                    points_to_use=data["points_to_use"],
                    coupon_codes=data["coupon_codes"],
                )
            return 201, purchase_output(result)

        return idempotent(request, scope=f"terminal:{terminal.pk}", operation=operation, first=plain)


class PurchasePreviewApi(APIView):
    """What a purchase would earn and how many points may pay it; writes nothing."""

    authentication_classes = TERMINAL_AUTHENTICATION
    permission_classes = [IsTerminal]

    class PreviewOutputSerializer(serializers.Serializer):
        points_to_earn = serializers.IntegerField()
        max_points_to_use = serializers.IntegerField()
        cash_paid_by_points = serializers.DecimalField(max_digits=12, decimal_places=2)
        amount_due = serializers.DecimalField(max_digits=12, decimal_places=2)
        balance = serializers.IntegerField(allow_null=True)

    @extend_schema(
        operation_id="terminal_purchase_preview",
        tags=["terminal"],
        request=PurchaseInputSerializer,
        responses={200: PreviewOutputSerializer, **errors(400, 401, 403, 404, 409, 410, 429)},
    )
    def post(self, request: Request) -> Response:
        data = _valid(PurchaseInputSerializer, request)
        terminal: Terminal = request.user
        if data["paid_at"] is not None:
            # Refuse what the purchase would refuse, rather than preview it.
            services.paid_at_check(data["paid_at"], timezone.now())
        identified = None
        if data["member"].strip():
            identified = member_resolve(value=data["member"], terminal=terminal, paid_at=data["paid_at"])
        preview = services.purchase_preview(
            identified=identified, store=terminal.store, amount=data["amount"], points_to_use=data["points_to_use"]
        )
        return Response(self.PreviewOutputSerializer(preview).data)


class RefundCreateApi(APIView):
    """Refund all or part of a purchase of this store."""

    authentication_classes = TERMINAL_AUTHENTICATION
    permission_classes = [IsTerminal]

    class RefundInputSerializer(serializers.Serializer):
        refund_no = ReceiptField()
        amount = _money_field()

    class RefundOutputSerializer(serializers.Serializer):
        receipt_no = serializers.CharField()
        refund_no = serializers.CharField()
        amount = serializers.DecimalField(max_digits=12, decimal_places=2)
        points_reversed = serializers.IntegerField()
        points_returned = serializers.IntegerField()
        clawback = serializers.IntegerField()
        coupons_restored = serializers.ListField(child=serializers.CharField())
        refundable_left = serializers.DecimalField(max_digits=12, decimal_places=2)
        balance = serializers.IntegerField()

    @extend_schema(
        operation_id="terminal_refund_create",
        tags=["terminal"],
        parameters=[IDEMPOTENCY_HEADER],
        request=RefundInputSerializer,
        responses={201: RefundOutputSerializer, **errors(400, 401, 404, 409, 422)},
    )
    def post(self, request: Request, receipt_no: str) -> HttpResponse:
        data = _valid(self.RefundInputSerializer, request)
        terminal: Terminal = request.user

        def operation() -> tuple[int, Any]:
            result = services.purchase_refund(
                store=terminal.store,
                terminal=terminal,
                receipt_no=_receipt_from_path(receipt_no),
                refund_no=data["refund_no"],
                amount=data["amount"],
            )
            refund = result.refund
            purchase = refund.purchase
            return 201, self.RefundOutputSerializer(
                {
                    "receipt_no": purchase.receipt_no,
                    "refund_no": refund.refund_no,
                    "amount": refund.amount,
                    "points_reversed": refund.points_reversed,
                    "points_returned": refund.points_returned,
                    "clawback": refund.clawback,
                    "coupons_restored": result.coupons_restored,
                    "refundable_left": purchase.amount - purchase.refunded_amount - refund.amount,
                    "balance": result.balance,
                }
            ).data

        return idempotent(request, scope=f"terminal:{terminal.pk}", operation=operation)


# -----------------------------------------------------------------------------
# Member API
# -----------------------------------------------------------------------------
class EntryOutputSerializer(serializers.ModelSerializer):
    store = serializers.CharField(source="store.name", allow_null=True, default=None)
    receipt_no = serializers.CharField(source="purchase.receipt_no", allow_null=True, default=None)

    class Meta:
        model = PointsEntry
        fields = ["id", "kind", "points", "balance_after", "source", "store", "receipt_no", "reason", "created_at"]


class MeLedgerApi(APIView):
    """The member's points history, newest first."""

    authentication_classes = [MemberTokenAuthentication]
    permission_classes = [IsMember]
    pagination_class = StandardPagination  # documents the paginated envelope in the schema

    class LedgerFilterSerializer(serializers.Serializer):
        kind = serializers.MultipleChoiceField(choices=PointsEntry.Kind.choices, required=False)
        date_from = serializers.DateField(required=False)
        date_to = serializers.DateField(required=False)
        page = serializers.IntegerField(min_value=1, required=False)
        page_size = serializers.IntegerField(min_value=1, max_value=100, required=False)

    @extend_schema(
        operation_id="me_ledger",
        tags=["member"],
        parameters=[LedgerFilterSerializer],
        responses={200: EntryOutputSerializer(many=True), **errors(400, 401, 404)},
    )
    def get(self, request: Request) -> Response:
        filters = self.LedgerFilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        params = dict(filters.validated_data)
        query: dict[str, Any] = {}
        if params.get("kind"):
            query["kind"] = list(params["kind"])
        for name in ("date_from", "date_to"):
            if params.get(name):
                query[name] = params[name].isoformat()
        entries = selectors.entry_list(member=request.user, filters=query)
        paginator = StandardPagination()
        page = paginator.paginate_queryset(entries, request, view=self)
        return paginator.get_paginated_response(EntryOutputSerializer(page, many=True).data)


class MeCheckInApi(APIView):
    """Daily check-in: points once per day."""

    authentication_classes = [MemberTokenAuthentication]
    permission_classes = [IsMember]

    class CheckInOutputSerializer(serializers.Serializer):
        points = serializers.IntegerField()
        balance = serializers.IntegerField()
        day = serializers.DateField()

    @extend_schema(
        operation_id="me_check_in",
        tags=["member"],
        parameters=[IDEMPOTENCY_HEADER],
        request=None,
        responses={201: CheckInOutputSerializer, **errors(401, 409, 422)},
    )
    def post(self, request: Request) -> HttpResponse:
        member: Member = request.user

        def operation() -> tuple[int, Any]:
            entry = services.member_check_in(member=member)
            return 201, {
                "points": entry.points,
                "balance": entry.balance_after,
                "day": timezone.localtime(entry.created_at).date(),
            }

        return idempotent(request, scope=f"member:{member.pk}", operation=operation)


class MeClaimApi(APIView):
    """Claim points for a receipt recorded without the member."""

    authentication_classes = [MemberTokenAuthentication]
    permission_classes = [IsMember]

    class ClaimInputSerializer(serializers.Serializer):
        store = serializers.CharField(max_length=32)
        receipt_no = ReceiptField()

    @extend_schema(
        operation_id="me_claim",
        tags=["member"],
        parameters=[IDEMPOTENCY_HEADER],
        request=ClaimInputSerializer,
        responses={201: PurchaseOutputSerializer, **errors(400, 401, 404, 409, 422)},
    )
    def post(self, request: Request) -> HttpResponse:
        data = _valid(self.ClaimInputSerializer, request)
        member: Member = request.user

        def operation() -> tuple[int, Any]:
            store = Store.objects.filter(code=data["store"]).first()
            if store is None:
                raise UnknownStore(store=data["store"])
            result = services.purchase_claim(member=member, store=store, receipt_no=data["receipt_no"])
            return 201, purchase_output(result)

        return idempotent(request, scope=f"member:{member.pk}", operation=operation)


# -----------------------------------------------------------------------------
# Operator API
# -----------------------------------------------------------------------------
class AdjustmentOutputSerializer(serializers.ModelSerializer):
    member_no = serializers.CharField(source="member.member_no")
    balance_after = serializers.IntegerField(source="entry.balance_after", allow_null=True, default=None)

    class Meta:
        model = PointsAdjustment
        fields = ["id", "member_no", "points", "reason", "status", "balance_after", "created_at", "decided_at"]


class OperatorPermission(BasePermission):
    """Staff with the permission to add points adjustments."""

    def has_permission(self, request: Request, view: APIView) -> bool:
        user = request.user
        return bool(
            user is not None
            and getattr(user, "is_staff", False)
            and user.is_active
            and user.has_perm("points.add_pointsadjustment")
        )


class AdjustmentCreateApi(APIView):
    """Adjust a member's points with a reason (large ones wait for a second operator)."""

    permission_classes = [OperatorPermission]

    class AdjustmentInputSerializer(serializers.Serializer):
        member_no = serializers.CharField(max_length=16)
        points = serializers.IntegerField(min_value=-(10**8), max_value=10**8)
        reason = serializers.CharField(max_length=255)

    @extend_schema(
        operation_id="operator_adjustment_create",
        tags=["operator"],
        parameters=[IDEMPOTENCY_HEADER],
        request=AdjustmentInputSerializer,
        responses={201: AdjustmentOutputSerializer, **errors(400, 401, 403, 404, 409, 422)},
    )
    def post(self, request: Request) -> HttpResponse:
        data = _valid(self.AdjustmentInputSerializer, request)

        def operation() -> tuple[int, Any]:
            member = Member.objects.filter(member_no=data["member_no"]).first()
            if member is None:
                raise MemberNotFound()
            adjustment = services.adjustment_request(
                member=member, points=data["points"], reason=data["reason"], by_user=request.user
            )
            return 201, AdjustmentOutputSerializer(adjustment).data

        return idempotent(request, scope=f"user:{request.user.pk}", operation=operation)


class ApproverPermission(BasePermission):
    """Staff who may decide adjustments (the same permission as admin's approve)."""

    def has_permission(self, request: Request, view: APIView) -> bool:
        user = request.user
        return bool(
            user is not None
            and getattr(user, "is_staff", False)
            and user.is_active
            and user.has_perm("points.change_pointsadjustment")
        )


class AdjustmentApproveApi(APIView):
    """A second operator approves a pending adjustment."""

    permission_classes = [ApproverPermission]

    @extend_schema(
        operation_id="operator_adjustment_approve",
        tags=["operator"],
        request=None,
        responses={200: AdjustmentOutputSerializer, **errors(401, 403, 404, 409)},
    )
    def post(self, request: Request, pk: int) -> Response:
        adjustment = PointsAdjustment.objects.filter(pk=pk).first()
        if adjustment is None:
            raise NotFound()
        with transaction.atomic(durable=True):
            adjustment = services.adjustment_approve(adjustment=adjustment, by_user=request.user)
        return Response(AdjustmentOutputSerializer(adjustment).data)
