"""Messages to members: the outbox, its sender and the events that fill it.

Nothing is sent twice:

* every message has a ``dedupe_key`` naming the event it is about (unique in
  the database), so the same event enqueued again — a re-run job, a retried
  request — adds nothing;
* a message is sent under its row lock (``FOR NO KEY UPDATE SKIP LOCKED``), its
  status re-read under that lock, and marked sent in the same transaction, so
  a task delivered twice (``acks_late``) or a sweep racing the on-commit task
  finds it sent, or locked and skips it;
* the one window left — the gateway accepted the message and the worker died
  before the commit — is closed by the gateway: every attempt carries the same
  ``Idempotency-Key`` (``outbox:<id>``).

Rules applied when a message is enqueued, and again when it is sent (consent
or status may have changed in between): closed members get nothing, and
marketing messages need ``marketing_consent`` — such messages are kept with
status ``skipped`` and the reason, so admin shows why a member got nothing;
marketing messages also wait for the end of the quiet hours
(``LOYALTY_QUIET_HOURS``, local time), without counting an attempt.

Channel failures are retried after 1, 2, 4, 8, 16… minutes; after
``LOYALTY_MESSAGE_MAX_ATTEMPTS`` attempts the message is ``failed`` (listed in
admin, where "retry" sends it back). A missing configuration or a refusal of
the gateway (4xx) fails it at once.

The text a member reads is rendered at send time with ``gettext`` in the
project's default language (``LANGUAGE_CODE``, zh-hans in production): a
member has no language preference yet. The payload keeps the data (amounts,
dates, names as they were at the event), so the text never changes with later
edits; the coupon code is deliberately not in it (a bearer secret in an SMS
and in logs).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection, transaction
from django.db.models import QuerySet
from django.utils import timezone, translation
from django.utils.translation import gettext, ngettext

from campaigns.channels import ChannelError, OutgoingMessage, RecipientUnavailable, channel_get
from campaigns.models import Coupon, OutboxMessage
from loyalty.handoff import Coalescer
from loyalty.sql import Write, execute
from members.models import Member, Tier

logger = logging.getLogger(__name__)
Kind = OutboxMessage.Kind
Status = OutboxMessage.Status

# Retry delays grow 1, 2, 4, 8… minutes and never exceed this.
MAX_BACKOFF = timedelta(hours=6)
# Ids per task when a job fans out the messages it created.
SEND_FAN_OUT_SIZE = 100
# Members (expiry) or coupons per transaction of the reminder jobs.
REMINDER_BATCH_SIZE = 2000
# Rows per INSERT statement of the set-based enqueue.
INSERT_CHUNK_SIZE = 500
EXPIRY_WARNING_DAYS = 30
EXPIRY_LAST_CHANCE_DAYS = 7
COUPON_EXPIRING_DAYS = 3


# -----------------------------------------------------------------------------
# Rules: quiet hours and backoff
# -----------------------------------------------------------------------------
def _clock(text: str) -> time:
    hour, _, minute = text.strip().partition(":")
    return time(int(hour) % 24, int(minute or 0))


def quiet_hours() -> tuple[time, time] | None:
    """``LOYALTY_QUIET_HOURS`` as (start, end) local times; None when off.

    Format ``"22-8"`` or ``"22:30-08:00"`` (the end is exclusive; a start
    after the end spans midnight); ``""``, ``"off"`` or equal ends disable it.
    Raises ``ImproperlyConfigured`` for anything else."""
    raw = (settings.LOYALTY_QUIET_HOURS or "").strip().lower()
    if raw in ("", "off", "none"):
        return None
    try:
        start_text, end_text = raw.split("-")
        start, end = _clock(start_text), _clock(end_text)
    except ValueError:
        raise ImproperlyConfigured(
            f"LOYALTY_QUIET_HOURS must look like '22-8' or '22:30-08:00', not {raw!r}."
        ) from None
    return None if start == end else (start, end)


def quiet_hours_end(at: datetime) -> datetime | None:
    """When the quiet hours containing ``at`` end (aware), or None if ``at`` is outside them."""
    hours = quiet_hours()
    if hours is None:
        return None
    start, end = hours
    local = timezone.localtime(at)
    clock = local.time()
    if start < end:
        inside, next_day = start <= clock < end, False
    else:  # spans midnight
        inside, next_day = clock >= start or clock < end, clock >= start
    if not inside:
        return None
    day = local.date() + timedelta(days=1 if next_day else 0)
    return datetime.combine(day, end, tzinfo=local.tzinfo)


def backoff_delay(attempts: int) -> timedelta:
    """Wait after the ``attempts``-th failed attempt: 1, 2, 4, 8, 16… minutes."""
    return min(timedelta(minutes=2 ** max(attempts - 1, 0)), MAX_BACKOFF)


def _jsonable(payload: dict[str, Any]) -> dict[str, Any]:
    """Dates, Decimals and UUIDs as strings, as the JSON column will return them."""
    return json.loads(json.dumps(payload, cls=DjangoJSONEncoder))


def _local_day(at: datetime) -> date:
    return timezone.localtime(at).date()


def _last_valid_day(expires_at: datetime) -> date:
    # Points expire at local midnight: the last day they can be used is the day before.
    return (timezone.localtime(expires_at) - timedelta(microseconds=1)).date()


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=timezone.get_current_timezone())


# -----------------------------------------------------------------------------
# Enqueue
# -----------------------------------------------------------------------------
def _channel_name() -> str:
    # Never fails the caller's transaction: an unknown name fails the message
    # at send time, with the reason, and shows in admin.
    return str(settings.LOYALTY_MESSAGE_CHANNEL)[: OutboxMessage._meta.get_field("channel").max_length]


def _skip_reason(member: Member, *, marketing: bool) -> str:
    if member.status == Member.Status.CLOSED:
        return gettext("The member's account is closed.")
    if marketing and not member.marketing_consent:
        return gettext("The member has not accepted marketing messages.")
    return ""


@dataclass(frozen=True)
class _Row:
    member_id: int
    kind: str
    payload: dict[str, Any]
    dedupe_key: str
    next_attempt_at: datetime
    marketing: bool = False
    status: str = Status.PENDING
    last_error: str = ""


_INSERT_COLUMNS = "member_id, kind, channel, dedupe_key, marketing, payload, status, attempts, next_attempt_at, last_error, created_at"


def _insert(rows: list[_Row], writes: list[Write] | None = None) -> dict[str, tuple[int, datetime]]:
    """``INSERT … ON CONFLICT (dedupe_key) DO NOTHING``: one statement, no
    savepoint, and a key queued before (even by a concurrent transaction,
    which this waits for) adds nothing. Returns {dedupe key: (id, created_at)}
    of the rows inserted; due pending ones are handed to workers after commit.
    With ``writes`` (one row) the insert is added to that list for the
    caller's ``loyalty.sql.together`` statement instead, and {} is returned."""
    if not rows:
        return {}
    channel, now = _channel_name(), timezone.now()
    params: list[Any] = []
    for row in rows:
        params += [
            row.member_id,
            row.kind,
            channel,
            row.dedupe_key,
            row.marketing,
            json.dumps(row.payload, cls=DjangoJSONEncoder),
            row.status,
            row.next_attempt_at,
            row.last_error,
            now,
        ]
    values = ", ".join(["(%s, %s, %s, %s, %s, %s::jsonb, %s, 0, %s, %s, %s)"] * len(rows))
    # Only the table name and placeholders are interpolated; values are parameters.
    sql = (
        f"INSERT INTO {OutboxMessage._meta.db_table} ({_INSERT_COLUMNS}) VALUES {values} "  # noqa: S608
        "ON CONFLICT (dedupe_key) DO NOTHING RETURNING id, dedupe_key, created_at"
    )
    if writes is not None:
        if len(rows) != 1:
            raise ValueError("a message written with other rows is one message")

        def done(inserted: tuple | None) -> None:
            if inserted is not None:
                _inserted(rows, {inserted[1]: (inserted[0], inserted[2])}, now)

        writes.append(Write(sql, params, ("id", "dedupe_key", "created_at"), done))
        return {}
    with connection.cursor() as cursor:
        if len(rows) == 1:  # the till's case: prepared (loyalty/sql.py)
            execute(cursor, sql, params)
        else:  # jobs: a statement of its own size, planned once
            cursor.execute(sql, params)
        inserted = {key: (pk, created_at) for pk, key, created_at in cursor.fetchall()}
    _inserted(rows, inserted, now)
    return inserted


