"""The usual purchase at the till in one statement.

Most sales at a till are the same call: a member identified, an amount, no
points paying, no coupons, no campaign running, no webhook listening. The
general path (``services.purchase_record_in_transaction``) makes five round
trips for it inside the request's transaction (``BEGIN``, the member, the
account lock with the purchase, the earn's rows, ``COMMIT``); under load each
round trip costs both processes CPU, and the purchase stayed at 0.32–0.36 × the
floor's requests per second where 0.40 × is the target (docs/performance.md).

Here the purchase, outside any transaction, makes two: the member (as
always), then ONE statement that commits on its own (autocommit): it locks the
member's points account, checks in the database what would send the purchase
elsewhere, and only then writes the purchase, the earn entry, its lot, the
"points earned" message and the account, and reads the account back. Every
value the rules give is computed here in Python by the same functions as the
general path (``points_for_amount``, ``expiry_for``, the message's payload);
the statement adds only what it alone knows under the lock: the balance, the
clawback debt the points pay first (as ``services._credit``), and the keys of
the rows. ``tests/points/test_till.py`` holds both paths' rows equal.

The statement writes nothing, and the caller runs the general path instead,
when any of these holds (checked in the statement, under the lock):

- the member has no points account yet (the general path creates it);
- a campaign a purchase may touch is running, or a webhook takes
  ``points.changed`` (then the one-statement path is not tried again for
  ``_GENERAL_FOR_SECONDS`` in this process);
- the purchase reaches a higher tier (the upgrade belongs in its transaction);
- the account changed after the statement's snapshot was taken (a concurrent
  change of this member committed while the lock was awaited: the
  qualifying spend read from the snapshot might miss its purchase);
- the receipt number or the member code was used (the general path answers
  with the error, as it would have).

Before the statement, in Python, the same: anything but a plain sale by an
active member that earns points goes to the general path at once.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import connection
from django.utils import timezone

from campaigns.services.campaigns import ONE, purchase_campaigns_column
from campaigns.services.notifications import points_earned_from_cte, points_earned_sent
from campaigns.services.webhooks import POINTS_CHANGED, subscribed_column
from loyalty.sql import execute, insert_write, next_id_column
from members.models import Member, Store, Terminal
from members.selectors import IdentifiedMember
from points.models import PointsAccount, PointsEntry, Purchase
from points.services import (
    PurchaseResult,
    expiry_for,
    paid_at_check,
    points_for_amount,
    qualification_query,
)

# After the statement found a campaign running or a webhook listening, how
# long this process sends purchases straight to the general path (a campaign
# runs for days: trying every purchase would cost each a wasted round trip).
_GENERAL_FOR_SECONDS = 10.0
_general_until = 0.0

# {campaigns}, {webhooks}, {qualification}: the SQL of purchase_campaigns_column,
# subscribed_column and qualification_query (with this purchase's amount: the
# statement's snapshot has not its row); {purchase}, {message}: the purchase's
# and the message's INSERT … SELECT; {entry_id}: the entry's key.
# Parameters in order of the text.
_STATEMENT = """
WITH a AS (
    SELECT member_id, balance, pending, debt, xmin::text AS version
    FROM points_pointsaccount WHERE member_id = %s FOR NO KEY UPDATE
), g AS (
    SELECT a.*,
        a.version IS DISTINCT FROM (SELECT xmin::text FROM points_pointsaccount WHERE member_id = %s) AS raced,
        {campaigns} AS campaigns,
        cardinality({webhooks}) > 0 AS hooks,
        q.id AS reach_id, q.rank AS reach_rank
    FROM a CROSS JOIN ({qualification}) q
), ok AS (
    SELECT * FROM g
    WHERE NOT raced AND NOT campaigns AND NOT hooks
        AND (reach_id IS NULL OR reach_id = %s::bigint OR reach_rank <= %s::int)
), p AS ({purchase}
), n AS (
    SELECT p.id AS purchase_id, {entry_id} AS entry_id, ok.balance + %s::int AS balance_after,
        ok.pending, ok.debt, LEAST(ok.debt, %s::int) AS paid_down
    FROM p CROSS JOIN ok
), e AS (
    INSERT INTO points_pointsentry (id, member_id, kind, points, balance_after, source, purchase_id, refund_id,
        store_id, terminal_id, by_user_id, reason, reference, created_at)
    SELECT n.entry_id, %s::bigint, %s::text, %s::int, n.balance_after, %s::text, n.purchase_id, NULL,
        %s::bigint, %s::bigint, NULL, '', '', %s::timestamptz
    FROM n RETURNING id
), l AS (
    INSERT INTO points_pointslot (member_id, entry_id, original, remaining, earned_at, expires_at, pending_until)
    SELECT %s::bigint, n.entry_id, %s::int - n.paid_down, %s::int - n.paid_down, %s::timestamptz,
        %s::timestamptz, %s::timestamptz
    FROM n WHERE n.paid_down < %s::int RETURNING id, original
), o AS ({message}
), u AS (
    UPDATE points_pointsaccount t SET balance = n.balance_after,
        pending = n.pending + CASE WHEN %s::timestamptz IS NULL THEN 0 ELSE %s::int - n.paid_down END,
        debt = n.debt - n.paid_down, updated_at = %s::timestamptz
    FROM n WHERE t.member_id = %s RETURNING t.balance, t.pending, t.debt
)
SELECT g.member_id IS NOT NULL, g.raced, g.campaigns, g.hooks, n.purchase_id,
    (SELECT id FROM e), (SELECT id FROM l), (SELECT original FROM l), (SELECT id FROM o), u.balance, u.pending, u.debt
