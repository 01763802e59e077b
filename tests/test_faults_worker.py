"""A Celery worker killed with SIGKILL in the middle of the nightly expiry,
the tier evaluation and a scheduled campaign run: the work is finished by a
re-run, every effect exactly once, and ``check_ledger`` finds nothing.

A real worker (``celery -A loyalty worker``, the project's settings) runs in
a subprocess on this run's test database and on a Redis server of the test's
own. For the expiry and the tier evaluation the moment of the kill is made
exact by a row lock that another connection (a till in the middle of a sale)
holds on one member in the middle of the job: the batches before that member
commit, the job then waits on the lock, and is killed while it waits.

* expiry: the whole worker (``--pool solo``) is killed; a new worker runs the
  job again, as beat's next tick would;
* tier evaluation: its pool process is killed (as the kernel's OOM killer
  would); the broker hands the task to a new pool process at once
  (``acks_late``, reject on worker lost), which finds the job's advisory lock
  still held by the dead process's session and retries until it is free;
* campaign run: its pool process is killed at whatever point the run has
  reached; the new pool process runs it again.

Small batches and a quick busy retry come from the settings' environment
variables (``LOYALTY_EXPIRY_BATCH_SIZE``, ``LOYALTY_TIER_BATCH_SIZE``,
``LOYALTY_JOB_BUSY_RETRY_SECONDS``).
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.db.models import Count
from django.utils import timezone

from campaigns.models import (
    Campaign,
    CampaignGrant,
    Coupon,
    CouponEvent,
    CouponIssueRequest,
    OutboxMessage,
    WebhookDelivery,
    WebhookEndpoint,
)
from members.models import Member, Tier, TierChange
from points.batch import ledger_check
from points.models import PointsAccount, PointsAllocation, PointsEntry, PointsLot
from points.services import Refs, points_debit
from tests.campaigns.factories import BenefitFactory, CampaignFactory, issued_count
from tests.campaigns.test_notifications import fake_http_server
from tests.faults import (
    RedisServer,
    Worker,
    advisory_lock_holders,
    backend_alive,
    backends_blocked_by,
    redis_server,
    row_locked,
    sender,
    wait_until,
)
from tests.points.factories import MemberFactory, buy, member_in_tier, points_give

pytestmark = pytest.mark.django_db(transaction=True)

BATCH = 10


@pytest.fixture
def broker() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


@pytest.fixture
def workers(broker: RedisServer) -> Iterator[list[Worker]]:
    """Workers a test starts; stopped before the test database is flushed."""
    started: list[Worker] = []
    yield started
    for worker in started:
        worker.stop()


def _worker(broker: RedisServer, workers: list[Worker], name: str, **kwargs: Any) -> Worker:
    env = {
        "LOYALTY_EXPIRY_BATCH_SIZE": str(BATCH),
        "LOYALTY_TIER_BATCH_SIZE": str(BATCH),
        "LOYALTY_JOB_BUSY_RETRY_SECONDS": "1",
    }
    worker = Worker(broker, name=name, env=env, **kwargs)
    workers.append(worker)
    return worker.start()


def _blocked_on(lock: Any, job: str) -> int:
    """Wait until the job waits on ``lock``; check it holds its advisory lock.
    Returns its database backend's pid."""
    (blocked,) = wait_until(lambda: backends_blocked_by(lock.pid), timeout=60, what=f"{job} to reach the locked row")
    assert advisory_lock_holders(job) == [blocked], "the job runs under its single_instance lock"
    return blocked


def _orphan_gone(backend: int, lock: Any, job: str) -> None:
    """The killed worker's backend still runs its statement (it waits on the
    row lock, and PostgreSQL learns of the dead client only when it next
    talks to it), holding the advisory lock; once the till's transaction
    ends the statement finishes, the backend finds its client gone, rolls the
    batch back and exits, and the lock goes with it."""
    assert advisory_lock_holders(job) == [backend]
    lock.release()
    wait_until(lambda: not backend_alive(backend), timeout=30, what="the killed worker's backend to exit")
    assert backend not in advisory_lock_holders(job)


def _run(app: Any, worker: Worker, task: str) -> None:
    result = app.send_task(task)
    worker.wait_succeeded(result.id)


def _ledger_clean() -> None:
    report = ledger_check()
    assert (report.count, report.violations) == (0, {})
    out = StringIO()
    call_command("check_ledger", stdout=out)
    assert "0 violations" in out.getvalue()


# -----------------------------------------------------------------------------
# Expiry
# -----------------------------------------------------------------------------
def _expiry_members() -> tuple[list[Member], dict[int, int], dict[int, int]]:
    """60 members with a lot due (some partly spent) and half with one not due.
    Returns the members, each one's due points and balance."""
    now = timezone.now()
    members = [MemberFactory() for _ in range(6 * BATCH)]
    due: dict[int, int] = {}
    for i, member in enumerate(members):
        points_give(member, 100 + i, at=now - timedelta(days=400), expires_at=now - timedelta(days=1))
        due[member.pk] = 100 + i
        if i % 3 == 0:  # spent in part: the due lot is drawn first
            spent_at = now - timedelta(days=200)
            points_debit(
                member=member, points=30, kind=PointsEntry.Kind.REDEEM, refs=Refs(source="benefit"), at=spent_at
            )
            due[member.pk] -= 30
        if i % 2 == 0:
            points_give(member, 50, at=now - timedelta(days=1))
    balances = dict(PointsAccount.objects.values_list("member_id", "balance"))
    return members, due, balances