def _inserted(rows: list[_Row], inserted: dict[str, tuple[int, datetime]], now: datetime) -> None:
    """After the insert: the due pending messages go to workers after commit."""
    due_now = [
        inserted[row.dedupe_key][0]
        for row in rows
        if row.dedupe_key in inserted and row.status == Status.PENDING and row.next_attempt_at <= now
    ]
    if due_now:
        transaction.on_commit(lambda: _send_soon_gathered.add(due_now))


def message_enqueue(
    *,
    member: Member,
    kind: str,
    payload: dict[str, Any],
    dedupe_key: str,
    marketing: bool = False,
    at: datetime | None = None,
    writes: list[Write] | None = None,
) -> OutboxMessage | None:
    """Queue one message for ``member``, to be sent at ``at`` (now by default)
    through ``LOYALTY_MESSAGE_CHANNEL``, once per ``dedupe_key``.

    Call it inside the transaction of the change it reports: the message
    commits (or rolls back) with it, and sending is queued after commit. One
    INSERT statement (the till's query budget). Returns the new message, or
    None when ``dedupe_key`` was queued before (whatever became of it). A
    closed member, or a marketing message to a member without consent, is
    stored as ``skipped`` with the reason (checked on ``member`` as given, and
    again when sending); a marketing message due in quiet hours waits for
    their end. Raises ``ValueError`` for an unknown kind or an empty key or
    one over 150 characters. With ``writes`` the insert is added to that list
    for the caller's ``loyalty.sql.together`` statement and None is returned."""
    if kind not in Kind.values:
        raise ValueError(f"unknown message kind {kind!r}")
    if not dedupe_key or len(dedupe_key) > OutboxMessage._meta.get_field("dedupe_key").max_length:
        raise ValueError(f"invalid dedupe_key {dedupe_key!r}")
    due = at or timezone.now()
    if marketing:
        due = quiet_hours_end(due) or due
    reason = _skip_reason(member, marketing=marketing)
    row = _Row(
        member_id=member.pk,
        kind=str(kind),
        payload=_jsonable(payload),
        dedupe_key=dedupe_key,
        next_attempt_at=due,
        marketing=marketing,
        status=Status.SKIPPED if reason else Status.PENDING,
        last_error=reason,
    )
    inserted = _insert([row], writes)
    if dedupe_key not in inserted:
        return None
    pk, created_at = inserted[dedupe_key]
    message = OutboxMessage(
        pk=pk,
        member=member,
        kind=row.kind,
        channel=_channel_name(),
        dedupe_key=dedupe_key,
        marketing=marketing,
        payload=row.payload,
        status=row.status,
        last_error=reason,
        next_attempt_at=due,
        created_at=created_at,
    )
    message._state.adding = False
    message._state.db = "default"
    return message


