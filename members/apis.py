"""Terminal and member API of the members app: one APIView per operation."""

from __future__ import annotations

import unicodedata
from decimal import Decimal
from typing import Any

import segno
from django.conf import settings
from django.core import signing
from django.db import transaction
from django.utils import timezone
from drf_spectacular.utils import extend_schema, extend_schema_serializer
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from loyalty.api.authentication import TERMINAL_AUTHENTICATION, MemberTokenAuthentication
from loyalty.api.bodies import decimal2, represent, validated
from loyalty.api.permissions import IsMember, IsTerminal
from loyalty.api.schema import errors
from members import selectors, services
from members.errors import MemberNotFound, WechatSessionInvalid
from members.models import Member, Terminal, Tier
from members.wechat import get_adapter
from points.models import CheckIn

WECHAT_SESSION_SALT = "loyalty.wechat-session"


# -----------------------------------------------------------------------------
# Shared output shapes
# -----------------------------------------------------------------------------
class TierOutputSerializer(serializers.Serializer):
    code = serializers.CharField()
    name = serializers.CharField()
    discount_rate = serializers.DecimalField(max_digits=4, decimal_places=2)
    earn_multiplier = serializers.DecimalField(max_digits=4, decimal_places=2)


class ExpiringPointsSerializer(serializers.Serializer):
    expires_on = serializers.DateField()
    points = serializers.IntegerField()


class PointsSummarySerializer(serializers.Serializer):
    balance = serializers.IntegerField()
    pending = serializers.IntegerField()
    spendable = serializers.IntegerField(required=False, help_text="Balance that can be used now.")
    cash_value = serializers.DecimalField(max_digits=14, decimal_places=2)
    expiring_30d = serializers.IntegerField()
    expiring = ExpiringPointsSerializer(many=True)


class CouponSummarySerializer(serializers.Serializer):
    code = serializers.CharField()
    name = serializers.CharField()
    kind = serializers.CharField()
    value = serializers.DecimalField(max_digits=12, decimal_places=2)
    min_spend = serializers.DecimalField(max_digits=12, decimal_places=2)
    cash_price = serializers.DecimalField(max_digits=12, decimal_places=2)
    valid_until = serializers.DateTimeField()


def points_summary(member: Member) -> dict[str, Any]:
    """Balance and expiry of a member, as the points app computes it."""
    from points.selectors import points_summary_get

    return points_summary_get(member=member)


def tier_output(member: Member) -> dict[str, Any]:
    return tier_output_for(member.tier)


def tier_output_for(tier: Tier) -> dict[str, Any]:
    return {
        "code": tier.code,
        "name": tier.name,
        "discount_rate": tier.discount_rate,
        "earn_multiplier": tier.earn_multiplier,
    }


# -----------------------------------------------------------------------------
# Terminal API
# -----------------------------------------------------------------------------
class TerminalMemberOutputSerializer(serializers.Serializer):
    member_no = serializers.CharField()
    name = serializers.CharField(help_text="Masked, e.g. 王**.")
    phone = serializers.CharField(help_text="Masked, e.g. 138****5678.")
    status = serializers.ChoiceField(choices=Member.Status.choices)
    tier = TierOutputSerializer()
    points = PointsSummarySerializer()
    coupons = CouponSummarySerializer(many=True)
    identified_by = serializers.ChoiceField(choices=["code", "member_no", "phone"])


def terminal_member_output(
    member: Member, terminal: Terminal, identified_by: str, summary: tuple[dict[str, Any], list] | None = None
) -> dict[str, Any]:
    """What the till shows of a member; ``summary``: the till summary if it was
    read with the member (identify), else it is read here."""
    from points.selectors import till_summary_get

    points, coupons = summary if summary is not None else till_summary_get(member=member, store=terminal.store)
    return {
        "member_no": member.member_no,
        "name": member.masked_name,
        "phone": member.masked_phone,
        "status": member.status,
        "tier": tier_output(member),
        "points": points,
        "coupons": coupons if member.status == Member.Status.ACTIVE else [],
        "identified_by": identified_by,
    }


