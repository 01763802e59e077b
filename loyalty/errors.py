"""The one error hierarchy: every refusal the product makes has a stable code.

POS clients branch on ``code``; ``message`` is a translated template (never an
f-string) formatted with ``params``; ``detail`` carries machine-readable context.
``loyalty.api.exception_handler`` renders these as
``{"error": {"code", "message", "detail"}}`` with ``http_status``.
"""

from __future__ import annotations

from typing import Any

from django.utils.translation import gettext_lazy as _


class LoyaltyError(Exception):
    code: str = "error"
    http_status: int = 400
    message: Any = _("The request could not be completed.")

    def __init__(self, message: Any = None, *, detail: dict[str, Any] | None = None, **params: Any) -> None:
        if message is not None:
            self.message = message
        self.detail = detail or {}
        self.params = params
        super().__init__(self.code)

    def render_message(self) -> str:
        text = str(self.message)
        return text % self.params if self.params else text

    def __str__(self) -> str:
        return f"{self.code}: {self.render_message()}"


class InvalidInput(LoyaltyError):
    code = "invalid_input"
    http_status = 400
    message = _("The request contains invalid values.")


class NotFound(LoyaltyError):
    code = "not_found"
    http_status = 404
    message = _("Not found.")


class Forbidden(LoyaltyError):
    code = "permission_denied"
    http_status = 403
    message = _("You are not allowed to do this.")


class Conflict(LoyaltyError):
    code = "conflict"
    http_status = 409
    message = _("The request conflicts with the current state.")


class TooManyAttempts(LoyaltyError):
    code = "too_many_attempts"
    http_status = 429
    message = _("Too many failed attempts. Wait %(retry_after)s seconds and try again.")


class RequestTooLarge(LoyaltyError):
    code = "request_too_large"
    http_status = 413
    message = _("The request body is larger than %(max_bytes)s bytes.")


class ServiceUnavailable(LoyaltyError):
    code = "service_unavailable"
    http_status = 503
    message = _("The service is temporarily unavailable. Retry with the same Idempotency-Key.")


ERROR_MODULES = (
    "loyalty.errors",
    "loyalty.api.idempotency",
    "members.errors",
    "members.imports",
    "points.errors",
    "points.imports",
    "campaigns.errors",
    "campaigns.services.batches",
)


def error_catalogue() -> list[tuple[str, int, str]]:
    """Every stable error code with its HTTP status and English message, sorted."""
    import importlib

    from django.utils import translation

    for module in ERROR_MODULES:
        importlib.import_module(module)

    def subclasses(cls: type) -> list[type]:
        found = []
        for sub in cls.__subclasses__():
            found.append(sub)
            found.extend(subclasses(sub))
        return found

    rows: dict[str, tuple[str, int, str]] = {}
    with translation.override("en"):
        for cls in subclasses(LoyaltyError):
            rows.setdefault(cls.code, (cls.code, cls.http_status, str(cls.message)))
    return sorted(rows.values())


def error_catalogue_markdown() -> str:
    lines = [
        "# Error codes",
        "",
        "Every refusal of the API is `{\"error\": {\"code\", \"message\", \"detail\"}}` with one of these",
        "stable codes (the message is translated to the request's language; `%(name)s` parts are filled in).",
        "Generated from the code by `python scripts/error_codes.py`; a test keeps this file in step.",
        "Besides these: `invalid_input` (400, field errors in `detail`), `malformed_request`, `not_authenticated`,",
        "`authentication_failed` (401), `permission_denied` (403), `not_found` (404), `method_not_allowed` (405),",
        "`not_acceptable` (406), `unsupported_media_type` (415) and `service_unavailable` (503, retry with the same",
        "Idempotency-Key).",
        "",
        "| code | HTTP | message |",
        "|---|---|---|",
    ]
    for code, status, message in error_catalogue():
        lines.append(f"| `{code}` | {status} | {message.replace('|', '/')} |")
    return "\n".join(lines) + "\n"