def _insert_many(rows: list[tuple[int, str, dict[str, Any], str]], *, due: datetime) -> int:
    """Set-based enqueue of non-marketing messages (member id, kind, payload,
    dedupe key) in chunks; returns how many were new. Callers exclude closed
    members in their query."""
    created = 0
    for start in range(0, len(rows), INSERT_CHUNK_SIZE):
        chunk = [
            _Row(member_id=member_id, kind=kind, payload=payload, dedupe_key=key, next_attempt_at=due)
            for member_id, kind, payload, key in rows[start : start + INSERT_CHUNK_SIZE]
        ]
        created += len(_insert(chunk))
    return created


def _send_soon(message_ids: list[int]) -> None:
    """After commit: hand the messages to workers; if the broker is down the
    every-minute sweep sends them anyway."""
    from campaigns.tasks_messaging import outbox_send_many_task, outbox_send_task

    try:
        if len(message_ids) == 1:
            outbox_send_task.delay(message_ids[0])
            return
        for start in range(0, len(message_ids), SEND_FAN_OUT_SIZE):
            outbox_send_many_task.delay(message_ids[start : start + SEND_FAN_OUT_SIZE])
    except Exception as exc:  # broker unavailable
        logger.warning("could not queue %s message(s) (%s); the periodic sweep will send them", len(message_ids), exc)