def test_expiry_killed_mid_run_is_finished_by_a_rerun_exactly_once(broker, workers):
    with fake_http_server() as fake:
        # given 60 members with points due, in batches of 10, an ERP endpoint for
        # points changes, and a till holding member 36's account
        members, due, balances = _expiry_members()
        WebhookEndpoint.objects.create(name="ERP", url=fake.url, secret="whsec_faults", events=["points_changed"])
        worker = _worker(broker, workers, "expiry-1")
        with (
            sender(broker) as app,
            row_locked("SELECT 1 FROM points_pointsaccount WHERE member_id = %s FOR UPDATE", [members[35].pk]) as till,
        ):
            # when the expiry runs, reaches the fourth batch and its worker is killed
            app.send_task("points.expire_due")
            orphan = _blocked_on(till, "points.expire_due")
            worker.kill()
            _orphan_gone(orphan, till, "points.expire_due")
            assert advisory_lock_holders("points.expire_due") == [], "nothing left holds the job's lock"
            # then exactly the first three batches are done, the fourth rolled back
            expired = set(PointsEntry.objects.filter(kind="expire").values_list("member_id", flat=True))
            assert expired == {member.pk for member in members[: 3 * BATCH]}
            assert PointsLot.objects.filter(expires_at__lte=timezone.now(), remaining__gt=0).count() == 3 * BATCH
            # when a new worker runs the job again (beat's next tick), and once more
            worker = _worker(broker, workers, "expiry-2")
            _run(app, worker, "points.expire_due")
            after_rerun = PointsEntry.objects.count()
            _run(app, worker, "points.expire_due")
        # then every member has one expire entry for exactly their due points
        entries = {
            member_id: (points, balance_after)
            for member_id, points, balance_after in PointsEntry.objects.filter(kind="expire").values_list(
                "member_id", "points", "balance_after"
            )
        }
        assert PointsEntry.objects.filter(kind="expire").count() == len(members)
        assert entries == {pk: (-due[pk], balances[pk] - due[pk]) for pk in due}
        assert dict(PointsAccount.objects.values_list("member_id", "balance")) == {
            pk: balances[pk] - due[pk] for pk in due
        }
        # and every due lot was emptied by exactly one allocation of an expire entry; the others are untouched
        now = timezone.now()
        assert not PointsLot.objects.filter(expires_at__lte=now, remaining__gt=0).exists()
        expiring = PointsAllocation.objects.filter(entry__kind="expire")
        assert list(expiring.values("lot").annotate(n=Count("id")).filter(n__gt=1)) == []
        assert expiring.count() == len(members)
        assert set(PointsLot.objects.filter(expires_at__gt=now).values_list("original", "remaining")) == {(50, 50)}
        assert PointsEntry.objects.count() == after_rerun, "the second re-run found nothing to do"
        _ledger_clean()
        # and one points_changed webhook per expire entry, each posted once when the worker delivered it
        expire_ids = set(PointsEntry.objects.filter(kind="expire").values_list("pk", flat=True))
        deliveries = WebhookDelivery.objects.filter(event="points_changed")
        assert sorted(d.payload["data"]["entry_id"] for d in deliveries) == sorted(expire_ids)
        wait_until(
            lambda: not deliveries.exclude(status="delivered").exists(), timeout=60, what="the webhooks to be delivered"
        )
        posted = Counter(request.headers["x-loyalty-event-id"] for request in fake.requests)
        assert posted == Counter({str(d.event_id): 1 for d in deliveries})