def terminal_member_rendered(output: dict[str, Any]) -> dict[str, Any]:
    """``TerminalMemberOutputSerializer``'s rendering of ``terminal_member_output``,
    built directly: the serializer's walk over its nested fields was 6% of an
    identify's CPU in process (docs/performance.md, session 9). Coupons (timestamps
    in the local time zone) still go through their serializer; a test holds
    the two equal."""
    tier, points = output["tier"], output["points"]
    rendered_points = {"balance": int(points["balance"]), "pending": int(points["pending"])}
    if "spendable" in points:
        rendered_points["spendable"] = int(points["spendable"])
    rendered_points["cash_value"] = decimal2(points["cash_value"])
    rendered_points["expiring_30d"] = int(points["expiring_30d"])
    rendered_points["expiring"] = [
        {"expires_on": item["expires_on"].isoformat(), "points": int(item["points"])} for item in points["expiring"]
    ]
    return {
        "member_no": str(output["member_no"]),
        "name": str(output["name"]),
        "phone": str(output["phone"]),
        "status": str(output["status"]),
        "tier": {
            "code": str(tier["code"]),
            "name": str(tier["name"]),
            "discount_rate": decimal2(tier["discount_rate"]),
            "earn_multiplier": decimal2(tier["earn_multiplier"]),
        },
        "points": rendered_points,
        "coupons": [represent(CouponSummarySerializer, coupon) for coupon in output["coupons"]],
        "identified_by": str(output["identified_by"]),
    }


def identify_body(data: Any) -> dict[str, Any] | None:
    """What ``MemberIdentifyApi.InputSerializer`` makes of a scanned or typed
    value that is plain printable ASCII (a code, member number or phone; the
    serializer took 2% of an identify's CPU in process); None for anything
    else, which the serializer then validates. A test holds the two equal."""
    if type(data) is not dict or len(data) != 1:
        return None
    code = data.get("code")
    if type(code) is not str or not 0 < len(code) <= 64 or not code.isascii() or not code.isprintable():
        return None
    return {"code": code} if code == code.strip() else None


class MemberIdentifyApi(APIView):
    """Scan a member code at the till (or type a member number or phone)."""

    authentication_classes = TERMINAL_AUTHENTICATION
    permission_classes = [IsTerminal]

    @extend_schema_serializer(component_name="MemberIdentifyInput")
    class InputSerializer(serializers.Serializer):
        code = serializers.CharField(max_length=64, help_text="Scanned member code, member number or phone.")

    @extend_schema(
        operation_id="terminal_identify",
        tags=["terminal"],
        request=InputSerializer,
        responses={200: TerminalMemberOutputSerializer, **errors(400, 401, 404, 410, 429)},
    )
    def post(self, request: Request) -> Response:
        from points.selectors import TillSummaryQuery

        data = identify_body(request.data) or _valid(self.InputSerializer, request)
        terminal: Terminal = request.user
        # The till summary comes back in the member's own statement: one round trip.
        summary = TillSummaryQuery(store_id=terminal.store_id, now=timezone.now())
        identified = selectors.member_resolve(value=data["code"], terminal=terminal, along_with=summary)
        member = identified.member
        if identified.by_code:
            by = "code"
        elif member.member_no == data["code"].strip():
            by = "member_no"
        else:
            by = "phone"
        output = terminal_member_output(member, terminal, by, summary=identified.along)
        return Response(terminal_member_rendered(output))