# Messages committed within a fraction of a second go to the workers together,
# from a background thread (loyalty/handoff.py).
_send_soon_gathered = Coalescer("outbox", _send_soon)


@transaction.atomic
def message_retry(*, message: OutboxMessage) -> bool:
    """An operator sends a failed message back to the queue (attempts start
    again). Returns False, changing nothing, when it is not failed."""
    now = timezone.now()
    updated = OutboxMessage.objects.filter(pk=message.pk, status=Status.FAILED).update(
        status=Status.PENDING, attempts=0, next_attempt_at=now
    )
    message.refresh_from_db()
    if updated:
        transaction.on_commit(lambda: _send_soon_gathered.add([message.pk]))
    return bool(updated)


# -----------------------------------------------------------------------------
# Send
# -----------------------------------------------------------------------------
def _lock_due(message_id: int, now: datetime) -> OutboxMessage | None:
    # of=("self",): the member row is read, never locked (the till locks it).
    # SKIP LOCKED: a message another worker is sending is theirs.
    return (
        OutboxMessage.objects.select_for_update(of=("self",), no_key=True, skip_locked=True)
        .select_related("member")
        .filter(pk=message_id, status=Status.PENDING, next_attempt_at__lte=now)
        .first()
    )


def outbox_send(*, message_id: int, now: datetime | None = None) -> str | None:
    """Send one message if it is pending and due. Returns its status after the
    attempt ("pending" when it waits for a retry or the end of quiet hours), or
    None when there was nothing to do (sent, skipped, failed, not due, or being
    sent by another worker). Safe to run any number of times."""
    now = now or timezone.now()
    with transaction.atomic():
        message = _lock_due(message_id, now)
        if message is None:
            return None
        return _attempt(message, now)


def outbox_send_many(*, message_ids: Iterable[int], now: datetime | None = None) -> Counter[str]:
    """``outbox_send`` for each id, one transaction each (a failure or a crash
    never un-sends the messages before it). Returns the count per outcome."""
    outcomes: Counter[str] = Counter()
    for message_id in message_ids:
        outcomes[outbox_send(message_id=message_id, now=now) or "untouched"] += 1
    return outcomes


def outbox_send_due(*, now: datetime | None = None, limit: int = 500) -> Counter[str]:
    """The beat sweep: send up to ``limit`` due pending messages, oldest due
    first (retries that came due, messages created while the broker was down,
    marketing held over quiet hours). Returns the count per outcome."""
    cutoff = now or timezone.now()
    ids = list(
        OutboxMessage.objects.filter(status=Status.PENDING, next_attempt_at__lte=cutoff)
        .order_by("next_attempt_at", "pk")
        .values_list("pk", flat=True)[:limit]
    )
    # Without ``now``, each attempt reads the clock (a sweep may take a while).
    outcomes = outbox_send_many(message_ids=ids, now=now)
    if ids:
        logger.info("outbox sweep: %s", dict(outcomes))
    return outcomes


def _attempt(message: OutboxMessage, now: datetime) -> str:
    """One attempt at ``message`` (locked, pending, due); saves the outcome."""
    member = message.member
    fields = ["status", "attempts", "next_attempt_at", "last_error", "sent_at"]
    reason = _skip_reason(member, marketing=message.marketing)
    if reason:
        message.status, message.last_error = Status.SKIPPED, reason
        message.save(update_fields=fields)
        return message.status
    if message.marketing and (end := quiet_hours_end(now)) is not None:
        message.next_attempt_at = end
        message.save(update_fields=fields)
        return message.status
    message.attempts += 1
    try:
        channel = channel_get(message.channel)
        reference = channel.send(_outgoing(message, member))
    except RecipientUnavailable as exc:
        message.status, message.last_error = Status.SKIPPED, str(exc)
    except ImproperlyConfigured as exc:
        message.status, message.last_error = Status.FAILED, str(exc)
    except ChannelError as exc:
        message.last_error = str(exc)[:2000]
        _retry_or_fail(message, now, permanent=exc.permanent)
    except Exception as exc:  # a channel's own bug or an unexpected network error: retried
        logger.exception("message %s: channel %s raised", message.pk, message.channel)
        message.last_error = repr(exc)[:2000]
        _retry_or_fail(message, now, permanent=False)
    else:
        message.status, message.sent_at, message.last_error = Status.SENT, now, ""
        logger.info("message %s sent through %s (reference %s)", message.pk, message.channel, reference or "-")
    if message.status == Status.FAILED:
        logger.warning("message %s failed after %s attempt(s): %s", message.pk, message.attempts, message.last_error)
    message.save(update_fields=fields)
    return message.status


