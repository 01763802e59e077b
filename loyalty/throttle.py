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
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

from django.conf import settings
from django.core import cache as django_cache
from django.core.cache import cache, caches
from django.core.cache.backends.redis import RedisCache

from loyalty.errors import TooManyAttempts

logger = logging.getLogger(__name__)


def _key(kind: str, terminal_id: int) -> str:
    return f"{kind}-failures:{terminal_id}"


@lru_cache(maxsize=64)
def _reader(backend: Any) -> Any:
    """One Redis client per cache backend (Django's makes a new one per call:
    0.1 ms of CPU each, on every identify and purchase)."""
    return backend.get_client(write=False)


def _failures(key: str, kind: str) -> int | None:
    """The failures counted under ``key``; None when Redis is down (logged)."""
    try:
        backend = caches["default"] if cache is django_cache.cache else cache  # (tests replace ``cache``)
        if not isinstance(backend, RedisCache):  # e.g. a local-memory cache
            return backend.get(key, 0)
        # Django's Redis backend stores integers as plain numbers (what incr() counts).
        value = _reader(backend._cache).get(backend.make_and_validate_key(key))
        return int(value) if value is not None else 0
    except Exception as exc:  # Redis down: keep working, unthrottled
        logger.warning("%s throttle unavailable (%s); not throttling", kind, exc)
        return None


def _count(key: str, kind: str, window: int) -> None:
    try:
        if not cache.add(key, 1, timeout=window):
            cache.incr(key)
    except Exception as exc:  # Redis down: the failure is logged by the caller, not counted
        logger.warning("%s throttle unavailable (%s); failure not counted", kind, exc)


def failures_check(*, kind: str, terminal: object) -> None:
    """Raise ``TooManyAttempts`` when ``terminal`` has failed too often at ``kind``."""
    failures = _failures(_key(kind, terminal.pk), kind)  # type: ignore[attr-defined]
    if failures is not None and failures >= settings.LOYALTY_IDENTIFY_FAILURES_LIMIT:
        raise TooManyAttempts(retry_after=settings.LOYALTY_IDENTIFY_FAILURES_WINDOW_SECONDS)


def failure_record(*, kind: str, terminal: object, reason: str) -> None:
    """Count one failed attempt, and log it with the terminal and store."""
    store = getattr(getattr(terminal, "store", None), "code", "-")
    logger.warning("%s failed: reason=%s terminal=%s store=%s", kind, reason, terminal.pk, store)  # type: ignore[attr-defined]
    _count(_key(kind, terminal.pk), kind, settings.LOYALTY_IDENTIFY_FAILURES_WINDOW_SECONDS)  # type: ignore[attr-defined]


@contextmanager
def failures_counted(
    *, kind: str, terminal: object, errors: type[Exception] | tuple[type[Exception], ...], reason: str
) -> Iterator[None]:
    """Refuse a throttled ``terminal`` first, then count ``errors`` raised in the block
    as failed attempts at ``kind`` (and let them go on)."""
    failures_check(kind=kind, terminal=terminal)
    try:
        yield
    except errors:
        failure_record(kind=kind, terminal=terminal, reason=reason)
        raise


# -----------------------------------------------------------------------------
# Staff sign-in (admin and clerk console)
# -----------------------------------------------------------------------------
def _login_key(username: str, ip: str) -> str:
    # Hashed: a user name may hold any character, and cache keys may not.
    digest = hashlib.sha256(f"{username.strip().casefold()}\n{ip}".encode()).hexdigest()[:32]
    return f"login-failures:{digest}"


def login_throttled(*, username: str, ip: str) -> bool:
    """Whether ``username`` from ``ip`` has failed to sign in too often in the window."""
    failures = _failures(_login_key(username, ip), "login")
    return failures is not None and failures >= settings.LOYALTY_LOGIN_FAILURES_LIMIT


def login_failure_record(*, username: str, ip: str) -> None:
    """Count one failed sign-in, and log it with the user name and address."""
    logger.warning("login failed: username=%s ip=%s", username[:150], ip)
    _count(_login_key(username, ip), "login", settings.LOYALTY_LOGIN_FAILURES_WINDOW_SECONDS)


def login_failures_clear(*, username: str, ip: str) -> None:
    """A successful sign-in starts the count again."""
    try:
        cache.delete(_login_key(username, ip))
    except Exception as exc:  # Redis down: nothing was counted either
        logger.warning("login throttle unavailable (%s); count not cleared", exc)
