"""Failed-attempt counters: per terminal (brute force of member and coupon
codes) and per user name and client address (staff sign-in to the admin and
the clerk console).

Counters live in the cache (Redis) for a window; past the limit the terminal
gets 429, and the sign-in form refuses even the right password, until the
window ends. If Redis is down both keep working unthrottled (logged), rather
than refusing every customer at the till or locking every operator and clerk
out: passwords are still checked, and each check costs a slow password hash.
"""

from __future__ import annotations

import hashlib
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


# -----------------------------------------------------------------------------
# Staff sign-in (admin and clerk console)
# -----------------------------------------------------------------------------
def _login_key(username: str, ip: str) -> str:
    # Hashed: a user name may hold any character, and cache keys may not.
    digest = hashlib.sha256(f"{username.strip().casefold()}\n{ip}".encode()).hexdigest()[:32]
    return f"login-failures:{digest}"


def login_throttled(*, username: str, ip: str) -> bool:
    """Whether ``username`` from ``ip`` has failed to sign in too often in the window."""
    try:
        failures = cache.get(_login_key(username, ip), 0)
    except Exception as exc:  # Redis down: sign-in keeps working
        logger.warning("login throttle unavailable (%s); not throttling", exc)
        return False
    return failures >= settings.LOYALTY_LOGIN_FAILURES_LIMIT


def login_failure_record(*, username: str, ip: str) -> None:
    """Count one failed sign-in, and log it with the user name and address."""
    logger.warning("login failed: username=%s ip=%s", username[:150], ip)
    key = _login_key(username, ip)
    try:
        if not cache.add(key, 1, timeout=settings.LOYALTY_LOGIN_FAILURES_WINDOW_SECONDS):
            cache.incr(key)
    except Exception as exc:  # Redis down: logged above, not counted
        logger.warning("login throttle unavailable (%s); failure not counted", exc)


def login_failures_clear(*, username: str, ip: str) -> None:
    """A successful sign-in starts the count again."""
    try:
        cache.delete(_login_key(username, ip))
    except Exception as exc:  # Redis down: nothing was counted either
        logger.warning("login throttle unavailable (%s); count not cleared", exc)
