"""Renders every API error as ``{"error": {"code", "message", "detail"}}``.

Handles ``LoyaltyError`` and DRF's and Django's own exceptions; anything else
stays a 500 (logged by Django), never a guessed code.
"""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import DatabaseError, InterfaceError, OperationalError
from django.http import Http404
from django.utils.translation import gettext as _
from rest_framework import exceptions
from rest_framework.response import Response
from rest_framework.views import set_rollback

from loyalty.errors import LoyaltyError, RequestTooLarge, ServiceUnavailable
from loyalty.throttle import blocks_save

logger = logging.getLogger(__name__)

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


def _database_unavailable(exc: Exception) -> bool:
    """The database went away (restart, crash, failover). psycopg2 raises
    OperationalError for most of it; but when every session is ended because
    another server process crashed, the next statement of a session that was
    between statements fails with the bare DatabaseError, without SQLSTATE
    ("server closed the connection unexpectedly"). Errors the server reports
    always carry an SQLSTATE and psycopg2's own usage errors are subclasses,
    so the bare class without one means the connection was lost. (Django's
    atomic() may have reconnected by now: the connection can look healthy.)"""
    if isinstance(exc, (OperationalError, InterfaceError)):
        return True
    return type(exc) is DatabaseError and getattr(exc.__cause__, "pgcode", None) is None


def _request_refusal(exc: Exception) -> Exception:
    """Django's refusals to read a request (SuspiciousOperation, which Django
    itself would answer as an HTML 400) as errors of this API."""
    if isinstance(exc, RequestDataTooBig):
        # A body over DATA_UPLOAD_MAX_MEMORY_SIZE.
        return RequestTooLarge(max_bytes=settings.DATA_UPLOAD_MAX_MEMORY_SIZE)
    if isinstance(exc, (TooManyFieldsSent, TooManyFilesSent)):
        # More query or form fields than DATA_UPLOAD_MAX_NUMBER_FIELDS.
        return exceptions.ParseError(_("The request has too many fields."))
    return exc


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    headers: dict[str, str] = {}
    exc = _request_refusal(exc)
    if isinstance(exc, LoyaltyError):
        set_rollback()
        # A terminal blocked by this failure: its transaction is rolled back now.
        blocks_save(getattr(context.get("request"), "_user", None))
        if isinstance(exc, ServiceUnavailable):
            headers["Retry-After"] = "1"
        if exc.code == "too_many_attempts" and "retry_after" in exc.params:
            headers["Retry-After"] = str(exc.params["retry_after"])
        return Response(error_body(exc.code, exc.render_message(), exc.detail), status=exc.http_status, headers=headers)
    if _database_unavailable(exc):
        # The database went away mid-request (restart, crash, failover): a
        # clean, retryable 503. The transaction was rolled back, or (connection
        # lost during COMMIT) committed with its Idempotency-Key, which a retry
        # with the same key then finds: either way nothing is half-written.
        logger.warning("database unavailable, answered 503: %s: %s", type(exc).__name__, " ".join(str(exc).split()))
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
