"""Failed-attempt counters: per terminal (brute force of member and coupon
codes) and per user name and client address (staff sign-in to the admin and
the clerk console).

Counters live in the cache (Redis) for a window. Past the limit the sign-in
form refuses even the right password until the window ends. A terminal past
the limit is blocked for the window in its own row (``Terminal.<kind>_blocked_until``):
authentication reads that row at every request anyway, so a till's lookups
check the block without a cache round trip (Redis is only written, on a
failure); every request of a blocked terminal gets 429, a right code too, and
operators see and can lift the block in admin. The block is written after the
failed request's transaction has rolled back (by the API's exception handler),
at once when there is no transaction.

If Redis is down both keep working unthrottled (logged), rather than refusing
every customer at the till or locking every operator and clerk out: passwords
are still checked, and each check costs a slow password hash; blocks already
written stay.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core import cache as django_cache
from django.core.cache import cache, caches
from django.core.cache.backends.redis import RedisCache
from django.db import connection
from django.utils import timezone

from loyalty.errors import TooManyAttempts

if TYPE_CHECKING:
    from members.models import Terminal

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


def _count(key: str, kind: str, window: int) -> int | None:
    """Count one failure under ``key``: the failures in the window so far, None when Redis is down."""
    try:
        if cache.add(key, 1, timeout=window):
            return 1
        return cache.incr(key)
    except Exception as exc:  # Redis down: the failure is logged by the caller, not counted
        logger.warning("%s throttle unavailable (%s); failure not counted", kind, exc)
        return None


KINDS = ("identify", "coupon")
_PENDING = "_loyalty_blocks_pending"


def blocked_field(kind: str) -> str:
    """The terminal's column that holds its block at ``kind``."""
    if kind not in KINDS:
        raise ValueError(f"unknown throttle kind {kind!r}")
    return f"{kind}_blocked_until"


def failures_check(*, kind: str, terminal: Terminal) -> None:
    """Raise ``TooManyAttempts`` while ``terminal`` is blocked at ``kind`` (no query:
    the block is a column of the terminal's row)."""
    until = getattr(terminal, blocked_field(kind))
    if until is not None:
        remaining = (until - timezone.now()).total_seconds()
        if remaining > 0:
            raise TooManyAttempts(retry_after=math.ceil(remaining))


def failure_record(*, kind: str, terminal: Terminal, reason: str) -> None:
    """Count one failed attempt, and log it with the terminal and store. At the
    limit the terminal is blocked for the window: written at once outside a
    transaction, else when ``blocks_save`` runs after the rollback."""
    field = blocked_field(kind)
    store = getattr(getattr(terminal, "store", None), "code", "-")
    logger.warning("%s failed: reason=%s terminal=%s store=%s", kind, reason, terminal.pk, store)
    window = settings.LOYALTY_IDENTIFY_FAILURES_WINDOW_SECONDS
    failures = _count(_key(kind, terminal.pk), kind, window)
    if failures is None or failures < settings.LOYALTY_IDENTIFY_FAILURES_LIMIT:
        return
    until = timezone.now() + timedelta(seconds=window)
    setattr(terminal, field, until)
    terminal.__dict__.setdefault(_PENDING, {})[field] = until
    logger.warning("%s blocked until %s: terminal=%s store=%s", kind, until.isoformat(), terminal.pk, store)
    if not connection.in_atomic_block:
        blocks_save(terminal)


def failures_clear(*, kind: str, terminal: Terminal) -> None:
    """Forget ``terminal``'s failures at ``kind`` (a block lifted by an operator
    starts the count again), logged."""
    blocked_field(kind)
    logger.warning("%s block lifted: terminal=%s", kind, terminal.pk)
    try:
        cache.delete(_key(kind, terminal.pk))
    except Exception as exc:  # Redis down: the count ends with its window
        logger.warning("%s throttle unavailable (%s); failures not cleared", kind, exc)


def blocks_save(terminal: object) -> None:
    """Write the blocks ``failure_record`` set on ``terminal`` (after the failed
    request's transaction rolled back: the API's exception handler calls it)."""
    pending = getattr(terminal, "__dict__", {}).pop(_PENDING, None)
    if pending:
        type(terminal).objects.filter(pk=terminal.pk).update(**pending)  # type: ignore[attr-defined]


@contextmanager
def failures_counted(
    *, kind: str, terminal: Terminal, errors: type[Exception] | tuple[type[Exception], ...], reason: str
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
