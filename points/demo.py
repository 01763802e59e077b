"""Demo history: 13 months of purchases, points paid at the till, refunds,
expiry runs and tier evaluations, all through the real services in time order
so the ledger is exactly what production would have written."""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from decimal import Decimal

from dateutil.relativedelta import relativedelta
from django.db import connection, transaction
from django.utils import timezone

from loyalty.errors import LoyaltyError
from members.models import Member, Store, Terminal
from members.selectors import IdentifiedMember
from points.batch import points_expire_due, tiers_evaluate
from points.models import PointsAccount
from points.services import purchase_record, purchase_refund

MONTHS = 13


def _month_starts(now: datetime) -> list[datetime]:
    local = timezone.localtime(now)
    first = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return [first - relativedelta(months=offset) for offset in range(MONTHS, 0, -1)] + [first]


def seed_history(*, share_active: float = 0.45, seed: int = 20260102) -> str:
    rng = random.Random(seed)
    now = timezone.now()
    with connection.cursor() as cursor:
        # Demo data only: don't wait for a disk flush after each of thousands of commits.
        cursor.execute("SET synchronous_commit TO off")
    stores = list(Store.objects.order_by("code"))
    terminals = {t.store_id: t for t in Terminal.objects.filter(name="till-1")}
    members = list(Member.objects.filter(status=Member.Status.ACTIVE).select_related("tier").order_by("pk"))
    buyers = rng.sample(members, int(len(members) * share_active))
    # A few heavy spenders so that gold and platinum tiers appear.
    profile = {m.pk: rng.choices([1, 2, 3], weights=[80, 17, 3])[0] for m in buyers}
    events: list[tuple[datetime, Member]] = []
    start = now - relativedelta(months=MONTHS)
    for member in buyers:
        visits = rng.randint(1, 6) * profile[member.pk]
        for _ in range(visits):
            events.append((start + timedelta(seconds=rng.randrange(int((now - start).total_seconds()))), member))
    events.sort(key=lambda item: item[0])
    month_starts = [m for m in _month_starts(now) if m > start]
    purchases = refunds = used = 0
    receipts: list[tuple[Store, str, Decimal, datetime]] = []
    step = 10**9
    for paid_at, member in events:
        while month_starts and month_starts[0] <= paid_at:
            boundary = month_starts.pop(0)
            points_expire_due(as_of=boundary)
            tiers_evaluate(as_of=boundary)
        store = member.registration_store if rng.random() < 0.7 and member.registration_store else rng.choice(stores)
        amount = Decimal(rng.choice([39, 59, 88, 128, 199, 268, 399, 688, 1280, 2680][: 6 + 2 * profile[member.pk]]))
        amount += Decimal(rng.randrange(100)) / 100
        receipt = f"D{paid_at:%y%m%d}{purchases:06d}"
        step += 1
        member.refresh_from_db(fields=["tier", "tier_since", "status"])
        balance = PointsAccount.objects.filter(member=member).values_list("balance", flat=True).first() or 0
        points_to_use = 0
        if balance >= 500 and rng.random() < 0.25:
            points_to_use = min(balance - balance % 100, int(amount * 50))
        try:
            with transaction.atomic():
                purchase_record(
                    store=store,
                    terminal=terminals.get(store.pk),
                    receipt_no=receipt,
                    amount=amount,
                    paid_at=paid_at,
                    now=paid_at,
                    identified=IdentifiedMember(member=member, code_step=step if points_to_use else None),
                    points_to_use=points_to_use,
                )
        except LoyaltyError:
            continue  # e.g. a demo member frozen meanwhile: that sale simply earns nothing
        purchases += 1
        used += points_to_use
        receipts.append((store, receipt, amount, paid_at))
        if rng.random() < 0.03:
            refund_at = paid_at + timedelta(days=rng.randint(1, 20))
            if refund_at < now:
                full = rng.random() < 0.6
                refund_amount = amount if full else (amount / 2).quantize(Decimal("0.01"))
                purchase_refund(
                    store=store,
                    terminal=terminals.get(store.pk),
                    receipt_no=receipt,
                    refund_no=f"F{receipt[1:]}",
                    amount=refund_amount,
                    at=refund_at,
                )
                refunds += 1
    for boundary in month_starts:
        points_expire_due(as_of=boundary)
        tiers_evaluate(as_of=boundary)
    return f"Seeded {purchases} purchases ({used} points used at the till) and {refunds} refunds over {MONTHS} months."
