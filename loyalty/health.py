"""``GET /healthz``: database, broker and beat, 200 when all are healthy, else 503."""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from loyalty.models import Heartbeat

logger = logging.getLogger(__name__)


def _check_database() -> dict[str, Any]:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:  # any driver failure means "down"; reported, not hidden
        logger.warning("healthz: database check failed: %s", exc)
        return {"ok": False, "error": str(exc)}
    return {"ok": True}


def _check_broker() -> dict[str, Any]:
    from loyalty.celery import app

    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
    except Exception as exc:  # kombu raises many kinds; all mean "unreachable"
        logger.warning("healthz: broker check failed: %s", exc)
        return {"ok": False, "error": str(exc)}
    return {"ok": True}


def _check_beat() -> dict[str, Any]:
    try:
        beat = Heartbeat.objects.filter(name="beat").first()
    except Exception as exc:  # the database check reports the cause
        return {"ok": False, "error": str(exc)}
    if beat is None:
        return {"ok": False, "last_heartbeat": None}
    age = (timezone.now() - beat.at).total_seconds()
    return {
        "ok": age <= settings.LOYALTY_HEARTBEAT_MAX_AGE_SECONDS,
        "last_heartbeat": beat.at.isoformat(),
        "age_seconds": round(age, 1),
    }


def _ledger_check() -> dict[str, Any]:
    """The last nightly ``check_ledger`` result (informational: a violation
    needs an operator, but the service itself is up)."""
    try:
        last = Heartbeat.objects.filter(name="check_ledger").first()
    except Exception as exc:  # the database check reports the cause
        return {"ok": False, "error": str(exc)}
    if last is None:
        return {"ok": None, "last_run": None}
    return {
        "ok": bool(last.detail.get("ok")),
        "last_run": last.at.isoformat(),
        "violations": last.detail.get("violations"),
    }


@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    checks = {"database": _check_database(), "broker": _check_broker()}
    checks["beat"] = _check_beat() if checks["database"]["ok"] else {"ok": False}
    healthy = all(check["ok"] for check in checks.values())
    body = {"status": "ok" if healthy else "unhealthy", "checks": checks}
    if checks["database"]["ok"]:
        body["ledger"] = _ledger_check()
    return JsonResponse(body, status=200 if healthy else 503)
