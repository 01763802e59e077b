"""Redis down (the cache and the Celery broker): the till keeps working, and
what it produced for later waits in the database outbox, then goes out once.

The tests publish for real (``CELERY_TASK_ALWAYS_EAGER`` off) to a Redis of
their own, which they stop and start again (an outage) or replace by a
server that accepts connections and never answers (a hung Redis, or a host
gone without closing its connections). Requests commit for real
(``transaction=True``), so the services' on-commit hand-offs to the broker
run inside the request, as in production.
"""

from __future__ import annotations

import logging
import signal
import socket
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.utils import timezone

from campaigns.models import Coupon, OutboxMessage, WebhookDelivery, WebhookEndpoint
from campaigns.tasks_messaging import (
    outbox_send_due_task,
    outbox_send_task,
    webhook_deliver_task,
    webhooks_deliver_due_task,
)
from loyalty import handoff
from members.selectors import member_code_current
from points.batch import ledger_check
from points.models import PointsAccount, PointsEntry
from tests.campaigns.factories import BenefitFactory, coupon_give
from tests.campaigns.test_notifications import FakeServer, fake_http_server
from tests.faults import RedisServer, redis_server, wait_until
from tests.points.factories import points_give

pytestmark = pytest.mark.django_db(transaction=True)

IDENTIFY = "/api/v1/terminal/identify"
PURCHASES = "/api/v1/terminal/purchases"


def _cache_at(location: str) -> dict[str, Any]:
    return {"default": {**django_settings.CACHES["default"], "LOCATION": location}}


def _reset_producers(app: Any) -> None:
    if app._pool is not None:
        app._pool.force_close_all()
    app._pool = None
    app.amqp._producer_pool = None