class MemberEnrolApi(APIView):
    """Enrol a walk-in customer by phone, or return the member who has it."""

    authentication_classes = TERMINAL_AUTHENTICATION
    permission_classes = [IsTerminal]

    @extend_schema_serializer(component_name="MemberEnrolInput")
    class InputSerializer(serializers.Serializer):
        phone = serializers.CharField(max_length=32)
        name = serializers.CharField(max_length=50, required=False, allow_blank=True, default="")
        birthday = serializers.DateField(required=False, allow_null=True, default=None)
        gender = serializers.ChoiceField(choices=Member.Gender.choices, required=False, default=Member.Gender.UNKNOWN)
        marketing_consent = serializers.BooleanField(required=False, default=False)
        referral_code = serializers.CharField(
            max_length=12, required=False, allow_blank=True, default="", help_text="Referrer's code, for new members."
        )

        def validate_birthday(self, value: Any) -> Any:
            return _birthday_check(value)

        def validate_name(self, value: str) -> str:
            return _name_check(value)

    @extend_schema(
        operation_id="terminal_member_enrol",
        tags=["terminal"],
        request=InputSerializer,
        responses={
            201: TerminalMemberOutputSerializer,
            200: TerminalMemberOutputSerializer,
            **errors(400, 401, 409),
        },
    )
    def post(self, request: Request) -> Response:
        data = _valid(self.InputSerializer, request)
        terminal: Terminal = request.user
        with transaction.atomic(durable=True):
            referrer = services.referrer_for_code(data.pop("referral_code"))
            member, created = services.member_enrol(
                **data, referrer=referrer, store=terminal.store, channel=Member.Channel.STORE, by_terminal=terminal
            )
        output = terminal_member_rendered(terminal_member_output(member, terminal, "phone"))
        return Response(output, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)


# -----------------------------------------------------------------------------
# Member authentication
# -----------------------------------------------------------------------------
class TokenOutputSerializer(serializers.Serializer):
    registered = serializers.BooleanField()
    token = serializers.CharField(required=False)
    expires_at = serializers.DateTimeField(required=False)
    member_no = serializers.CharField(required=False)
    wechat_session = serializers.CharField(
        required=False, help_text="When not registered: pass to /api/v1/auth/register with the phone."
    )


def _token_response(member: Member, http_status: int = 200) -> Response:
    token, raw = services.member_token_issue(member=member)
    return Response(
        {"registered": True, "token": raw, "expires_at": token.expires_at, "member_no": member.member_no},
        status=http_status,
    )


class WechatLoginApi(APIView):
    """Exchange a WeChat login code for a member token (or a session to register with)."""

    authentication_classes: list[type] = []
    permission_classes: list[type] = []

    @extend_schema_serializer(component_name="WechatLoginInput")
    class InputSerializer(serializers.Serializer):
        code = serializers.CharField(max_length=128)

    @extend_schema(
        operation_id="auth_wechat",
        tags=["member"],
        request=InputSerializer,
        responses={200: TokenOutputSerializer, **errors(400, 401)},
    )
    def post(self, request: Request) -> Response:
        data = _valid(self.InputSerializer, request)
        openid = get_adapter().code_to_openid(data["code"])
        member = Member.objects.filter(wechat_openid=openid).exclude(status=Member.Status.CLOSED).first()
        if member is None:
            session = signing.dumps({"openid": openid}, salt=WECHAT_SESSION_SALT)
            return Response({"registered": False, "wechat_session": session})
        with transaction.atomic(durable=True):
            return _token_response(member)


