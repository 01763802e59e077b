"""Failed-attempt counters per terminal (brute force of member and coupon codes).

Counters live in the cache (Redis) for a window; past the limit the terminal
gets 429 until the window ends. If Redis is down the till keeps working
unthrottled (logged), rather than refusing every customer.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.core.cache import cache

from loyalty.errors import TooManyAttempts

logger = logging.getLogger(__name__)


def _key(kind: str, terminal_id: int) -> str:
    return f"{kind}-failures:{terminal_id}"


def failures_check(*, kind: str, terminal: object) -> None:
    """Raise ``TooManyAttempts`` when ``terminal`` has failed too often at ``kind``."""
    try:
        failures = cache.get(_key(kind, terminal.pk), 0)  # type: ignore[attr-defined]
    except Exception as exc:  # Redis down: keep the till working
        logger.warning("%s throttle unavailable (%s); not throttling", kind, exc)
        return
    if failures >= settings.LOYALTY_IDENTIFY_FAILURES_LIMIT:
        raise TooManyAttempts(retry_after=settings.LOYALTY_IDENTIFY_FAILURES_WINDOW_SECONDS)


def failure_record(*, kind: str, terminal: object, reason: str) -> None:
    """Count one failed attempt, and log it with the terminal and store."""
    store = getattr(getattr(terminal, "store", None), "code", "-")
    logger.warning("%s failed: reason=%s terminal=%s store=%s", kind, reason, terminal.pk, store)  # type: ignore[attr-defined]
    key = _key(kind, terminal.pk)  # type: ignore[attr-defined]
    try:
        if not cache.add(key, 1, timeout=settings.LOYALTY_IDENTIFY_FAILURES_WINDOW_SECONDS):
            cache.incr(key)
    except Exception as exc:  # Redis down: logged above, not counted
        logger.warning("%s throttle unavailable (%s); failure not counted", kind, exc)
