"""Outbound webhooks: signed events for the chain's ERP/CRM.

Events: ``points_changed`` (every ledger entry), ``tier_changed``,
``coupon_written_off``, ``member_enrolled`` (and ``ping``, sent from admin to
test an endpoint). ``webhook_emit`` runs inside the transaction of the change
it reports: it writes one ``WebhookDelivery`` per active endpoint subscribed to
the event (an empty ``events`` list subscribes to all), all with one event id,
and queues their delivery after commit — a rolled-back change emits nothing.

The request
-----------
::

    POST <endpoint url>                      (http or https only; redirects are not followed)
    Content-Type: application/json; charset=utf-8
    X-Loyalty-Event: points_changed
    X-Loyalty-Event-Id: 5f0c…                (uuid4; the same on every retry)
    X-Loyalty-Timestamp: 1735689600          (Unix seconds of this attempt)
    X-Loyalty-Signature: sha256=<hex>
    X-Loyalty-Delivery-Attempt: 1            (informational, not signed)

    {"created_at": "2025-01-01T00:00:00+00:00", "data": {...}, "event": "points_changed", "id": "5f0c…"}

The body is compact JSON with sorted keys, identical on every retry; ``id``
is the event id and ``created_at`` the time of the change (UTC).

The signature
-------------
``X-Loyalty-Signature`` is ``"sha256=" + hex(HMAC_SHA256(key=secret,
msg=timestamp + "." + raw_body))``, where ``secret`` is the endpoint's signing
secret (UTF-8), ``timestamp`` the ``X-Loyalty-Timestamp`` header as sent
(ASCII digits) and ``raw_body`` the request body bytes exactly as received.
A receiver recomputes it over the raw body (before parsing any JSON), compares
in constant time, rejects a timestamp more than 5 minutes from its clock
(replays), and ignores an ``X-Loyalty-Event-Id`` it has already processed
(retries after a lost answer). ``webhook_signature_verify`` does the first
three steps.

Delivery
--------
A 2xx answer marks the delivery ``delivered``. Anything else — another status,
a timeout (``LOYALTY_WEBHOOK_TIMEOUT_SECONDS``), a refused connection — is
retried after 1, 2, 4, 8… minutes (at most 6 hours apart) until
``LOYALTY_WEBHOOK_MAX_ATTEMPTS`` attempts, then the delivery is ``failed``;
admin shows every delivery with its attempts, last HTTP status and error, and
"retry" sends a failed one again with the same event id. A delivery is made
under its row lock (``SKIP LOCKED``) and its status re-read under it, so a
task run twice never posts a delivered event again.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import time
import urllib.error
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone
from django.utils.translation import gettext

from campaigns.channels import ChannelError, http_post, json_body
from campaigns.models import Coupon, WebhookDelivery, WebhookEndpoint
from campaigns.services.notifications import SEND_FAN_OUT_SIZE, _jsonable, backoff_delay
from loyalty.handoff import Coalescer
from loyalty.sql import execute
from members.models import Member, Tier

logger = logging.getLogger(__name__)
Status = WebhookDelivery.Status

POINTS_CHANGED = "points_changed"
TIER_CHANGED = "tier_changed"
COUPON_WRITTEN_OFF = "coupon_written_off"
MEMBER_ENROLLED = "member_enrolled"
PING = "ping"
EVENTS = (POINTS_CHANGED, TIER_CHANGED, COUPON_WRITTEN_OFF, MEMBER_ENROLLED)
SIGNATURE_TOLERANCE_SECONDS = 300
USER_AGENT = "loyalty-webhooks/1"


# -----------------------------------------------------------------------------
# Signing
# -----------------------------------------------------------------------------
def webhook_secret_new() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


def webhook_signature(*, secret: str, timestamp: str, body: bytes) -> str:
    """``sha256=<hex HMAC-SHA256 of "<timestamp>.<body>" with secret>``."""
    digest = hmac.new(secret.encode(), timestamp.encode("ascii") + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def webhook_signature_verify(
    *,
    secret: str,
    body: bytes,
    timestamp: str,
    signature: str,
    now: float | None = None,
    tolerance_seconds: int = SIGNATURE_TOLERANCE_SECONDS,
) -> bool:
    """What a receiver does: a fresh timestamp and a matching signature."""
    try:
        sent = int(timestamp)
    except (TypeError, ValueError):
        return False
    if abs((time.time() if now is None else now) - sent) > tolerance_seconds:
        return False
    return hmac.compare_digest(webhook_signature(secret=secret, timestamp=timestamp, body=body), signature or "")


# -----------------------------------------------------------------------------
# Emit
# -----------------------------------------------------------------------------
_SUBSCRIBED_SQL = (
    f"SELECT id FROM {WebhookEndpoint._meta.db_table} "  # noqa: S608 - model table
    "WHERE is_active AND (events = '[]'::jsonb OR events @> %s::jsonb) ORDER BY id"
)
# Subscriptions a caller read with another statement (``subscribed_column``),
# for the code it runs inside ``subscriptions_known``.
_known: ContextVar[dict[str, list[int]] | None] = ContextVar("loyalty_webhook_subscriptions", default=None)


def _subscribed(event: str) -> list[int]:
    """The active endpoints that take ``event`` (all events when their list is
    empty). Plain SQL: every ledger entry at the till asks, unless its caller
    read them already (``subscriptions_known``)."""
    known = _known.get()
    if known is not None and event in known:
        return known[event]
    with connection.cursor() as cursor:
        execute(cursor, _SUBSCRIBED_SQL, [json.dumps([event])])
        return [row[0] for row in cursor.fetchall()]


def subscribed_column(event: str) -> tuple[str, list[Any]]:
    """The endpoints that take ``event`` as one SQL expression (an array of
    ids) and its parameters, to read in a statement the caller makes anyway
    (the till's account lock); then run the work inside ``subscriptions_known``."""
    return f"ARRAY({_SUBSCRIBED_SQL})", [json.dumps([event])]


@contextmanager
def subscriptions_known(known: dict[str, list[int]]) -> Iterator[None]:
    """Within this block ``_subscribed(event)`` answers from ``known`` (read in
    the same transaction by the caller) for the events it holds."""
    token = _known.set(known)
    try:
        yield
    finally:
        _known.reset(token)


def _envelope(event: str, data: dict[str, Any], at: datetime) -> tuple[uuid.UUID, dict[str, Any]]:
    event_id = uuid.uuid4()
    return event_id, {"id": str(event_id), "event": event, "created_at": at.isoformat(), "data": _jsonable(data)}


def _create(
    event: str, items: list[tuple[uuid.UUID, dict[str, Any]]], endpoint_ids: list[int]
) -> list[WebhookDelivery]:
    now = timezone.now()
    deliveries = WebhookDelivery.objects.bulk_create(
        [
            WebhookDelivery(
                endpoint_id=endpoint_id, event_id=event_id, event=event, payload=envelope, next_attempt_at=now
            )
            for event_id, envelope in items
            for endpoint_id in endpoint_ids
        ],
        batch_size=1000,
    )
    ids = [delivery.pk for delivery in deliveries]
    if ids:
        transaction.on_commit(lambda: _deliver_soon_gathered.add(ids))
    return deliveries


def webhook_emit(*, event: str, payload: dict[str, Any], at: datetime | None = None) -> list[WebhookDelivery]:
    """Record ``event`` for every active endpoint subscribed to it, with one new
    event id, and deliver after commit. Call it inside the transaction of the
    change it reports. Two statements (one when no endpoint listens), no
    savepoint. Raises ``ValueError`` for an unknown event."""
    if event not in EVENTS:
        raise ValueError(f"unknown webhook event {event!r}")
    endpoint_ids = _subscribed(event)
    if not endpoint_ids:
        return []
    return _create(event, [_envelope(event, payload, at or timezone.now())], endpoint_ids)


def webhooks_emit_many(*, event: str, payloads: Iterable[dict[str, Any]], at: datetime | None = None) -> int:
    """``webhook_emit`` for many events of one kind (batch jobs): one event id
    per payload, bulk-inserted. Returns the number of deliveries."""
    if event not in EVENTS:
        raise ValueError(f"unknown webhook event {event!r}")
    endpoint_ids = _subscribed(event)
    if not endpoint_ids:
        return 0
    at = at or timezone.now()
    return len(_create(event, [_envelope(event, payload, at) for payload in payloads], endpoint_ids))


def webhook_ping(*, endpoint: WebhookEndpoint) -> WebhookDelivery:
    """A ``ping`` event to one endpoint (subscribed or not), to test it from admin."""
    data = {"endpoint": endpoint.name, "message": "ping"}
    (delivery,) = _create(PING, [_envelope(PING, data, timezone.now())], [endpoint.pk])
    return delivery


def _deliver_soon(delivery_ids: list[int]) -> None:
    from campaigns.tasks_messaging import webhook_deliver_many_task, webhook_deliver_task

    try:
        if len(delivery_ids) <= 3:  # one endpoint's slowness never delays another's
            for delivery_id in delivery_ids:
                webhook_deliver_task.delay(delivery_id)
            return
        for start in range(0, len(delivery_ids), SEND_FAN_OUT_SIZE):
            webhook_deliver_many_task.delay(delivery_ids[start : start + SEND_FAN_OUT_SIZE])
    except Exception as exc:  # broker unavailable: the every-minute sweep delivers them
        logger.warning("could not queue %s webhook deliveries (%s); the sweep will", len(delivery_ids), exc)


# Deliveries committed within a fraction of a second go to the workers together,
# from a background thread (loyalty/handoff.py).
_deliver_soon_gathered = Coalescer("webhooks", _deliver_soon)


@transaction.atomic
def webhook_delivery_retry(*, delivery: WebhookDelivery) -> bool:
    """An operator sends a failed delivery again (same event id, attempts
    start again). Returns False, changing nothing, when it is not failed."""
    updated = WebhookDelivery.objects.filter(pk=delivery.pk, status=Status.FAILED).update(
        status=Status.PENDING, attempts=0, next_attempt_at=timezone.now()
    )
    delivery.refresh_from_db()
    if updated:
        transaction.on_commit(lambda: _deliver_soon_gathered.add([delivery.pk]))
    return bool(updated)


# -----------------------------------------------------------------------------
# Event payloads (called by the services, inside their transaction)
# -----------------------------------------------------------------------------
def _member_no(obj: Any, member_id: int | None) -> str | None:
    if member_id is None:
        return None
    descriptor = type(obj).member
    if descriptor.is_cached(obj):
        return obj.member.member_no
    return Member.objects.values_list("member_no", flat=True).get(pk=member_id)


def _entry_data(entry: Any, member_no: str | None) -> dict[str, Any]:
    return {
        "member_no": member_no,
        "entry_id": entry.pk,
        "kind": entry.kind,
        "points": entry.points,
        "balance_after": entry.balance_after,
        "source": entry.source,
        "store": entry.store.code if entry.store_id else None,
        "terminal_id": entry.terminal_id,
        "receipt_no": entry.purchase.receipt_no if entry.purchase_id else None,
        "refund_no": entry.refund.refund_no if entry.refund_id else None,
        "reference": entry.reference,
        "reason": entry.reason,
        "at": entry.created_at,
    }


def webhook_points_changed(entry: Any) -> list[WebhookDelivery]:
    """``points_changed`` for one ledger entry (every kind: earn, bonus, redeem,
    expire, adjust, reverse). No personal data: the member number identifies."""
    endpoint_ids = _subscribed(POINTS_CHANGED)
    if not endpoint_ids:  # the common case: one query, the member is not even read
        return []
    data = _entry_data(entry, _member_no(entry, entry.member_id))
    return _create(POINTS_CHANGED, [_envelope(POINTS_CHANGED, data, timezone.now())], endpoint_ids)


def webhooks_points_changed_many(*, entry_ids: Iterable[int]) -> int:
    """``points_changed`` for many entries (the nightly expiry): set-based."""
    from points.models import PointsEntry

    if not _subscribed(POINTS_CHANGED):
        return 0
    entries = (
        PointsEntry.objects.filter(pk__in=list(entry_ids))
        .select_related("member", "store", "purchase", "refund")
        .order_by("pk")
    )
    return webhooks_emit_many(
        event=POINTS_CHANGED, payloads=(_entry_data(entry, entry.member.member_no) for entry in entries)
    )


def webhook_tier_changed(
    member: Member, from_tier: Tier | None, to_tier: Tier, *, reason: str = "", at: datetime | None = None
) -> list[WebhookDelivery]:
    """``tier_changed`` (upgrade, downgrade, manual; nothing at enrolment)."""
    if from_tier is None or from_tier.pk == to_tier.pk:
        return []
    payload = {
        "member_no": member.member_no,
        "from": from_tier.code,
        "to": to_tier.code,
        "direction": "up" if to_tier.rank > from_tier.rank else "down",
        "reason": reason,
        "at": at or member.tier_since,
    }
    return webhook_emit(event=TIER_CHANGED, payload=payload)


def webhook_coupon_written_off(coupon: Coupon) -> list[WebhookDelivery]:
    """``coupon_written_off``: the code (spent, no longer a secret), where and when."""
    payload = {
        "code": coupon.code,
        "coupon_id": coupon.pk,
        "benefit_id": coupon.benefit_id,
        "benefit": coupon.benefit.name,
        "member_no": _member_no(coupon, coupon.member_id),
        "store": coupon.written_off_store.code if coupon.written_off_store_id else None,
        "terminal_id": coupon.written_off_terminal_id,
        "receipt_no": coupon.written_off_receipt,
        "at": coupon.written_off_at,
    }
    return webhook_emit(event=COUPON_WRITTEN_OFF, payload=payload)


def webhook_member_enrolled(member: Member) -> list[WebhookDelivery]:
    """``member_enrolled``: member number, channel, store and tier. Phone, name
    and birthday are not sent: the ERP reads them through the operator API."""
    payload = {
        "member_no": member.member_no,
        "channel": member.channel,
        "registration_store": member.registration_store.code if member.registration_store_id else None,
        "tier": member.tier.code,
        "marketing_consent": member.marketing_consent,
        "referrer_member_no": member.referrer.member_no if member.referrer_id else None,
        "at": member.created_at,
    }
    return webhook_emit(event=MEMBER_ENROLLED, payload=payload)


# -----------------------------------------------------------------------------
# Deliver
# -----------------------------------------------------------------------------
def _lock_due(delivery_id: int, now: datetime) -> WebhookDelivery | None:
    return (
        WebhookDelivery.objects.select_for_update(of=("self",), no_key=True, skip_locked=True)
        .select_related("endpoint")
        .filter(pk=delivery_id, status=Status.PENDING, next_attempt_at__lte=now)
        .first()
    )


def webhook_deliver(*, delivery_id: int, now: datetime | None = None) -> str | None:
    """Post one delivery if it is pending and due. Returns its status after
    the attempt, or None when there was nothing to do (delivered, failed, not
    due, or being posted by another worker). Safe to run any number of times."""
    now = now or timezone.now()
    with transaction.atomic():
        delivery = _lock_due(delivery_id, now)
        if delivery is None:
            return None
        return _attempt(delivery, now)


def webhooks_deliver_many(*, delivery_ids: Iterable[int], now: datetime | None = None) -> Counter[str]:
    outcomes: Counter[str] = Counter()
    for delivery_id in delivery_ids:
        outcomes[webhook_deliver(delivery_id=delivery_id, now=now) or "untouched"] += 1
    return outcomes


def webhooks_deliver_due(*, now: datetime | None = None, limit: int = 500) -> Counter[str]:
    """The beat sweep: post up to ``limit`` due pending deliveries, oldest due first."""
    cutoff = now or timezone.now()
    ids = list(
        WebhookDelivery.objects.filter(status=Status.PENDING, next_attempt_at__lte=cutoff)
        .order_by("next_attempt_at", "pk")
        .values_list("pk", flat=True)[:limit]
    )
    # Without ``now``, each attempt reads the clock (a sweep may take a while).
    outcomes = webhooks_deliver_many(delivery_ids=ids, now=now)
    if ids:
        logger.info("webhook sweep: %s", dict(outcomes))
    return outcomes


def _attempt(delivery: WebhookDelivery, now: datetime) -> str:
    endpoint = delivery.endpoint
    fields = ["status", "attempts", "next_attempt_at", "last_status_code", "last_error", "delivered_at"]
    if not endpoint.is_active:
        delivery.status = Status.FAILED
        delivery.last_error = gettext("The endpoint is disabled.")
        delivery.save(update_fields=fields)
        return delivery.status
    delivery.attempts += 1
    body = json_body(delivery.payload)
    timestamp = str(int(time.time()))
    headers = {
        "Content-Type": "application/json; charset=utf-8",
        "User-Agent": USER_AGENT,
        "X-Loyalty-Event": delivery.event,
        "X-Loyalty-Event-Id": str(delivery.event_id),
        "X-Loyalty-Timestamp": timestamp,
        "X-Loyalty-Signature": webhook_signature(secret=endpoint.secret, timestamp=timestamp, body=body),
        "X-Loyalty-Delivery-Attempt": str(delivery.attempts),
    }
    permanent = False
    try:
        response = http_post(endpoint.url, body=body, headers=headers, timeout=settings.LOYALTY_WEBHOOK_TIMEOUT_SECONDS)
    except ChannelError as exc:  # not an http(s) URL
        delivery.last_status_code, delivery.last_error, permanent = None, str(exc), True
    except (OSError, urllib.error.URLError) as exc:
        delivery.last_status_code = None
        delivery.last_error = gettext("Endpoint unreachable: %(error)s") % {"error": exc}
    else:
        delivery.last_status_code = response.status
        if 200 <= response.status < 300:
            delivery.status, delivery.delivered_at, delivery.last_error = Status.DELIVERED, now, ""
            delivery.save(update_fields=fields)
            return delivery.status
        delivery.last_error = gettext("HTTP %(status)s: %(body)s") % {"status": response.status, "body": response.body}
    if permanent or delivery.attempts >= settings.LOYALTY_WEBHOOK_MAX_ATTEMPTS:
        delivery.status = Status.FAILED
        logger.warning(
            "webhook %s %s to %s failed after %s attempt(s): %s",
            delivery.event,
            delivery.event_id,
            endpoint.name,
            delivery.attempts,
            delivery.last_error,
        )
    else:
        delivery.next_attempt_at = now + backoff_delay(delivery.attempts)
    delivery.save(update_fields=fields)
    return delivery.status
