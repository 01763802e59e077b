"""Benefit catalogue, exchange, member coupons and till write-off."""

from __future__ import annotations

from typing import Any

import segno
from django.http import HttpResponse
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from campaigns import selectors
from campaigns.errors import BenefitNotFound, CouponNotFound
from campaigns.models import Benefit, Coupon
from campaigns.services.coupons import benefit_exchange_in_transaction, coupon_code_new, coupon_write_off, reason_text
from loyalty.api.authentication import TERMINAL_AUTHENTICATION, MemberTokenAuthentication
from loyalty.api.bodies import represent
from loyalty.api.idempotency import idempotent
from loyalty.api.pagination import StandardPagination
from loyalty.api.permissions import IsMember, IsTerminal
from loyalty.api.schema import errors
from loyalty.sql import select_one
from loyalty.throttle import failures_counted
from members.apis import _valid
from members.models import Member, Terminal
from points.apis import IDEMPOTENCY_HEADER, ReceiptField


class CouponOutputSerializer(serializers.Serializer):
    code = serializers.CharField()
    benefit_id = serializers.IntegerField()
    name = serializers.CharField()
    kind = serializers.CharField()
    value = serializers.DecimalField(max_digits=10, decimal_places=2)
    min_spend = serializers.DecimalField(max_digits=10, decimal_places=2)
    cash_price = serializers.DecimalField(max_digits=10, decimal_places=2)
    status = serializers.ChoiceField(choices=Coupon.Status.choices)
    source = serializers.CharField()
    valid_from = serializers.DateTimeField()
    valid_until = serializers.DateTimeField()
    issued_at = serializers.DateTimeField()
    written_off_at = serializers.DateTimeField(allow_null=True)
    written_off_store = serializers.CharField(allow_null=True)
    written_off_receipt = serializers.CharField(allow_blank=True)
    qr_svg = serializers.CharField(required=False, help_text="The code as a QR image (SVG), for issued coupons.")


def coupon_qr_svg(code: str) -> str:
    return segno.make(code, error="m").svg_inline(scale=5, border=2)


def coupon_output(coupon: Coupon, *, with_qr: bool = False, qr_svg: str = "") -> dict[str, Any]:
    """The coupon as the member API shows it; ``qr_svg``: its QR image when already drawn."""
    benefit = coupon.benefit
    data = {
        "code": coupon.code,
        "benefit_id": benefit.pk,
        "name": benefit.name,
        "kind": benefit.kind,
        "value": benefit.value,
        "min_spend": benefit.min_spend,
        "cash_price": benefit.cash_price,
        "status": coupon.status,
        "source": coupon.source,
        "valid_from": coupon.valid_from,
        "valid_until": coupon.valid_until,
        "issued_at": coupon.issued_at,
        "written_off_at": coupon.written_off_at,
        "written_off_store": coupon.written_off_store.name if coupon.written_off_store_id else None,
        "written_off_receipt": coupon.written_off_receipt,
    }
    if with_qr and coupon.status == Coupon.Status.ISSUED:
        data["qr_svg"] = qr_svg or coupon_qr_svg(coupon.code)
    return represent(CouponOutputSerializer, data)


class BenefitOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    description = serializers.CharField()
    kind = serializers.CharField()
    value = serializers.DecimalField(max_digits=10, decimal_places=2)
    min_spend = serializers.DecimalField(max_digits=10, decimal_places=2)
    points_price = serializers.IntegerField()
    cash_price = serializers.DecimalField(max_digits=10, decimal_places=2)
    stock_left = serializers.IntegerField(allow_null=True)
    available = serializers.BooleanField()
    unavailable_reason = serializers.CharField(allow_null=True, help_text="Stable code: tier, out_of_stock, points…")
    unavailable_text = serializers.CharField(allow_null=True)