def _retry_or_fail(message: OutboxMessage, now: datetime, *, permanent: bool) -> None:
    if permanent or message.attempts >= settings.LOYALTY_MESSAGE_MAX_ATTEMPTS:
        message.status = Status.FAILED
        return
    due = now + backoff_delay(message.attempts)
    message.next_attempt_at = (quiet_hours_end(due) or due) if message.marketing else due


def _outgoing(message: OutboxMessage, member: Member) -> OutgoingMessage:
    return OutgoingMessage(
        message_id=message.pk,
        idempotency_key=f"outbox:{message.pk}",
        kind=message.kind,
        text=message_render(message),
        member_no=member.member_no,
        phone=member.phone,
        wechat_openid=member.wechat_openid,
        marketing=message.marketing,
        data=message.payload,
    )


# -----------------------------------------------------------------------------
# Texts (what the member reads)
# -----------------------------------------------------------------------------
def message_render(message: OutboxMessage) -> str:
    """The text of ``message`` in the project's default language."""
    with translation.override(settings.LANGUAGE_CODE):
        return _render(message.kind, message.payload)


def _points_list(items: list[dict[str, Any]]) -> str:
    return gettext("; ").join(
        gettext("%(points)s on %(date)s") % {"points": item["points"], "date": item["date"]} for item in items
    )


def _render(kind: str, data: dict[str, Any]) -> str:
    if kind == Kind.POINTS_EARNED:
        values = {
            "points": data["points"],
            "store": data.get("store") or "",
            "balance": data["balance"],
            "date": data.get("usable_from") or "",
        }
        if values["store"] and values["date"]:
            text = ngettext(
                "You earned %(points)s point at %(store)s, usable from %(date)s. Points balance: %(balance)s.",
                "You earned %(points)s points at %(store)s, usable from %(date)s. Points balance: %(balance)s.",
                values["points"],
            )
        elif values["store"]:
            text = ngettext(
                "You earned %(points)s point at %(store)s. Points balance: %(balance)s.",
                "You earned %(points)s points at %(store)s. Points balance: %(balance)s.",
                values["points"],
            )
        elif values["date"]:
            text = ngettext(
                "You earned %(points)s point, usable from %(date)s. Points balance: %(balance)s.",
                "You earned %(points)s points, usable from %(date)s. Points balance: %(balance)s.",
                values["points"],
            )
        else:
            text = ngettext(
                "You earned %(points)s point. Points balance: %(balance)s.",
                "You earned %(points)s points. Points balance: %(balance)s.",
                values["points"],
            )
        return text % values
    if kind in (Kind.EXPIRY_WARNING, Kind.EXPIRY_LAST_CHANCE):
        values = {"total": data["total"], "days": data["days"], "list": _points_list(data["expiring"])}
        if kind == Kind.EXPIRY_WARNING:
            text = ngettext(
                "Reminder: %(total)s point expires within %(days)s days (%(list)s). Use it before it expires.",
                "Reminder: %(total)s points expire within %(days)s days (%(list)s). Use them before they expire.",
                values["total"],
            )
        else:
            text = ngettext(
                "Last chance: %(total)s point expires within %(days)s days (%(list)s). Use it now or lose it.",
                "Last chance: %(total)s points expire within %(days)s days (%(list)s). Use them now or lose them.",
                values["total"],
            )
        return text % values
    if kind == Kind.COUPON_ISSUED:
        return gettext("You received a coupon: %(name)s, valid until %(until)s.") % {
            "name": data["name"],
            "until": data["valid_until"],
        }
    if kind == Kind.COUPON_EXPIRING:
        return gettext("Your coupon %(name)s expires at %(until)s. Use it before then.") % {
            "name": data["name"],
            "until": data["valid_until"],
        }
    if kind == Kind.TIER_CHANGED:
        if data.get("direction") == "up":
            return gettext("Congratulations! You are now a %(tier)s member.") % {"tier": data["to_name"]}
        return gettext("Your membership tier has changed from %(from)s to %(to)s.") % {
            "from": data.get("from_name") or "-",
            "to": data["to_name"],
        }
    # Campaign messages: written by Marketing in the campaign, sent as written.
    return str(data.get("text") or data.get("campaign") or "")


