"""The member outbox: de-duplication, consent, closed members, quiet hours,
channels (log, and the JSON gateway against a fake local server), backoff,
never sending twice, the expiry and coupon reminders, and the admin."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import connection, transaction
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from campaigns.channels import CHANNELS, OutgoingMessage
from campaigns.models import OutboxMessage
from campaigns.services.notifications import (
    coupons_expiring_reminders,
    message_enqueue,
    message_render,
    notify_coupon_issued,
    notify_points_earned,
    notify_tier_changed,
    outbox_send,
    outbox_send_due,
    points_expiry_reminders,
    quiet_hours_end,
)
from campaigns.tasks_messaging import outbox_send_due_task, outbox_send_task
from loyalty.roles import OPERATOR
from members.models import Member, Tier
from members.services import member_close, member_enrol
from tests.campaigns.factories import BenefitFactory, coupon_give
from tests.conftest import restore_migration_data
from tests.points.factories import buy, local, points_give

pytestmark = pytest.mark.django_db

Kind = OutboxMessage.Kind
Status = OutboxMessage.Status
RECORDING = "recording"


# -----------------------------------------------------------------------------
# Test doubles: a channel that records, a fake JSON gateway / webhook receiver
# -----------------------------------------------------------------------------
class RecordingChannel:
    """A channel (by dotted path) that records what it was asked to send."""

    name = "recording"
    sent: ClassVar[list[OutgoingMessage]] = []

    def send(self, message: OutgoingMessage) -> str:
        self.sent.append(message)
        return f"rec-{len(self.sent)}"


@pytest.fixture(autouse=True)
def _recording_channel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(CHANNELS, RECORDING, "tests.campaigns.test_notifications.RecordingChannel")
    RecordingChannel.sent.clear()


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class FakeServer:
    """A local HTTP server in a thread: records every POST and answers with the
    queued statuses (then ``default_status``)."""

    def __init__(self, httpd: ThreadingHTTPServer) -> None:
        self.httpd = httpd
        self.requests: list[Received] = []
        self.statuses: list[int] = []
        self.default_status = 200
        self.body = b'{"id": "gw-1"}'

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/hook"


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        fake: FakeServer = self.server.fake  # type: ignore[attr-defined]
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        fake.requests.append(Received(self.path, {key.lower(): value for key, value in self.headers.items()}, body))
        status = fake.statuses.pop(0) if fake.statuses else fake.default_status
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        if status != 204:
            self.wfile.write(fake.body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's name)
        return


@contextmanager
def fake_http_server() -> Iterator[FakeServer]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    fake = FakeServer(httpd)
    httpd.fake = fake  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def fake_server() -> Iterator[FakeServer]:
    with fake_http_server() as fake:
        yield fake


@pytest.fixture
def consenting(store: Any) -> Member:
    member, _ = member_enrol(phone="13900001111", name="李小红", store=store, marketing_consent=True)
    return member


def _row(message: OutboxMessage) -> tuple[Any, ...]:
    return OutboxMessage.objects.values_list("status", "attempts", "next_attempt_at", "sent_at", "last_error").get(
        pk=message.pk
    )


def _enqueue(member: Member, key: str = "test:1", **kwargs: Any) -> OutboxMessage | None:
    kwargs.setdefault("kind", Kind.CAMPAIGN)
    kwargs.setdefault("payload", {"text": "会员日双倍积分"})
    return message_enqueue(member=member, dedupe_key=key, **kwargs)


# -----------------------------------------------------------------------------
# Enqueue: de-duplication, consent, closed members, quiet hours
# -----------------------------------------------------------------------------
def test_the_same_event_twice_gives_one_message(member, settings):
    # given
    settings.LOYALTY_MESSAGE_CHANNEL = RECORDING
    benefit = BenefitFactory(name="满100减10元券")
    coupon = coupon_give(benefit, member, at=timezone.now())
    # when the coupon's event is reported again (coupon_issue reported it already)
    again = notify_coupon_issued(coupon)
    # then one message, keyed by the coupon
    assert again is None
    assert list(OutboxMessage.objects.values_list("dedupe_key", "kind", "status")) == [
        (f"coupon_issued:{coupon.pk}", "coupon_issued", "pending")
    ]
    # and a generic enqueue with an existing key adds nothing either
    assert _enqueue(member, key=f"coupon_issued:{coupon.pk}") is None
    assert OutboxMessage.objects.count() == 1


def test_a_message_is_sent_after_commit_with_the_phone_masked_in_the_log(
    member, store, terminal, caplog, django_capture_on_commit_callbacks
):
    # given the default channel (log)
    caplog.set_level(logging.INFO, logger="campaigns.messages")
    # when the purchase reports its event in its transaction, nothing is sent before the commit
    with django_capture_on_commit_callbacks(execute=False) as callbacks, transaction.atomic():
        buy(store=store, terminal=terminal, member=member, receipt_no="R1", amount="128.00", at=timezone.now())
    message = OutboxMessage.objects.get(kind="points_earned")
    assert len(callbacks) == 1
    assert _row(message)[:2] == ("pending", 0)
    # then after the commit it is sent once, through the log
    callbacks[0]()
    status, attempts, _, sent_at, last_error = _row(message)
    assert (status, attempts, last_error) == ("sent", 1, "")
    assert sent_at is not None
    lines = [record.getMessage() for record in caplog.records if record.name == "campaigns.messages"]
    assert lines == [
        f"message {message.pk} points_earned to member {member.member_no} (138****5678): "
        "You earned 128 points at 上海南京西路店. Points balance: 128."
    ]
    assert "13812345678" not in caplog.text


def test_marketing_needs_consent(member, consenting, settings, django_capture_on_commit_callbacks):
    # given one member without marketing consent and one with, outside quiet hours
    settings.LOYALTY_MESSAGE_CHANNEL = RECORDING
    settings.LOYALTY_QUIET_HOURS = "off"
    # when a campaign message goes to both
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        refused = _enqueue(member, key="campaign:1:a", marketing=True)
        accepted = _enqueue(consenting, key="campaign:1:b", marketing=True)
    # then the first is kept as skipped, with why, and only the second is sent
    assert refused is not None
    assert accepted is not None
    assert _row(refused)[0] == "skipped"
    assert _row(refused)[4] == "The member has not accepted marketing messages."
    assert _row(accepted)[0] == "sent"
    assert len(callbacks) == 1
    assert [(sent.member_no, sent.text, sent.marketing) for sent in RecordingChannel.sent] == [
        (consenting.member_no, "会员日双倍积分", True)
    ]


def test_a_service_message_needs_no_consent(member, settings, django_capture_on_commit_callbacks):
    settings.LOYALTY_MESSAGE_CHANNEL = RECORDING
    with django_capture_on_commit_callbacks(execute=True):
        message = _enqueue(member, key="k", kind=Kind.TIER_CHANGED, payload={"direction": "up", "to_name": "金卡"})
    assert _row(message)[0] == "sent"
    assert RecordingChannel.sent[0].text == "Congratulations! You are now a 金卡 member."


def test_closed_members_get_nothing(member, settings, django_capture_on_commit_callbacks):
    # given a closed member
    settings.LOYALTY_MESSAGE_CHANNEL = RECORDING
    closed = member_close(member=member, by_user=None, reason="会员申请注销")
    # when a service message is enqueued for them
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        message = _enqueue(closed, key="k", kind=Kind.COUPON_ISSUED, payload={"name": "x", "valid_until": "y"})
    # then it is kept as skipped and nothing is sent
    assert _row(message)[0] == "skipped"
    assert _row(message)[4] == "The member's account is closed."
    assert callbacks == []
    assert RecordingChannel.sent == []


def test_consent_withdrawn_or_account_closed_before_sending_skips_the_message(consenting, settings):
    # given a queued marketing message (not yet sent: no commit callbacks run)
    settings.LOYALTY_MESSAGE_CHANNEL = RECORDING
    settings.LOYALTY_QUIET_HOURS = "off"
    message = _enqueue(consenting, marketing=True)
    # when the member withdraws consent before the sweep
    Member.objects.filter(pk=consenting.pk).update(marketing_consent=False)
    outcomes = outbox_send_due()
    # then
    assert outcomes == {"skipped": 1}
    assert _row(message)[0] == "skipped"
    assert RecordingChannel.sent == []


def test_marketing_created_in_quiet_hours_waits_until_they_end(consenting, member, settings):
    # given quiet hours 22:00–08:00 local
    settings.LOYALTY_MESSAGE_CHANNEL = RECORDING
    settings.LOYALTY_QUIET_HOURS = "22-8"
    late, early, noon = local(2026, 3, 1, 23, 15), local(2026, 3, 2, 7, 30), local(2026, 3, 2, 12, 0)
    # when messages are created at 23:15, 07:30 and noon, and a service message at 23:15
    at_late = _enqueue(consenting, key="a", marketing=True, at=late)
    at_early = _enqueue(consenting, key="b", marketing=True, at=early)
    at_noon = _enqueue(consenting, key="c", marketing=True, at=noon)
    service = _enqueue(member, key="d", kind=Kind.TIER_CHANGED, payload={"direction": "up", "to_name": "金卡"}, at=late)
    # then marketing waits for 08:00 (the next day after 22:00), service messages do not
    assert _row(at_late)[2] == local(2026, 3, 2, 8, 0)
    assert _row(at_early)[2] == local(2026, 3, 2, 8, 0)
    assert _row(at_noon)[2] == noon
    assert _row(service)[2] == late
    # and a sweep in the night sends only the service message
    assert outbox_send_due(now=local(2026, 3, 2, 1, 0)) == {"sent": 1}
    assert outbox_send_due(now=local(2026, 3, 2, 8, 0)) == {"sent": 2}
    assert [sent.idempotency_key for sent in RecordingChannel.sent] == [
        f"outbox:{service.pk}",
        f"outbox:{at_late.pk}",
        f"outbox:{at_early.pk}",
    ]


def test_quiet_hours_bounds_and_settings(settings):
    settings.LOYALTY_QUIET_HOURS = "22:30-08:00"
    assert quiet_hours_end(local(2026, 3, 1, 22, 29)) is None
    assert quiet_hours_end(local(2026, 3, 1, 22, 30)) == local(2026, 3, 2, 8, 0)
    assert quiet_hours_end(local(2026, 3, 2, 7, 59)) == local(2026, 3, 2, 8, 0)
    assert quiet_hours_end(local(2026, 3, 2, 8, 0)) is None
    settings.LOYALTY_QUIET_HOURS = "13-14"
    assert quiet_hours_end(local(2026, 3, 1, 13, 30)) == local(2026, 3, 1, 14, 0)
    settings.LOYALTY_QUIET_HOURS = "off"
    assert quiet_hours_end(local(2026, 3, 1, 23, 0)) is None


def test_a_marketing_message_due_during_quiet_hours_is_held_without_an_attempt(consenting, settings):
    # given a marketing message created at 21:59, swept at 22:01
    settings.LOYALTY_MESSAGE_CHANNEL = RECORDING
    settings.LOYALTY_QUIET_HOURS = "22-8"
    message = _enqueue(consenting, marketing=True, at=local(2026, 3, 1, 21, 59))
    # when
    assert outbox_send_due(now=local(2026, 3, 1, 22, 1)) == {"pending": 1}
    # then it waits for 08:00, with no attempt counted
    assert _row(message)[:3] == ("pending", 0, local(2026, 3, 2, 8, 0))
    assert RecordingChannel.sent == []


# -----------------------------------------------------------------------------
# Channels, backoff and failures
# -----------------------------------------------------------------------------
def _sms(settings: Any, url: str) -> None:
    settings.LOYALTY_MESSAGE_CHANNEL = "sms"
    settings.LOYALTY_SMS_GATEWAY_URL = url
    settings.LOYALTY_SMS_GATEWAY_KEY = "sms-key-123"


def test_the_sms_channel_posts_json_to_the_gateway(member, settings, fake_server):
    # given an SMS gateway
    _sms(settings, fake_server.url)
    message = _enqueue(
        member, kind=Kind.COUPON_ISSUED, payload={"name": "满100减10元券", "valid_until": "2026-04-01 10:00"}
    )
    # when
    assert outbox_send(message_id=message.pk) == "sent"
    # then one JSON request, authenticated, with a stable idempotency key
    (request,) = fake_server.requests
    assert request.headers["authorization"] == "Bearer sms-key-123"
    assert request.headers["idempotency-key"] == f"outbox:{message.pk}"
    assert request.headers["content-type"] == "application/json; charset=utf-8"
    assert request.json() == {
        "channel": "sms",
        "message_id": f"outbox:{message.pk}",
        "kind": "coupon_issued",
        "to": "+8613812345678",
        "text": "You received a coupon: 满100减10元券, valid until 2026-04-01 10:00.",
        "data": {"name": "满100减10元券", "valid_until": "2026-04-01 10:00"},
        "marketing": False,
    }
    assert _row(message)[0] == "sent"


def test_channel_failures_back_off_1_2_4_8_16_minutes_then_fail(member, settings, fake_server):
    # given a gateway that keeps answering 503
    _sms(settings, fake_server.url)
    fake_server.default_status = 503
    start = local(2026, 3, 1, 12, 0)
    message = _enqueue(member, kind=Kind.TIER_CHANGED, payload={"direction": "up", "to_name": "金卡"}, at=start)
    # when the sweep runs whenever the message is due
    waits, now = [], start
    for _ in range(5):
        assert outbox_send_due(now=now) == {"pending": 1}
        due = _row(message)[2]
        waits.append(due - now)
        assert outbox_send_due(now=due - timedelta(seconds=1)) == {}  # not due yet
        now = due
    assert outbox_send_due(now=now) == {"failed": 1}
    # then the waits doubled, and the sixth attempt failed it for good
    assert waits == [timedelta(minutes=m) for m in (1, 2, 4, 8, 16)]
    status, attempts, _, sent_at, last_error = _row(message)
    assert (status, attempts, sent_at) == ("failed", 6, None)
    assert last_error.startswith("Gateway answered HTTP 503")
    assert len(fake_server.requests) == 6
    assert {request.headers["idempotency-key"] for request in fake_server.requests} == {f"outbox:{message.pk}"}
    assert outbox_send_due(now=now + timedelta(days=1)) == {}


def test_a_gateway_refusal_fails_the_message_at_once(member, settings, fake_server):
    _sms(settings, fake_server.url)
    fake_server.default_status = 400
    message = _enqueue(member, kind=Kind.TIER_CHANGED, payload={"direction": "up", "to_name": "金卡"})
    assert outbox_send(message_id=message.pk) == "failed"
    assert _row(message)[:2] == ("failed", 1)


def test_an_unconfigured_channel_fails_the_message_with_a_clear_error(member, settings):
    # given the SMS channel without gateway settings
    _sms(settings, "")
    message = _enqueue(member, kind=Kind.TIER_CHANGED, payload={"direction": "up", "to_name": "金卡"})
    # when
    assert outbox_send(message_id=message.pk) == "failed"
    # then
    status, attempts, _, _, last_error = _row(message)
    assert (status, attempts) == ("failed", 1)
    assert last_error == ("The sms channel is not configured: set LOYALTY_SMS_GATEWAY_URL and LOYALTY_SMS_GATEWAY_KEY.")


def test_wechat_without_a_bound_openid_skips_the_message(member, settings, fake_server):
    settings.LOYALTY_MESSAGE_CHANNEL = "wechat"
    settings.LOYALTY_WECHAT_MESSAGE_GATEWAY_URL = fake_server.url
    settings.LOYALTY_WECHAT_MESSAGE_GATEWAY_KEY = "wx-key"
    message = _enqueue(member, kind=Kind.TIER_CHANGED, payload={"direction": "up", "to_name": "金卡"})
    assert outbox_send(message_id=message.pk) == "skipped"
    assert _row(message)[4] == "The member has not bound WeChat."
    assert fake_server.requests == []


def test_a_sent_message_is_never_sent_again_when_the_task_runs_twice(member, settings):
    # given a message and a task delivered twice (acks_late redelivery), plus the sweep
    settings.LOYALTY_MESSAGE_CHANNEL = RECORDING
    message = _enqueue(member, kind=Kind.TIER_CHANGED, payload={"direction": "up", "to_name": "金卡"})
    # when
    first = outbox_send_task.delay(message.pk).get()
    second = outbox_send_task.delay(message.pk).get()
    swept = outbox_send_due_task.delay().get()
    # then it was sent once
    assert (first, second, swept) == ("sent", None, 0)
    assert len(RecordingChannel.sent) == 1
    assert _row(message)[:2] == ("sent", 1)


# -----------------------------------------------------------------------------
# Events and texts
# -----------------------------------------------------------------------------
def test_points_earned_is_once_per_purchase_and_nothing_without_points(member, store, terminal):
    # given
    now = timezone.now()
    result = buy(store=store, terminal=terminal, member=member, receipt_no="R1", amount="99.90", at=now)
    walk_in = buy(store=store, terminal=terminal, member=None, receipt_no="R2", amount="50.00", at=now)
    earn_entry = result.purchase.entries.get(kind="earn")
    # when reported again by purchase and by its entry (the purchase reported it already)
    assert notify_points_earned(result.purchase) is None
    again = notify_points_earned(earn_entry)
    # then one message with the data at the time of the purchase
    assert again is None
    message = OutboxMessage.objects.get(kind="points_earned")
    assert notify_points_earned(walk_in.purchase) is None
    assert message.dedupe_key == f"points_earned:purchase:{result.purchase.pk}"
    assert {key: message.payload[key] for key in ("points", "balance", "store", "usable_from")} == {
        "points": 99,
        "balance": 99,
        "store": "上海南京西路店",
        "usable_from": None,
    }
    assert message_render(message) == "You earned 99 points at 上海南京西路店. Points balance: 99."


def test_reporting_a_till_credit_costs_three_queries(member, store, terminal, django_assert_num_queries):
    # given the earn entry as the ledger code holds it (store and purchase loaded, member by id)
    result = buy(store=store, terminal=terminal, member=member, receipt_no="R1", amount="10.00", at=timezone.now())
    entry = result.purchase.entries.select_related("store", "purchase").get(kind="earn")
    # then: the lot's pending date, the member, one INSERT … ON CONFLICT
    # (the purchase reported it already: a repeat is the same three queries and adds nothing)
    with django_assert_num_queries(3):
        assert notify_points_earned(entry) is None
    assert OutboxMessage.objects.filter(kind="points_earned").count() == 1


def test_the_sweep_task_works_through_a_backlog(member, settings, monkeypatch):
    # given more due messages than one sweep batch
    from campaigns import tasks_messaging

    settings.LOYALTY_MESSAGE_CHANNEL = RECORDING
    monkeypatch.setattr(tasks_messaging, "SWEEP_BATCH", 2)
    for index in range(5):
        _enqueue(member, key=f"k{index}", kind=Kind.TIER_CHANGED, payload={"direction": "up", "to_name": "金卡"})
    # when beat runs the sweep once
    assert outbox_send_due_task.delay().get() == 5
    # then every one was sent
    assert OutboxMessage.objects.filter(status="sent").count() == 5


def test_tier_change_messages_up_and_down_but_not_at_enrolment(member):
    silver, gold = Tier.objects.get(code="silver"), Tier.objects.get(code="gold")
    assert notify_tier_changed(member, None, silver) is None
    up = notify_tier_changed(member, silver, gold, at=local(2026, 3, 1, 10))
    down = notify_tier_changed(member, gold, silver, at=local(2026, 9, 1, 1))
    assert notify_tier_changed(member, silver, gold, at=local(2026, 3, 1, 10)) is None
    assert message_render(up) == f"Congratulations! You are now a {gold.name} member."
    assert message_render(down) == f"Your membership tier has changed from {gold.name} to {silver.name}."


# -----------------------------------------------------------------------------
# Scheduled reminders
# -----------------------------------------------------------------------------
def _last_day(day: date) -> Any:
    """``expires_at`` of points whose last valid day is ``day`` (local midnight after it)."""
    return local(day.year, day.month, day.day) + timedelta(days=1)


def test_expiry_reminders_at_30_and_7_days_list_every_date_and_amount_once(member, store, settings):
    # given, on 1 June, a member with points whose last days are 5 June, 8 June (7 days),
    # 1 July (30 days) and 15 July; a member with points only on 11 June; a closed member
    settings.LOYALTY_MESSAGE_CHANNEL = RECORDING
    today = date(2026, 6, 1)
    earned = local(2026, 1, 10, 12)
    for points, day in (
        (100, date(2026, 6, 5)),
        (50, date(2026, 6, 8)),
        (200, date(2026, 7, 1)),
        (70, date(2026, 7, 15)),
    ):
        points_give(member, points, at=earned, expires_at=_last_day(day))
    points_give(member, 30, at=earned, expires_at=_last_day(date(2026, 7, 1)))  # a second lot, same day
    other, _ = member_enrol(phone="13900002222", name="张三", store=store)
    points_give(other, 80, at=earned, expires_at=_last_day(date(2026, 6, 11)))
    closed, _ = member_enrol(phone="13900003333", name="李四", store=store)
    points_give(closed, 90, at=earned, expires_at=_last_day(date(2026, 7, 1)))
    member_close(member=closed, by_user=None, reason="注销")
    # when the job runs, twice
    created = points_expiry_reminders(today=today)
    again = points_expiry_reminders(today=today)
    # then one warning and one last chance, for the first member only, not duplicated
    assert (created, again) == (2, 0)
    messages = {message.kind: message for message in OutboxMessage.objects.all()}
    assert set(messages) == {"expiry_warning", "expiry_last_chance"}
    warning, last_chance = messages["expiry_warning"], messages["expiry_last_chance"]
    assert {warning.member_id, last_chance.member_id} == {member.pk}
    assert warning.dedupe_key == f"expiry_warning:{member.pk}:2026-07-01"
    assert warning.payload == {
        "days": 30,
        "expires_on": "2026-07-01",
        "points": 230,
        "total": 380,
        "expiring": [
            {"date": "2026-06-05", "points": 100},
            {"date": "2026-06-08", "points": 50},
            {"date": "2026-07-01", "points": 230},
        ],
    }
    assert last_chance.dedupe_key == f"expiry_last_chance:{member.pk}:2026-06-08"
    assert last_chance.payload == {
        "days": 7,
        "expires_on": "2026-06-08",
        "points": 50,
        "total": 150,
        "expiring": [{"date": "2026-06-05", "points": 100}, {"date": "2026-06-08", "points": 50}],
    }
    assert message_render(last_chance) == (
        "Last chance: 150 points expire within 7 days (100 on 2026-06-05; 50 on 2026-06-08). Use them now or lose them."
    )
    assert message_render(warning).startswith("Reminder: 380 points expire within 30 days (100 on 2026-06-05; ")
    # and the next day, only a new target day makes a new message (nothing here)
    assert points_expiry_reminders(today=today + timedelta(days=1)) == 0


def test_expiry_reminders_work_in_batches_of_members(store):
    # given five members with points expiring in 30 days
    today = date(2026, 6, 1)
    for index in range(5):
        member, _ = member_enrol(phone=f"1390000{index:04d}", name=f"会员{index}", store=store)
        points_give(member, 10 + index, at=local(2026, 1, 1), expires_at=_last_day(date(2026, 7, 1)))
    # when the job works two members at a time
    assert points_expiry_reminders(today=today, batch_size=2) == 5
    # then every member got exactly one warning with their own amount
    assert sorted(OutboxMessage.objects.values_list("payload__total", flat=True)) == [10, 11, 12, 13, 14]


def test_coupon_expiring_reminder_once_per_coupon_within_3_days(member, store):
    # given coupons expiring in 2 days, in 10 days, and a bearer coupon
    now = timezone.now()
    soon = coupon_give(BenefitFactory(name="生日券", valid_days=2), member, at=now)
    later = coupon_give(BenefitFactory(valid_days=10), member, at=now)
    # when the job runs on two days
    first = coupons_expiring_reminders(now=now)
    second = coupons_expiring_reminders(now=now + timedelta(days=1))
    # then one reminder for the coupon expiring soon, never a second
    assert (first, second) == (1, 0)
    (message,) = OutboxMessage.objects.filter(kind="coupon_expiring")
    assert (message.kind, message.dedupe_key, message.member_id) == (
        "coupon_expiring",
        f"coupon_expiring:{soon.pk}",
        member.pk,
    )
    assert message.payload["name"] == "生日券"
    assert soon.code not in json.dumps(message.payload)
    assert not OutboxMessage.objects.filter(dedupe_key=f"coupon_expiring:{later.pk}").exists()


def test_reminders_fan_out_to_the_send_task_after_commit(member, settings, django_capture_on_commit_callbacks):
    settings.LOYALTY_MESSAGE_CHANNEL = RECORDING
    coupon_give(BenefitFactory(valid_days=1), member, at=timezone.now())  # its "issued" message waits for commit
    with django_capture_on_commit_callbacks(execute=True):
        assert coupons_expiring_reminders() == 1
    assert OutboxMessage.objects.get(kind="coupon_expiring").status == "sent"
    assert len(RecordingChannel.sent) == 1


# -----------------------------------------------------------------------------
# Admin
# -----------------------------------------------------------------------------
def _operator() -> Client:
    user = get_user_model().objects.create_user(username="op-msg", password="x", is_staff=True)
    user.groups.add(Group.objects.get(name=OPERATOR))
    client = Client()
    client.force_login(user)
    return client


def test_admin_lists_messages_by_status_and_retries_failed_ones(member, settings, django_capture_on_commit_callbacks):
    # given a failed message and a sent one
    _sms(settings, "")
    failed = _enqueue(member, key="a", kind=Kind.TIER_CHANGED, payload={"direction": "up", "to_name": "金卡"})
    outbox_send(message_id=failed.pk)
    settings.LOYALTY_MESSAGE_CHANNEL = RECORDING
    sent = _enqueue(member, key="b", kind=Kind.TIER_CHANGED, payload={"direction": "up", "to_name": "金卡"})
    outbox_send(message_id=sent.pk)
    client = _operator()
    url = reverse("admin:campaigns_outboxmessage_changelist")
    # when an operator lists the failed ones and opens one
    listing = client.get(url, {"status__exact": "failed"})
    page = client.get(reverse("admin:campaigns_outboxmessage_change", args=[failed.pk]))
    # then
    assert listing.status_code == 200
    assert list(listing.context["cl"].result_list) == [failed]
    assert page.status_code == 200
    assert "LOYALTY_SMS_GATEWAY_URL" in page.content.decode()
    assert "Congratulations! You are now a 金卡 member." in page.content.decode()
    assert client.get(reverse("admin:campaigns_outboxmessage_add")).status_code == 403
    # when the gateway is fixed and the operator retries both
    OutboxMessage.objects.filter(pk=failed.pk).update(channel=RECORDING)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            url, {"action": "retry_messages", "_selected_action": [failed.pk, sent.pk], "index": "0"}
        )
    # then the failed one is sent, the sent one untouched
    assert response.status_code == 302
    assert _row(failed)[:2] == ("sent", 1)
    assert _row(sent)[:2] == ("sent", 1)
    assert len(RecordingChannel.sent) == 2


# -----------------------------------------------------------------------------
# Under real concurrency (transactional; keep last in the module)
# -----------------------------------------------------------------------------
@pytest.fixture(scope="module", autouse=True)
def _migration_data_restored(django_db_blocker: Any) -> Iterator[None]:
    """The transactional test below ends with a flush that pytest-django runs
    after every function-level teardown (its marker fixture is set up before
    the conftest's ``_restore_after_flush``), so the tiers and role groups are
    put back once the module is done, for the modules after it."""
    yield
    with django_db_blocker.unblock():
        restore_migration_data()


@pytest.mark.django_db(transaction=True)
def test_a_message_being_sent_by_one_worker_is_skipped_by_another(settings):
    # given a committed message, locked by a worker that is sending it
    restore_migration_data()  # an earlier transactional test may have flushed the tiers
    settings.LOYALTY_MESSAGE_CHANNEL = RECORDING
    member, _ = member_enrol(phone="13800009999", name="王五")
    due = timezone.now() + timedelta(hours=1)  # not sent on commit: due later
    message = _enqueue(member, kind=Kind.TIER_CHANGED, payload={"direction": "up", "to_name": "金卡"}, at=due)
    outcome: list[Any] = []

    def other_worker() -> None:
        try:
            outcome.append(outbox_send(message_id=message.pk, now=due))
        finally:
            connection.close()

    with transaction.atomic():
        OutboxMessage.objects.select_for_update().get(pk=message.pk)
        # when another worker tries the same message meanwhile
        thread = threading.Thread(target=other_worker)
        thread.start()
        thread.join(timeout=30)
    # then it skipped it at once instead of waiting or sending it too
    assert outcome == [None]
    assert RecordingChannel.sent == []
    assert outbox_send(message_id=message.pk, now=due) == "sent"
    assert len(RecordingChannel.sent) == 1