@contextmanager
def celery_broker(url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The project's Celery app publishing to ``url`` for real (not eager).
    Celery read the Django settings once, so its own configuration is set."""
    from loyalty.celery import app

    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)  # it would win over the configuration
    saved = {
        "broker_url": app.conf.broker_url,
        "broker_write_url": app.conf.broker_write_url,
        "task_always_eager": app.conf.task_always_eager,
    }
    # Publishing uses the write URL when one is set (another test may have left one).
    app.conf.update(broker_url=url, broker_write_url=url, task_always_eager=False)
    _reset_producers(app)
    try:
        yield
    finally:
        app.conf.update(saved)
        _reset_producers(app)


@pytest.fixture
def redis(settings: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[RedisServer]:
    """This test's Redis, as the cache (throttle counters) and the broker."""
    with redis_server() as server:
        settings.CACHES = _cache_at(server.cache_url)
        with celery_broker(server.broker_url, monkeypatch):
            yield server


@pytest.fixture
def hung_redis(settings: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A "Redis" that accepts connections (the kernel's backlog) and never answers."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    url = f"redis://127.0.0.1:{listener.getsockname()[1]}/0"
    settings.CACHES = _cache_at(url)
    try:
        with celery_broker(url, monkeypatch):
            yield url
    finally:
        listener.close()


@pytest.fixture
def gateways(settings: Any) -> Iterator[tuple[FakeServer, FakeServer]]:
    """The SMS gateway (member messages) and the ERP (webhooks), both recording."""
    with fake_http_server() as sms, fake_http_server() as erp:
        settings.LOYALTY_MESSAGE_CHANNEL = "sms"
        settings.LOYALTY_SMS_GATEWAY_URL = sms.url
        settings.LOYALTY_SMS_GATEWAY_KEY = "test-gateway-key"
        yield sms, erp


@contextmanager
def deadline(seconds: int) -> Iterator[None]:
    """Fail instead of hanging the test run (what a till would do)."""

    def expired(signum: int, frame: Any) -> None:
        raise TimeoutError(f"still blocked after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _warnings(caplog: pytest.LogCaptureFixture, logger: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == logger and r.levelno == logging.WARNING]


def _forged(code: str) -> str:
    return code[:-1] + str((int(code[-1]) + 1) % 10)


def test_the_till_works_with_redis_down_and_the_outbox_sends_once_after(
    redis, gateways, terminal_client, member, caplog, settings
):
    # given a member with 1000 points and two coupons, an ERP subscribed to
    # every event, and a terminal throttled after 2 failed identifications
    sms, erp = gateways
    settings.LOYALTY_IDENTIFY_FAILURES_LIMIT = 2
    points_give(member, 1000, at=timezone.now() - timedelta(days=1))
    benefit = BenefitFactory()
    applied, written_off = coupon_give(benefit, member), coupon_give(benefit, member)
    WebhookEndpoint.objects.create(name="ERP", url=erp.url, secret="whsec_faults", events=[])
    messages_before = set(OutboxMessage.objects.values_list("pk", flat=True))
    code, _ = member_code_current(member=member)
    handoff.flush_all()  # what was gathered so far goes out now, while Redis is up
    # when Redis stops
    redis.stop()
    caplog.set_level(logging.WARNING)
    # and the till identifies the member (three times with a forged code first),
    # records a purchase paying ¥1 with 100 points and one coupon, and writes off the other coupon
    forged = [terminal_client.post(IDENTIFY, {"code": _forged(code)}, format="json") for _ in range(3)]
    identified = terminal_client.post(IDENTIFY, {"code": code}, format="json")
    purchase = terminal_client.post(
        PURCHASES,
        {
            "member": code,
            "receipt_no": "R-1",
            "amount": "200.00",
            "points_to_use": 100,
            "coupon_codes": [applied.code],
        },
        format="json",
        HTTP_IDEMPOTENCY_KEY="faults-r-1",
    )
    write_off = terminal_client.post(
        f"/api/v1/terminal/coupons/{written_off.code}/write-off", {"receipt_no": "R-2"}, format="json"
    )
    # then every answer is the normal one: the throttle fails open (no 429 past the limit)
    assert [(r.status_code, r.json()["error"]["code"]) for r in forged] == [(400, "invalid_member_code")] * 3
    assert identified.status_code == 200, identified.content
    assert identified.json()["member_no"] == member.member_no
    assert purchase.status_code == 201, purchase.content
    body = purchase.json()
    assert (body["points_used"], body["points_earned"], body["balance"]) == (100, 199, 1099)
    assert write_off.status_code == 200, write_off.content
    # and the ledger and the coupons are written
    entries = list(PointsEntry.objects.filter(member=member).order_by("pk").values_list("kind", "points"))
    assert entries == [("bonus", 1000), ("redeem", -100), ("earn", 199)]
    assert PointsAccount.objects.get(member=member).balance == 1099
    assert ledger_check().ok
    assert set(Coupon.objects.filter(member=member).values_list("code", "status")) == {
        (applied.code, "written_off"),
        (written_off.code, "written_off"),
    }
    # and the message and the webhooks wait in the outbox, not sent, not failed
    messages = OutboxMessage.objects.exclude(pk__in=messages_before)
    assert list(messages.values_list("kind", "status", "attempts")) == [("points_earned", "pending", 0)]
    deliveries = WebhookDelivery.objects.all()
    assert Counter(deliveries.values_list("event", "status", "attempts")) == Counter(
        {("points_changed", "pending", 0): 2, ("coupon_written_off", "pending", 0): 2}
    )
    assert (sms.requests, erp.requests) == ([], [])
    # and each failure to reach Redis was logged, naming the sweep that takes over
    # (only the failures need Redis: a terminal's block is read with its row, loyalty/throttle.py)
    throttle = [m for m in _warnings(caplog, "loyalty.throttle") if "unavailable" in m]
    assert len(throttle) == 3
    assert all(m.startswith("identify throttle unavailable") and "failure not counted" in m for m in throttle)
    # (hand-offs are gathered and sent from a background thread: loyalty/handoff.py; sent now)
    handoff.flush_all()
    messages_queued = _warnings(caplog, "campaigns.services.notifications")
    assert len(messages_queued) == 1
    assert "could not queue 1 message(s)" in messages_queued[0]
    assert messages_queued[0].endswith("the periodic sweep will send them")
    # (the purchase's redeem, coupon and earn events and the write-off's, gathered in one hand-off)
    webhooks_queued = _warnings(caplog, "campaigns.services.webhooks")
    assert len(webhooks_queued) == 1
    assert webhooks_queued[0].startswith("could not queue 4 webhook deliveries")

    # when Redis is back, a purchase hands its tasks to the broker again
    redis.start()
    later = terminal_client.post(
        PURCHASES, {"member": member.member_no, "receipt_no": "R-3", "amount": "50.00"}, format="json"
    )
    assert later.status_code == 201, later.content
    handoff.flush_all()
    assert redis.client().llen("celery") == 2  # its message and its webhook
    # and beat's every-minute sweeps run (on a worker: here, in this process)
    outbox_send_due_task()
    webhooks_deliver_due_task()
    # then every message went out once: those of the outage, the new one, and
    # the coupon messages queued before the outage (their tasks were lost with
    # Redis, which keeps nothing on disk here; their rows were not)
    messages = OutboxMessage.objects.all()
    assert Counter(messages.values_list("kind", "status")) == Counter(
        {("coupon_issued", "sent"): 2, ("points_earned", "sent"): 2}
    )
    sent = Counter(request.headers["idempotency-key"] for request in sms.requests)
    assert sent == Counter({f"outbox:{pk}": 1 for pk in messages.values_list("pk", flat=True)})
    # and every webhook once
    assert Counter(WebhookDelivery.objects.values_list("event", "status")) == Counter(
        {("points_changed", "delivered"): 3, ("coupon_written_off", "delivered"): 2}
    )
    posted = Counter(request.headers["x-loyalty-event-id"] for request in erp.requests)
    assert posted == Counter(
        {str(event_id): 1 for event_id in WebhookDelivery.objects.values_list("event_id", flat=True)}
    )
    # when the tasks queued at commit and the next sweeps run too
    for message_id in messages.values_list("pk", flat=True):
        assert outbox_send_task(message_id) is None
    for delivery_id in WebhookDelivery.objects.values_list("pk", flat=True):
        assert webhook_deliver_task(delivery_id) is None
    assert outbox_send_due_task() == 0
    assert webhooks_deliver_due_task() == 0
    # then nothing is sent a second time
    assert len(sms.requests) == len(sent)
    assert len(erp.requests) == len(posted)
    # and failed identifications are counted again
    again = [terminal_client.post(IDENTIFY, {"code": _forged(code)}, format="json").status_code for _ in range(3)]
    assert again == [400, 400, 429]


def test_a_hung_redis_does_not_delay_the_till(hung_redis, terminal_client, member, caplog):
    # given a member with points, and a Redis that accepts connections but never answers
    points_give(member, 1000, at=timezone.now() - timedelta(days=1))
    code, _ = member_code_current(member=member)
    caplog.set_level(logging.WARNING)
    # when the till records a purchase with points (its message is handed to the broker at commit)
    started = time.monotonic()
    with deadline(30):
        response = terminal_client.post(
            PURCHASES,
            {"member": code, "receipt_no": "R-1", "amount": "100.00", "points_to_use": 100},
            format="json",
        )
    elapsed = time.monotonic() - started
    # then the purchase succeeds without waiting for Redis at all: the throttle's
    # block is read with the terminal's row (loyalty/throttle.py), and the message is
    # handed to the broker from a background thread (loyalty/handoff.py)
    assert response.status_code == 201, response.content
    assert response.json()["balance"] == 1000 - 100 + 99
    assert elapsed < 1, elapsed  # the cache's timeout is 1 s, the broker's 2 s
    assert _warnings(caplog, "loyalty.throttle") == []
    # and that thread gives up after the broker's timeouts (2 × 2 s), logged; the message waits in the outbox for the sweep
    wait_until(
        lambda: any("Timeout" in m for m in _warnings(caplog, "campaigns.services.notifications")),
        timeout=20,
        what="the hand-off to time out",
    )
    assert list(OutboxMessage.objects.filter(kind="points_earned").values_list("status", "attempts")) == [
        ("pending", 0)
    ]
