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