class MemberRegisterApi(APIView):
    """Bind a WeChat login to a new member, or to the existing member with this phone."""

    authentication_classes: list[type] = []
    permission_classes: list[type] = []

    @extend_schema_serializer(component_name="MemberRegisterInput")
    class InputSerializer(serializers.Serializer):
        wechat_session = serializers.CharField(max_length=512)
        phone = serializers.CharField(max_length=32)
        name = serializers.CharField(max_length=50, required=False, allow_blank=True, default="")
        birthday = serializers.DateField(required=False, allow_null=True, default=None)
        gender = serializers.ChoiceField(choices=Member.Gender.choices, required=False, default=Member.Gender.UNKNOWN)
        marketing_consent = serializers.BooleanField(required=False, default=False)
        referral_code = serializers.CharField(
            max_length=12, required=False, allow_blank=True, default="", help_text="Referrer's code, for new members."
        )

        def validate_birthday(self, value: Any) -> Any:
            return _birthday_check(value)

        def validate_name(self, value: str) -> str:
            return _name_check(value)

    @extend_schema(
        operation_id="auth_register",
        tags=["member"],
        request=InputSerializer,
        responses={201: TokenOutputSerializer, 200: TokenOutputSerializer, **errors(400, 401, 409)},
    )
    def post(self, request: Request) -> Response:
        data = _valid(self.InputSerializer, request)
        try:
            session = signing.loads(
                data.pop("wechat_session"),
                salt=WECHAT_SESSION_SALT,
                max_age=settings.LOYALTY_WECHAT_SESSION_MAX_AGE_SECONDS,
            )
        except signing.BadSignature:
            raise WechatSessionInvalid() from None
        openid = session["openid"]
        with transaction.atomic(durable=True):
            referrer = services.referrer_for_code(data.pop("referral_code"))
            member, created = services.member_enrol(
                **data, referrer=referrer, channel=Member.Channel.MINI_PROGRAM, wechat_openid=None
            )
            member = services.member_bind_wechat(member=member, openid=openid)
            return _token_response(member, status.HTTP_201_CREATED if created else status.HTTP_200_OK)


class MemberLogoutApi(APIView):
    """Sign out: the token of this request stops working at once (the member's
    other devices stay signed in)."""

    authentication_classes = [MemberTokenAuthentication]
    permission_classes = [IsMember]

    @extend_schema(operation_id="auth_logout", tags=["member"], request=None, responses={204: None, **errors(401)})
    def post(self, request: Request) -> Response:
        with transaction.atomic(durable=True):
            services.member_token_revoke(token=request.auth)
        return Response(status=status.HTTP_204_NO_CONTENT)


# -----------------------------------------------------------------------------
# Member API
# -----------------------------------------------------------------------------
class TierProgressSerializer(serializers.Serializer):
    qualifying_spend = serializers.DecimalField(max_digits=14, decimal_places=2)
    next_tier = TierOutputSerializer(allow_null=True)
    next_threshold = serializers.DecimalField(max_digits=14, decimal_places=2, allow_null=True)
    remaining = serializers.DecimalField(max_digits=14, decimal_places=2, allow_null=True)


class MeOutputSerializer(serializers.Serializer):
    member_no = serializers.CharField()
    name = serializers.CharField()
    phone = serializers.CharField()
    gender = serializers.CharField()
    birthday = serializers.DateField(allow_null=True)
    status = serializers.CharField()
    registered_at = serializers.DateTimeField()
    marketing_consent = serializers.BooleanField()
    tier = TierOutputSerializer()
    tier_since = serializers.DateTimeField()
    tier_progress = TierProgressSerializer()
    points = PointsSummarySerializer()
    referral_code = serializers.CharField(help_text="Give it to friends: they enter it when they register.")
    checked_in_today = serializers.BooleanField()


class MeApi(APIView):
    authentication_classes = [MemberTokenAuthentication]
    permission_classes = [IsMember]

    class ProfileInputSerializer(serializers.Serializer):
        name = serializers.CharField(max_length=50, required=False)
        birthday = serializers.DateField(required=False)
        gender = serializers.ChoiceField(choices=Member.Gender.choices, required=False)
        marketing_consent = serializers.BooleanField(required=False)

        def validate_birthday(self, value: Any) -> Any:
            return _birthday_check(value)

        def validate_name(self, value: str) -> str:
            return _name_check(value)

    @extend_schema(operation_id="me", tags=["member"], responses={200: MeOutputSerializer, **errors(401)})
    def get(self, request: Request) -> Response:
        return Response(me_output(request.user))

    @extend_schema(
        operation_id="me_update",
        tags=["member"],
        request=ProfileInputSerializer,
        responses={200: MeOutputSerializer, **errors(400, 401, 409)},
        description="Update the profile. A complete profile (name, birthday, gender) may earn a campaign bonus.",
    )
    def patch(self, request: Request) -> Response:
        data = _valid(self.ProfileInputSerializer, request)
        with transaction.atomic(durable=True):
            member = services.member_update_profile(member=request.user, **data)
        return Response(me_output(member))