# -----------------------------------------------------------------------------
# Tier evaluation
# -----------------------------------------------------------------------------
def test_tier_evaluation_killed_mid_run_changes_each_tier_once(broker, workers, store, terminal):
    # given 40 members (ids in 4 batches of 10): gold and platinum for 13 months
    # without spend, silver with ¥6,000 spent (not upgraded yet), and silver without
    now = timezone.now()
    long_ago = now - timedelta(days=400)
    members = [MemberFactory() for _ in range(4 * BATCH)]
    expected: dict[int, tuple[str, str]] = {}
    for i, member in enumerate(members):
        if i % 4 == 0:
            member_in_tier(member, "gold", since=long_ago)
            expected[member.pk] = ("gold", "silver")
        elif i % 4 == 1:
            member_in_tier(member, "platinum", since=long_ago)
            expected[member.pk] = ("platinum", "gold")
        elif i % 4 == 2:
            buy(store=store, terminal=terminal, member=member, receipt_no=f"T-{i}", amount="6000.00", at=now)
            member_in_tier(member, "silver", since=long_ago)
            expected[member.pk] = ("silver", "gold")
    privilege = BenefitFactory(granted_by_tiers=["gold"])
    before = set(TierChange.objects.values_list("pk", flat=True))
    messages_before = set(OutboxMessage.objects.values_list("pk", flat=True))
    codes = dict(Tier.objects.values_list("pk", "code"))
    worker = _worker(broker, workers, "tiers", pool="prefork")
    child = worker.pool_child_pid()
    with (
        sender(broker) as app,
        row_locked("SELECT 1 FROM members_member WHERE id = %s FOR UPDATE", [members[24].pk]) as till,
    ):
        # when the evaluation reaches the third batch, waits on member 25, and its pool process is killed
        result = app.send_task("points.evaluate_tiers")
        orphan = _blocked_on(till, "points.evaluate_tiers")
        os.kill(child, signal.SIGKILL)
        # then the worker hands the task to a new pool process at once (acks_late,
        # reject on worker lost), which finds the lock still held by the dead
        # process's session and retries instead of dropping the night's run
        worker.wait_for("WorkerLostError", what="the worker to notice the lost pool process")
        worker.wait_for("points.evaluate_tiers is already running elsewhere; retrying in 1 s", what="a busy retry")
        assert worker.pool_child_pid() != child
        # and the first two batches are written, the third waits uncommitted in the dead process's session
        changed = set(TierChange.objects.exclude(pk__in=before).values_list("member_id", flat=True))
        assert changed == {m.pk for m in members[: 2 * BATCH] if m.pk in expected}
        _orphan_gone(orphan, till, "points.evaluate_tiers")
        # when the retry gets the lock it finishes the evaluation; and it is run once more
        worker.wait_succeeded(result.id)
        _run(app, worker, "points.evaluate_tiers")
    # then each member moved once, one tier at most (platinum stops at gold), with one history row
    changes = TierChange.objects.exclude(pk__in=before)
    assert sorted((c.member_id, codes[c.from_tier_id], codes[c.to_tier_id]) for c in changes) == sorted(
        (pk, old, new) for pk, (old, new) in expected.items()
    )
    tiers = dict(Member.objects.values_list("pk", "tier__code"))
    for i, member in enumerate(members):
        assert tiers[member.pk] == (expected[member.pk][1] if member.pk in expected else "silver"), i
    # and one member message per change, one privilege request per upgrade
    messages = OutboxMessage.objects.exclude(pk__in=messages_before).filter(kind="tier_changed")
    assert sorted(messages.values_list("member_id", flat=True)) == sorted(expected)
    upgraded = sorted(pk for pk, (old, _) in expected.items() if old == "silver")
    requests = CouponIssueRequest.objects.filter(benefit=privilege)
    assert sorted(requests.values_list("member_id", flat=True)) == upgraded
    _ledger_clean()


# -----------------------------------------------------------------------------
# Campaign run
# -----------------------------------------------------------------------------
def test_campaign_run_killed_in_its_pool_process_grants_each_member_once(broker, workers):
    # given a coupon grant to every active member, with a coupon budget
    members = [MemberFactory() for _ in range(60)]
    benefit = BenefitFactory()
    campaign = CampaignFactory(
        kind=Campaign.Kind.COUPON_GRANT,
        benefit=benefit,
        multiplier=Decimal("1.00"),
        starts_at=timezone.now() - timedelta(days=1),
        budget_coupons=1000,
    )
    worker = _worker(broker, workers, "campaign", pool="prefork")
    child = worker.pool_child_pid()
    with sender(broker) as app:
        # when the run has granted some coupons and its pool process is killed
        result = app.send_task("campaigns.run_scheduled")
        wait_until(
            lambda: CampaignGrant.objects.filter(campaign=campaign).count() >= 10, timeout=60, what="the first grants"
        )
        os.kill(child, signal.SIGKILL)
        at_kill = CampaignGrant.objects.filter(campaign=campaign).count()
        assert at_kill < len(members), "killed in the middle of the run"
        # then the worker hands the task (acks_late, reject on worker lost) to a new pool process, which finishes it
        worker.wait_for("WorkerLostError", what="the worker to notice the lost pool process")
        worker.wait_succeeded(result.id, timeout=120)
        assert worker.pool_child_pid() != child
    # then every member has one grant and one coupon, and the budget counted each once
    grants = CampaignGrant.objects.filter(campaign=campaign)
    assert sorted(grants.values_list("member_id", flat=True)) == sorted(m.pk for m in members)
    coupons = Coupon.objects.filter(benefit=benefit)
    assert sorted(coupons.values_list("member_id", flat=True)) == sorted(m.pk for m in members)
    assert set(grants.values_list("coupon_id", flat=True)) == set(coupons.values_list("pk", flat=True))
    assert issued_count(benefit) == len(members)
    assert Campaign.objects.values_list("spent_coupons", flat=True).get(pk=campaign.pk) == len(members)
    assert CouponEvent.objects.filter(coupon__benefit=benefit, kind="issued").count() == len(members)
    assert OutboxMessage.objects.filter(kind="coupon_issued").count() == len(members)
    _ledger_clean()