# -----------------------------------------------------------------------------
# Events (called by the services, inside their transaction)
# -----------------------------------------------------------------------------
_UNREAD = object()


def notify_points_earned(
    source: Any, *, lot: Any = _UNREAD, member: Member | None = None, writes: list[Write] | None = None
) -> OutboxMessage | None:
    """The "you earned N points" message for a purchase (its earn entry) or for a credit
    entry (``earn``/``bonus``: claim, campaign, check-in…). Once per purchase,
    or per entry when the entry has no purchase. Nothing for a purchase
    without a member or without points. The till passes the entry's ``lot``
    (``None`` when the points all paid debt) and the ``member`` it holds, so
    neither is read again. ``writes``: as ``message_enqueue``'s (the till's
    purchase writes its entry, lot and message in one statement)."""
    from points.models import PointsEntry, PointsLot, Purchase

    if isinstance(source, Purchase):
        member = source.member if Purchase.member.is_cached(source) else None
        entry = (
            PointsEntry.objects.filter(purchase=source, kind=PointsEntry.Kind.EARN, points__gt=0)
            .select_related("store")
            .order_by("-pk")
            .first()
        )
        if entry is None:
            return None
    else:
        entry = source
        if entry.points <= 0 or entry.kind not in (PointsEntry.Kind.EARN, PointsEntry.Kind.BONUS):
            return None
    if entry.purchase_id:
        dedupe_key = f"points_earned:purchase:{entry.purchase_id}"
    else:
        dedupe_key = f"points_earned:entry:{entry.pk}"
    if lot is not _UNREAD:
        pending_until = lot.pending_until if lot is not None else None
    else:
        pending_until = (
            PointsLot.objects.filter(member_id=entry.member_id, entry=entry, pending_until__isnull=False)
            .values_list("pending_until", flat=True)
            .first()
        )
    if member is None:
        member = entry.member if PointsEntry.member.is_cached(entry) else Member.objects.get(pk=entry.member_id)
    store = entry.store if entry.store_id else None
    payload = _points_earned_payload(
        points=entry.points, balance=entry.balance_after, store=store, source=entry.source, entry_id=entry.pk,
        purchase_id=entry.purchase_id, earned_at=entry.created_at, pending_until=pending_until,
    )
    return message_enqueue(
        member=member, kind=Kind.POINTS_EARNED, payload=payload, dedupe_key=dedupe_key, writes=writes
    )


def _points_earned_payload(
    *, points: int, balance: int, store: Any, source: str, entry_id: int, purchase_id: int | None,
    earned_at: datetime, pending_until: datetime | None,
) -> dict[str, Any]:
    return {
        "points": points,
        "balance": balance,
        "store": store.name if store else "",
        "source": source,
        "entry_id": entry_id,
        "purchase_id": purchase_id,
        "earned_at": earned_at,
        "usable_from": _local_day(pending_until).isoformat() if pending_until else None,
    }


# The "points earned" message of a purchase as ``notify_points_earned`` writes
# it, inserted from a CTE (``n``: purchase_id, entry_id, balance_after) of the
# till's one-statement purchase (points/till.py); parameters: member id, kind,
# channel, marketing, the payload without the three values the CTE knows,
# status, next attempt, last error, created at.
_POINTS_EARNED_FROM_SQL = (
    f"INSERT INTO {OutboxMessage._meta.db_table} ({_INSERT_COLUMNS}) "  # noqa: S608 - model table
    "SELECT %s::bigint, %s::text, %s::text, 'points_earned:purchase:' || n.purchase_id, %s::boolean, "
    "%s::jsonb || jsonb_build_object('balance', n.balance_after, 'entry_id', n.entry_id, "
    "'purchase_id', n.purchase_id), %s::text, 0, %s::timestamptz, %s::text, %s::timestamptz FROM n "
    "ON CONFLICT (dedupe_key) DO NOTHING RETURNING id"
)


