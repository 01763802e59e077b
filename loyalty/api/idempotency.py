"""``Idempotency-Key`` for every POST that changes points or coupons.

The key row is inserted in the same durable transaction as the change:

- the first request inserts it, runs the operation and stores the exact
  response bytes; a rollback (any error) removes the key with the change, so a
  retry after a failure runs again and nothing is half-done;
- a concurrent request with the same key blocks on the key's unique index
  until the first commits, then finds the stored response;
- a retry with the same key and body gets the stored response byte for byte;
  with another body, 422 ``idempotency_key_reused``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

from django.db import connection, transaction
from django.http import HttpResponse
from django.utils.translation import gettext_lazy as _
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request

from loyalty.errors import InvalidInput, LoyaltyError
from loyalty.models import IdempotencyKey
from loyalty.sql import execute

HEADER = "HTTP_IDEMPOTENCY_KEY"
MAX_KEY_LENGTH = 128


class IdempotencyKeyReused(LoyaltyError):
    code = "idempotency_key_reused"
    http_status = 422
    message = _("This Idempotency-Key was already used with a different request.")


class InvalidIdempotencyKey(InvalidInput):
    code = "invalid_idempotency_key"
    message = _("The Idempotency-Key header must be 1 to 128 printable ASCII characters.")


def _render(status: int, data: Any) -> HttpResponse:
    return HttpResponse(JSONRenderer().render(data), status=status, content_type="application/json")


def request_fingerprint(request: Request) -> str:
    body = json.dumps(request.data, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(f"{request.method} {request.path}\n{body}".encode()).hexdigest()


def idempotent(
    request: Request,
    *,
    scope: str,
    operation: Callable[[], tuple[int, Any]],
    first: Callable[[], tuple[int, Any] | None] | None = None,
) -> HttpResponse:
    """Run ``operation`` (returning ``(status, data)``) once per key in ``scope``,
    in one durable transaction with the key row. ``first``: without a key, tried
    before, outside any transaction (a path that commits on its own, such as the
    till's one-statement purchase); its ``(status, data)`` is the response, or
    with None ``operation`` runs as usual."""
    key = request.META.get(HEADER)
    if key is None:
        answer = first() if first is not None else None
        if answer is not None:
            return _render(*answer)
        with transaction.atomic(durable=True):
            status, data = operation()
        return _render(status, data)
    if not key or len(key) > MAX_KEY_LENGTH or not key.isascii() or not key.isprintable():
        raise InvalidIdempotencyKey()
    fingerprint = request_fingerprint(request)
    with transaction.atomic(durable=True):
        with connection.cursor() as cursor:
            execute(
                cursor,
                "INSERT INTO loyalty_idempotencykey (scope, key, request_hash, created_at) "
                "VALUES (%s, %s, %s, now()) ON CONFLICT (scope, key) DO NOTHING RETURNING id",
                [scope, key, fingerprint],
            )
            row = cursor.fetchone()
        if row is None:
            stored = IdempotencyKey.objects.get(scope=scope, key=key)
            if stored.request_hash != fingerprint:
                raise IdempotencyKeyReused()
            response = HttpResponse(bytes(stored.body), status=stored.status_code, content_type="application/json")
            response["Idempotent-Replayed"] = "true"
            return response
        status, data = operation()
        response = _render(status, data)
        IdempotencyKey.objects.filter(pk=row[0]).update(status_code=status, body=response.content)
    return response