class BenefitListApi(APIView):
    """The catalogue as this member may use it, with why not when not."""

    authentication_classes = [MemberTokenAuthentication]
    permission_classes = [IsMember]

    @extend_schema(
        operation_id="benefit_list", tags=["member"], responses={200: BenefitOutputSerializer(many=True), **errors(401)}
    )
    def get(self, request: Request) -> Response:
        rows = []
        for benefit, reason in selectors.benefit_catalogue(member=request.user):
            rows.append(
                {
                    "id": benefit.pk,
                    "name": benefit.name,
                    "description": benefit.description,
                    "kind": benefit.kind,
                    "value": benefit.value,
                    "min_spend": benefit.min_spend,
                    "points_price": benefit.points_price,
                    "cash_price": benefit.cash_price,
                    "stock_left": None if benefit.total_stock is None else benefit.total_stock - benefit.issued_count,
                    "available": reason is None,
                    "unavailable_reason": reason,
                    "unavailable_text": reason_text(reason) if reason else None,
                }
            )
        return Response(BenefitOutputSerializer(rows, many=True).data)


class BenefitExchangeApi(APIView):
    """Exchange points for a coupon of this benefit."""

    authentication_classes = [MemberTokenAuthentication]
    permission_classes = [IsMember]

    @extend_schema(
        operation_id="benefit_exchange",
        tags=["member"],
        parameters=[IDEMPOTENCY_HEADER],
        request=None,
        responses={201: CouponOutputSerializer, **errors(401, 404, 409, 422)},
    )
    def post(self, request: Request, pk: int) -> HttpResponse:
        member: Member = request.user

        def operation() -> tuple[int, Any]:
            benefit = select_one(Benefit, pk=pk, is_active=True)
            if benefit is None:
                raise BenefitNotFound()
            # The code and its QR image are made before the member's account
            # lock, which every exchange of theirs waits for until commit.
            code = coupon_code_new()
            qr_svg = coupon_qr_svg(code)
            coupon = benefit_exchange_in_transaction(benefit=benefit, member=member, code=code)
            return 201, coupon_output(coupon, with_qr=True, qr_svg=qr_svg)

        return idempotent(request, scope=f"member:{member.pk}", operation=operation)


class MeCouponListApi(APIView):
    """The member's coupons, newest first, filterable by status."""

    authentication_classes = [MemberTokenAuthentication]
    permission_classes = [IsMember]
    pagination_class = StandardPagination  # documents the paginated envelope in the schema

    class CouponFilterSerializer(serializers.Serializer):
        status = serializers.ChoiceField(choices=Coupon.Status.choices, required=False)
        page = serializers.IntegerField(min_value=1, required=False)
        page_size = serializers.IntegerField(min_value=1, max_value=100, required=False)

    @extend_schema(
        operation_id="me_coupons",
        tags=["member"],
        parameters=[CouponFilterSerializer],
        responses={200: CouponOutputSerializer(many=True), **errors(400, 401, 404)},
    )
    def get(self, request: Request) -> Response:
        filters = self.CouponFilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        coupons = selectors.coupon_list(member=request.user, status=filters.validated_data.get("status"))
        coupons = coupons.select_related("written_off_store")
        paginator = StandardPagination()
        page = paginator.paginate_queryset(coupons, request, view=self)
        return paginator.get_paginated_response([coupon_output(c, with_qr=True) for c in page])


class CouponWriteOffApi(APIView):
    """Write off a coupon at the till, once."""

    authentication_classes = TERMINAL_AUTHENTICATION
    permission_classes = [IsTerminal]

    class WriteOffInputSerializer(serializers.Serializer):
        receipt_no = ReceiptField(required=False, allow_blank=True, default="")

    @extend_schema(
        operation_id="terminal_coupon_write_off",
        tags=["terminal"],
        parameters=[
            IDEMPOTENCY_HEADER,
            OpenApiParameter("code", location=OpenApiParameter.PATH, description="Coupon code"),
        ],
        request=WriteOffInputSerializer,
        responses={200: CouponOutputSerializer, **errors(400, 401, 403, 404, 409, 410, 422, 429)},
    )
    def post(self, request: Request, code: str) -> HttpResponse:
        data = _valid(self.WriteOffInputSerializer, request)
        terminal: Terminal = request.user

        def operation() -> tuple[int, Any]:
            with failures_counted(kind="coupon", terminal=terminal, errors=CouponNotFound, reason="not_found"):
                coupon = coupon_write_off(
                    code=code, store=terminal.store, terminal=terminal, receipt_no=data["receipt_no"]
                )
            return 200, coupon_output(coupon)

        return idempotent(request, scope=f"terminal:{terminal.pk}", operation=operation)