def points_earned_from_cte(
    member: Member, *, points: int, store: Any, earned_at: datetime, pending_until: datetime | None
) -> tuple[str, list[Any], bool]:
    """The purchase's "points earned" message (``notify_points_earned``'s row)
    as an INSERT … SELECT from a CTE ``n`` that gives ``purchase_id``,
    ``entry_id`` and ``balance_after``, known only inside the till's
    one-statement purchase. Returns its SQL (``%s`` placeholders), parameters,
    and whether a new row is to be handed to the workers at once
    (``points_earned_sent`` after commit)."""
    payload = _points_earned_payload(
        points=points, balance=0, store=store, source="purchase", entry_id=0, purchase_id=0,
        earned_at=earned_at, pending_until=pending_until,
    )
    reason = _skip_reason(member, marketing=False)
    status = Status.SKIPPED if reason else Status.PENDING
    now = timezone.now()
    params = [
        member.pk, str(Kind.POINTS_EARNED), _channel_name(), False,
        json.dumps(_jsonable(payload), cls=DjangoJSONEncoder), str(status), now, reason, now,
    ]
    return _POINTS_EARNED_FROM_SQL, params, status == Status.PENDING


def points_earned_sent(message_id: int) -> None:
    """After the commit of the statement that wrote a pending message due now:
    hand it to the workers, as ``message_enqueue`` does after commit."""
    _send_soon_gathered.add([message_id])


def notify_tier_changed(
    member: Member, from_tier: Tier | None, to_tier: Tier, *, at: datetime | None = None
) -> OutboxMessage | None:
    """The "you are now Gold" / "your tier changed" message. Nothing at enrolment (no
    previous tier) or when the tier did not change. One message per change:
    the key holds the time of the change (``at``, by default ``member.tier_since``)."""
    if from_tier is None or from_tier.pk == to_tier.pk:
        return None
    at = at or member.tier_since
    payload = {
        "from": from_tier.code,
        "from_name": from_tier.name,
        "to": to_tier.code,
        "to_name": to_tier.name,
        "direction": "up" if to_tier.rank > from_tier.rank else "down",
        "changed_at": at,
    }
    dedupe_key = f"tier_changed:{member.pk}:{from_tier.code}:{to_tier.code}:{int(at.timestamp())}"
    return message_enqueue(member=member, kind=Kind.TIER_CHANGED, payload=payload, dedupe_key=dedupe_key)


def _until_text(valid_until: datetime) -> str:
    return timezone.localtime(valid_until).strftime("%Y-%m-%d %H:%M")


def notify_coupon_issued(coupon: Coupon) -> OutboxMessage | None:
    """The "you received a coupon" message for a coupon bound to a member (nothing for
    bearer coupons), once per coupon."""
    if coupon.member_id is None:
        return None
    benefit = coupon.benefit
    payload = {
        "coupon_id": coupon.pk,
        "benefit_id": benefit.pk,
        "name": benefit.name,
        "benefit_kind": benefit.kind,
        "value": benefit.value,
        "source": coupon.source,
        "valid_until": _until_text(coupon.valid_until),
    }
    return message_enqueue(
        member=coupon.member, kind=Kind.COUPON_ISSUED, payload=payload, dedupe_key=f"coupon_issued:{coupon.pk}"
    )


# -----------------------------------------------------------------------------
# Scheduled reminders
# -----------------------------------------------------------------------------
_EXPIRING_SQL = """
WITH due AS (
    SELECT DISTINCT l.member_id
    FROM points_pointslot l JOIN members_member m ON m.id = l.member_id
    WHERE l.remaining > 0 AND l.expires_at > %(target_start)s AND l.expires_at <= %(target_end)s
      AND m.status <> 'closed' AND l.member_id > %(after)s
    ORDER BY l.member_id
    LIMIT %(limit)s
)
SELECT l.member_id, l.expires_at, SUM(l.remaining)::int
FROM points_pointslot l JOIN due d ON d.member_id = l.member_id
WHERE l.remaining > 0 AND l.expires_at > %(day_start)s AND l.expires_at <= %(target_end)s
GROUP BY l.member_id, l.expires_at
ORDER BY l.member_id, l.expires_at
"""


