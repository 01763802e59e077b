"""Renders every API error as ``{"error": {"code", "message", "detail"}}``.

Handles ``LoyaltyError`` and DRF's and Django's own exceptions; anything else
stays a 500 (logged by Django), never a guessed code.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import DatabaseError, InterfaceError, OperationalError
from django.http import Http404
from django.utils.translation import gettext as _
from rest_framework import exceptions
from rest_framework.response import Response
from rest_framework.views import set_rollback

from loyalty.errors import LoyaltyError, ServiceUnavailable

_DRF_CODES: dict[type[exceptions.APIException], str] = {
    exceptions.ParseError: "malformed_request",
    exceptions.AuthenticationFailed: "authentication_failed",
    exceptions.NotAuthenticated: "not_authenticated",
    exceptions.PermissionDenied: "permission_denied",
    exceptions.NotFound: "not_found",
    exceptions.MethodNotAllowed: "method_not_allowed",
    exceptions.NotAcceptable: "not_acceptable",
    exceptions.UnsupportedMediaType: "unsupported_media_type",
    exceptions.Throttled: "too_many_attempts",
}


def error_body(code: str, message: str, detail: Any = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "detail": detail if detail is not None else {}}}


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    headers: dict[str, str] = {}
    if isinstance(exc, LoyaltyError):
        set_rollback()
        if isinstance(exc, ServiceUnavailable):
            headers["Retry-After"] = "1"
        if exc.code == "too_many_attempts" and "retry_after" in exc.params:
            headers["Retry-After"] = str(exc.params["retry_after"])
        return Response(error_body(exc.code, exc.render_message(), exc.detail), status=exc.http_status, headers=headers)
    if isinstance(exc, (OperationalError, InterfaceError)):
        # The database went away mid-request (restart, failover): a clean,
        # retryable 503; the transaction was rolled back, nothing was written.
        set_rollback()
        unavailable = ServiceUnavailable()
        return Response(
            error_body(unavailable.code, unavailable.render_message()), status=503, headers={"Retry-After": "1"}
        )
    if isinstance(exc, DatabaseError):
        return None
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    elif isinstance(exc, DjangoValidationError):
        exc = exceptions.ValidationError(detail={"non_field_errors": exc.messages})

    if isinstance(exc, exceptions.ValidationError):
        set_rollback()
        return Response(
            error_body("invalid_input", _("The request contains invalid values."), exc.detail),
            status=400,
        )
    if isinstance(exc, exceptions.APIException):
        set_rollback()
        code = _DRF_CODES.get(type(exc)) or str(getattr(exc, "default_code", "error"))
        if isinstance(exc, exceptions.Throttled) and exc.wait is not None:
            headers["Retry-After"] = str(int(exc.wait))
        if getattr(exc, "auth_header", None):
            headers["WWW-Authenticate"] = exc.auth_header  # type: ignore[attr-defined]
        return Response(error_body(code, str(exc.detail)), status=exc.status_code, headers=headers)
    return None
