"""The error envelope and the stable error codes, as tests check them.

Every refusal of the API is ``{"error": {"code", "message", "detail"}}`` with a
code of the catalogue: the ``LoyaltyError`` classes (``error_catalogue()``,
written to docs/errors.md) and the codes the exception handler gives DRF's own
exceptions (listed in docs/errors.md too).
"""

from __future__ import annotations

import json
from typing import Any

from loyalty.api.exception_handler import _DRF_CODES
from loyalty.errors import error_catalogue


def error_codes() -> frozenset[str]:
    """Every stable code a client may receive."""
    return frozenset(code for code, _status, _message in error_catalogue()) | {"invalid_input", *_DRF_CODES.values()}


def envelope_problem(status: int, content_type: str, content: bytes) -> str | None:
    """Why a 4xx/5xx answer is not a proper error envelope, or None when it is."""
    if not content_type.startswith("application/json"):
        return f"{status} answered as {content_type!r}, not JSON: {content[:200]!r}"
    try:
        body: Any = json.loads(content)
    except ValueError:
        return f"{status} body is not JSON: {content[:200]!r}"
    if not isinstance(body, dict) or set(body) != {"error"} or not isinstance(body["error"], dict):
        return f"{status} body is not the error envelope: {body!r}"[:500]
    error = body["error"]
    if set(error) != {"code", "message", "detail"}:
        return f"{status} error has the keys {sorted(error)}, not code/message/detail"
    if error["code"] not in error_codes():
        return f"{status} error code {error['code']!r} is not in the catalogue (docs/errors.md)"
    if not isinstance(error["message"], str) or not error["message"]:
        return f"{status} error {error['code']!r} has no message"
    if not isinstance(error["detail"], (dict, list)):
        return f"{status} error detail is {type(error['detail']).__name__}, not an object"
    return None