def points_expiry_reminders(*, today: date | None = None, batch_size: int = REMINDER_BATCH_SIZE) -> int:
    """Daily: "points expire in 30 days" and "last chance: 7 days".

    A member is reminded when some of their points have their last valid day
    exactly 30 (warning) or 7 (last chance) days after ``today`` (local); the
    message lists every last day from today up to that one with its amount.
    Set-based, in batches of members; one message per member and kind and
    target day (``expiry_warning:<member>:<day>``), so a re-run adds nothing.
    Returns the number of messages created."""
    today = today or _local_day(timezone.now())
    created = 0
    for kind, days in ((Kind.EXPIRY_WARNING, EXPIRY_WARNING_DAYS), (Kind.EXPIRY_LAST_CHANCE, EXPIRY_LAST_CHANCE_DAYS)):
        target = today + timedelta(days=days)
        params = {
            "day_start": _midnight(today),
            "target_start": _midnight(target),
            "target_end": _midnight(target + timedelta(days=1)),
            "limit": batch_size,
            "after": 0,
        }
        while True:
            with transaction.atomic():
                with connection.cursor() as cursor:
                    cursor.execute(_EXPIRING_SQL, params)
                    fetched = cursor.fetchall()
                if not fetched:
                    break
                by_member: dict[int, dict[date, int]] = {}
                for member_id, expires_at, points in fetched:
                    days_of = by_member.setdefault(member_id, {})
                    day = _last_valid_day(expires_at)
                    days_of[day] = days_of.get(day, 0) + points
                rows = []
                for member_id, amounts in by_member.items():
                    expiring = [{"date": day.isoformat(), "points": points} for day, points in sorted(amounts.items())]
                    payload = {
                        "days": days,
                        "expires_on": target.isoformat(),
                        "points": amounts.get(target, 0),
                        "total": sum(amounts.values()),
                        "expiring": expiring,
                    }
                    rows.append((member_id, kind.value, payload, f"{kind.value}:{member_id}:{target.isoformat()}"))
                created += _insert_many(rows, due=timezone.now())
            params["after"] = max(by_member)
            if len(by_member) < batch_size:
                break
    logger.info("points expiry reminders for %s: %s message(s)", today, created)
    return created


def _coupons_expiring(now: datetime) -> QuerySet[Coupon]:
    return Coupon.objects.filter(
        status=Coupon.Status.ISSUED,
        member__isnull=False,
        valid_until__gt=now,
        valid_until__lte=now + timedelta(days=COUPON_EXPIRING_DAYS),
    ).exclude(member__status=Member.Status.CLOSED)


def coupons_expiring_reminders(*, now: datetime | None = None, batch_size: int = REMINDER_BATCH_SIZE) -> int:
    """Daily: "your coupon expires soon" for each issued coupon of a member
    that expires within 3 days, once per coupon (``coupon_expiring:<id>``).
    Returns the number of messages created."""
    now = now or timezone.now()
    created, after = 0, 0
    while True:
        with transaction.atomic():
            batch = list(
                _coupons_expiring(now)
                .filter(pk__gt=after)
                .order_by("pk")
                .values_list("pk", "member_id", "valid_until", "benefit__name", "benefit_id")[:batch_size]
            )
            if not batch:
                break
            rows = [
                (
                    member_id,
                    Kind.COUPON_EXPIRING.value,
                    {
                        "coupon_id": coupon_id,
                        "benefit_id": benefit_id,
                        "name": name,
                        "valid_until": _until_text(valid_until),
                    },
                    f"coupon_expiring:{coupon_id}",
                )
                for coupon_id, member_id, valid_until, name, benefit_id in batch
            ]
            created += _insert_many(rows, due=timezone.now())
        after = batch[-1][0]
        if len(batch) < batch_size:
            break
    logger.info("coupon expiry reminders: %s message(s)", created)
    return created