FROM (VALUES (1)) one LEFT JOIN g ON true LEFT JOIN n ON true LEFT JOIN u ON true
"""


def purchase_one_statement(
    *,
    store: Store,
    terminal: Terminal | None,
    receipt_no: str,
    amount: Decimal,
    paid_at: datetime | None,
    identified: IdentifiedMember | None,
    lines: list[Any] | None = None,
    now: datetime | None = None,
) -> PurchaseResult | None:
    """Record a plain purchase that earns points in one statement, committed
    when it returns; or write nothing and return None, for the caller to run
    the general path (module docstring). Outside a transaction only. Raises
    ``InvalidPaidAt`` as the general path does, writing nothing."""
    global _general_until
    if not settings.LOYALTY_TILL_ONE_STATEMENT or connection.in_atomic_block:
        return None
    if identified is None or identified.member.status != Member.Status.ACTIVE or amount <= 0:
        return None
    if time.monotonic() < _general_until:
        return None
    member = identified.member
    now = now or timezone.now()
    paid_at = paid_at or now
    paid_at_check(paid_at, now)
    tier = member.tier
    earned = points_for_amount(amount=amount, tier=tier, multiplier=ONE)
    if earned <= 0:
        return None
    pending_until = paid_at + timedelta(days=settings.LOYALTY_POINTS_PENDING_DAYS)
    pending_until = pending_until if pending_until > paid_at else None  # as services._credit

    purchase_write, purchase = insert_write(
        Purchase, on_conflict_do_nothing=True, select_from="ok",
        store=store, terminal=terminal, receipt_no=receipt_no, amount=amount, paid_at=paid_at, lines=lines or [],
        member=member, tier=tier, code_step=identified.code_step, offline=identified.offline, points_used=0,
        cash_paid_by_points=Decimal("0.00"), points_earned=earned, multiplier=ONE,
    )
    campaigns_sql, campaigns_params = purchase_campaigns_column(paid_at)
    webhooks_sql, webhooks_params = subscribed_column(POINTS_CHANGED)
    message_sql, message_params, send = points_earned_from_cte(
        member, points=earned, store=store, earned_at=paid_at, pending_until=pending_until
    )
    qualification_sql, qualification_params = qualification_query(member.pk, paid_at, plus=amount)
    sql = _STATEMENT.format(
        campaigns=campaigns_sql, webhooks=webhooks_sql, qualification=qualification_sql,
        purchase=purchase_write.sql, message=message_sql, entry_id=next_id_column(PointsEntry),
    )
    store_id, terminal_id = store.pk, terminal.pk if terminal else None
    params = [
        member.pk,  # a
        member.pk, *campaigns_params, *webhooks_params, *qualification_params,  # g
        tier.pk, tier.rank,  # ok
        *purchase_write.params,  # p
        earned, earned,  # n
        member.pk, str(PointsEntry.Kind.EARN), earned, str(PointsEntry.Source.PURCHASE), store_id, terminal_id,
        paid_at,  # e
        member.pk, earned, earned, paid_at, expiry_for(paid_at), pending_until, earned,  # l
        *message_params,  # o
        pending_until, earned, timezone.now(), member.pk,  # u
    ]
    with connection.cursor() as cursor:
        execute(cursor, sql, params)
        row = cursor.fetchone()
    _found, _raced, campaigns, hooks, purchase_id, entry_id, lot_id, lot_points, message_id, balance, pending, debt = row
    if campaigns or hooks:
        _general_until = time.monotonic() + _GENERAL_FOR_SECONDS
    if purchase_id is None:  # nothing was written (asserted by the statement's shape: every write hangs on p)
        return None
    if entry_id is None or balance is None:
        raise RuntimeError(f"purchase {purchase_id}: the one-statement path wrote the purchase without its entry")
    purchase_write.done((purchase_id,))
    if message_id is not None and send:
        points_earned_sent(message_id)
    account = PointsAccount(member_id=member.pk, balance=balance, pending=pending, debt=debt)
    return PurchaseResult(
        purchase,
        balance=balance,
        spendable=account.spendable,
        # the lot's points, as services.pending_of: what paid clawback debt is not pending
        points_pending=lot_points if lot_id is not None and pending_until is not None else 0,
        tier=tier,
        tier_changed=False,
    )
