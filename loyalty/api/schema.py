"""Shared OpenAPI pieces: the error envelope and the auth schemes."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.utils import OpenApiResponse, inline_serializer
from rest_framework import serializers

ErrorSerializer = inline_serializer(
    name="Error",
    fields={
        "error": inline_serializer(
            name="ErrorBody",
            fields={
                "code": serializers.CharField(help_text="Stable snake_case code clients branch on."),
                "message": serializers.CharField(help_text="Human text in the request's language."),
                "detail": serializers.JSONField(help_text="Machine-readable context."),
            },
        )
    },
)


def errors(*statuses: int) -> dict[int, OpenApiResponse]:
    return {status: OpenApiResponse(ErrorSerializer) for status in statuses}


class TerminalApiKeyScheme(OpenApiAuthenticationExtension):
    target_class = "loyalty.api.authentication.TerminalApiKeyAuthentication"
    name = "TerminalApiKey"

    def get_security_definition(self, auto_schema):  # type: ignore[no-untyped-def]
        return {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": "`Api-Key <key>` of one terminal (see `create_terminal`).",
        }


class MemberTokenScheme(OpenApiAuthenticationExtension):
    target_class = "loyalty.api.authentication.MemberTokenAuthentication"
    name = "MemberToken"

    def get_security_definition(self, auto_schema):  # type: ignore[no-untyped-def]
        return {"type": "http", "scheme": "bearer", "description": "Member token from /api/v1/auth/wechat."}


class ClerkSessionScheme(OpenApiAuthenticationExtension):
    target_class = "loyalty.api.authentication.ClerkSessionAuthentication"
    name = "ClerkSession"

    def get_security_definition(self, auto_schema):  # type: ignore[no-untyped-def]
        return {
            "type": "apiKey",
            "in": "cookie",
            "name": "sessionid",
            "description": "The clerk console's session (a clerk bound to a store), with X-CSRFToken.",
        }


# -----------------------------------------------------------------------------
# Post-processing hooks (SPECTACULAR_SETTINGS["POSTPROCESSING_HOOKS"])
# -----------------------------------------------------------------------------
def _error_response() -> dict:
    return {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}, "description": ""}


def postprocess_common_errors(result: dict, generator: object, request: object, public: bool) -> dict:
    """Declare the refusals the framework can answer for any operation, not
    only those its view names: 400 (``malformed_request``: body not JSON, too
    deep, too many fields; ``invalid_idempotency_key``), 413
    (``request_too_large``) and 415 (``unsupported_media_type``) for every
    operation with a body or an Idempotency-Key, and 503
    (``service_unavailable``) for every operation, which a client retries."""
    for operations in result.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            has_body = "requestBody" in operation
            has_key = any(p.get("in") == "header" and p.get("name") == "Idempotency-Key" for p in operation.get("parameters", []))
            statuses = ["503"]
            if has_body or has_key:
                statuses += ["400", "413", "415"]
            for status in statuses:
                responses.setdefault(status, _error_response())
    return result


# OpenAPI links: which response value feeds which later request. They document
# the till's and the mini-program's flows for client authors, and drive
# schemathesis's stateful tests (tests/test_fuzz_schema.py).
# operationId -> status -> link name -> link
LINKS: dict[str, dict[str, dict[str, dict]]] = {
    "me_code": {
        "200": {
            "IdentifyByCode": {"operationId": "terminal_identify", "requestBody": {"code": "$response.body#/code"}},
            "PreviewWithCode": {
                "operationId": "terminal_purchase_preview",
                "requestBody": {"member": "$response.body#/code"},
            },
            "PurchaseWithCode": {
                "operationId": "terminal_purchase_create",
                "requestBody": {"member": "$response.body#/code"},
            },
        }
    },
    "me": {
        "200": {
            "IdentifyByMemberNo": {
                "operationId": "terminal_identify",
                "requestBody": {"code": "$response.body#/member_no"},
            },
            "AdjustMember": {
                "operationId": "operator_adjustment_create",
                "requestBody": {"member_no": "$response.body#/member_no"},
            },
        }
    },
    "terminal_member_enrol": {
        status: {
            "IdentifyEnrolled": {
                "operationId": "terminal_identify",
                "requestBody": {"code": "$response.body#/member_no"},
            },
            "PurchaseForEnrolled": {
                "operationId": "terminal_purchase_create",
                "requestBody": {"member": "$response.body#/member_no"},
            },
        }
        for status in ("200", "201")
    },
    "terminal_identify": {
        "200": {
            "PurchaseForIdentified": {
                "operationId": "terminal_purchase_create",
                "requestBody": {"member": "$response.body#/member_no"},
            },
            "WriteOffUsableCoupon": {
                "operationId": "terminal_coupon_write_off",
                "parameters": {"path.code": "$response.body#/coupons/0/code"},
            },
        }
    },
    "terminal_purchase_create": {
        "201": {
            "RefundPurchase": {
                "operationId": "terminal_refund_create",
                "parameters": {"path.receipt_no": "$response.body#/receipt_no"},
            },
        }
    },
    "benefit_list": {
        "200": {
            "ExchangeBenefit": {
                "operationId": "benefit_exchange",
                "parameters": {"path.id": "$response.body#/0/id"},
            },
        }
    },
    "benefit_exchange": {
        "201": {
            "WriteOffExchanged": {
                "operationId": "terminal_coupon_write_off",
                "parameters": {"path.code": "$response.body#/code"},
            },
        }
    },
    "me_coupons": {
        "200": {
            "WriteOffListed": {
                "operationId": "terminal_coupon_write_off",
                "parameters": {"path.code": "$response.body#/results/0/code"},
            },
        }
    },
    "operator_adjustment_create": {
        "201": {
            "ApproveAdjustment": {
                "operationId": "operator_adjustment_approve",
                "parameters": {"path.id": "$response.body#/id"},
            },
        }
    },
    "auth_wechat": {
        "200": {
            "RegisterWithSession": {
                "operationId": "auth_register",
                "requestBody": {"wechat_session": "$response.body#/wechat_session"},
            },
        }
    },
}


def postprocess_links(result: dict, generator: object, request: object, public: bool) -> dict:
    """Add ``LINKS`` to the responses of the operations in the schema."""
    present = {
        operation.get("operationId")
        for operations in result.get("paths", {}).values()
        for operation in operations.values()
    }
    for operations in result.get("paths", {}).values():
        for operation in operations.values():
            for status, links in LINKS.get(operation.get("operationId"), {}).items():
                response = operation.get("responses", {}).get(status)
                if response is None:
                    continue
                usable = {name: link for name, link in links.items() if link["operationId"] in present}
                if usable:
                    response.setdefault("links", {}).update(usable)
    return result