def me_output(member: Member) -> dict[str, Any]:
    from points.selectors import qualifying_spend_get

    spend = qualifying_spend_get(member=member)
    next_tier = selectors.tier_next(member.tier)
    progress = {
        "qualifying_spend": spend,
        "next_tier": tier_output_for(next_tier) if next_tier else None,
        "next_threshold": next_tier.threshold if next_tier else None,
        "remaining": max(next_tier.threshold - spend, Decimal("0.00")) if next_tier else None,
    }
    return MeOutputSerializer(
        {
            "member_no": member.member_no,
            "name": member.name,
            "phone": member.phone,
            "gender": member.gender,
            "birthday": member.birthday,
            "status": member.status,
            "registered_at": member.created_at,
            "marketing_consent": member.marketing_consent,
            "referral_code": services.member_referral_code(member=member),
            "checked_in_today": CheckIn.objects.filter(member=member, day=timezone.localdate()).exists(),
            "tier": tier_output(member),
            "tier_since": member.tier_since,
            "tier_progress": progress,
            "points": points_summary(member),
        }
    ).data


class MeCodeOutputSerializer(serializers.Serializer):
    code = serializers.CharField(help_text="18 digits; show as QR and barcode.")
    seconds_to_live = serializers.IntegerField(help_text="Seconds until the next code; refresh before then.")
    step_seconds = serializers.IntegerField()
    qr_svg = serializers.CharField(help_text="The code as a QR image (SVG markup).")


class MeCodeApi(APIView):
    authentication_classes = [MemberTokenAuthentication]
    permission_classes = [IsMember]

    @extend_schema(operation_id="me_code", tags=["member"], responses={200: MeCodeOutputSerializer, **errors(401)})
    def get(self, request: Request) -> Response:
        member: Member = request.user
        if member.status == Member.Status.CLOSED:
            raise MemberNotFound()
        code, ttl = selectors.member_code_current(member=member)
        qr = segno.make(code, error="m", micro=False)
        return Response(
            {
                "code": code,
                "seconds_to_live": ttl,
                "step_seconds": settings.LOYALTY_MEMBER_CODE_STEP_SECONDS,
                "qr_svg": qr.svg_inline(scale=6, border=2),
            }
        )


# -----------------------------------------------------------------------------
# Helpers
# -----------------------------------------------------------------------------
def _valid(serializer_class: type[serializers.Serializer], request: Request) -> dict[str, Any]:
    if not isinstance(request.data, dict):
        from django.utils.translation import gettext as _

        raise serializers.ValidationError({"non_field_errors": [_("Expected a JSON object.")]})
    return validated(serializer_class, request.data)


# Besides letters (any script), combining marks and spaces: the punctuation of
# real names (O'Neil, Jean-Luc, J. Smith, 阿依古丽·买买提).
_NAME_PUNCTUATION = frozenset("'’-.·・")


def _name_check(value: str) -> str:
    """A person's name, as printed on receipts and sent in messages: digits,
    markup (``<script>``), emoji, symbols and control or direction-changing
    characters are refused with a clear error rather than stored."""
    from django.utils.translation import gettext as _

    for char in value:
        category = unicodedata.category(char)
        if category[0] in "LM" or category == "Zs" or char in _NAME_PUNCTUATION:
            continue
        raise serializers.ValidationError(_("Use letters, spaces and ' - . · only in a name."))
    return value


def _birthday_check(value: Any) -> Any:
    from django.utils import timezone
    from django.utils.translation import gettext as _

    if value is None:
        return value
    today = timezone.localdate()
    if value > today or value.year < today.year - 120:
        raise serializers.ValidationError(_("Birthday must be a real date in the past."))
    return value
