"""Every change of points: purchases, refunds, redemption, credits, expiry.

All writes to a member's points happen under the row lock of their
``PointsAccount`` (``points.locks.account_lock``): entries, lots and
allocations are written only there, so per-member changes are serialised and
the cached balance can never drift from the ledger. Lock order across the
project: member → points account → coupons.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import ROUND_DOWN, ROUND_FLOOR, Decimal
from typing import Any, NoReturn

from dateutil.relativedelta import relativedelta
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import DatabaseError, IntegrityError, connection, models, transaction
from django.utils import timezone
from django.utils.translation import gettext

from campaigns.services.campaigns import (
    ONE,
    campaign_multiplier_for,
    campaigns_after_check_in,
    campaigns_after_purchase,
    campaigns_for_purchase,
    purchase_boost,
    purchase_campaigns_column,
)
from campaigns.services.notifications import notify_points_earned, notify_tier_changed
from campaigns.services.webhooks import (
    POINTS_CHANGED,
    subscribed_column,
    subscriptions_known,
    webhook_points_changed,
    webhook_tier_changed,
)
from loyalty.sql import (
    Write,
    execute,
    in_durable_transaction,
    insert,
    insert_pair,
    insert_write,
    next_id_column,
    together,
)
from members.errors import MemberClosed, MemberCodeAlreadyUsed, MemberCodeRequired, MemberFrozen
from members.models import Member, MemberEvent, Store, Terminal, Tier, TierChange
from members.selectors import IdentifiedMember
from points.errors import (
    AdjustmentNotPending,
    AlreadyCheckedIn,
    ClaimNotAllowed,
    DuplicateReceipt,
    DuplicateRefund,
    InsufficientPoints,
    InvalidAmount,
    InvalidPaidAt,
    InvalidPoints,
    PointsOverCap,
    PurchaseNotFound,
    RefundExceedsPurchase,
    SelfApprovalForbidden,
)
from points.locks import account_lock, account_lock_with, purchase_qs_for_update
from points.models import (
    CheckIn,
    PointsAccount,
    PointsAdjustment,
    PointsAllocation,
    PointsEntry,
    PointsLot,
    Purchase,
    Refund,
)

logger = logging.getLogger(__name__)
CENT = Decimal("0.01")
Kind = PointsEntry.Kind
Source = PointsEntry.Source


# -----------------------------------------------------------------------------
# Rules
# -----------------------------------------------------------------------------
def expiry_for(earned_at: datetime) -> datetime:
    """When points earned at ``earned_at`` expire (an aware datetime at local midnight).

    rolling: valid through the same calendar day N months later;
    year_end: valid through 31 December of the year after the year earned.
    """
    tz = timezone.get_current_timezone()
    local_day = timezone.localtime(earned_at, tz).date()
    if settings.LOYALTY_POINTS_EXPIRY_POLICY == "year_end":
        last_day = date(local_day.year + 1, 12, 31)
    else:
        last_day = local_day + relativedelta(months=settings.LOYALTY_POINTS_EXPIRY_MONTHS)
    return datetime.combine(last_day + timedelta(days=1), time.min, tzinfo=tz)


def points_cash_value(points: int) -> Decimal:
    """CNY value of ``points`` (rounded down to the cent)."""
    return (Decimal(points) / Decimal(settings.LOYALTY_POINTS_PER_CNY)).quantize(CENT, rounding=ROUND_DOWN)


def points_max_for_bill(amount: Decimal) -> int:
    """Most points that may pay a bill of ``amount``."""
    cash_cap = (amount * settings.LOYALTY_POINTS_MAX_BILL_SHARE).quantize(CENT, rounding=ROUND_DOWN)
    return int(cash_cap * settings.LOYALTY_POINTS_PER_CNY)


def points_for_amount(*, amount: Decimal, tier: Tier, multiplier: Decimal) -> int:
    """floor(amount × base rate × tier multiplier × campaign multiplier)."""
    raw = amount * settings.LOYALTY_POINTS_BASE_RATE * tier.earn_multiplier * multiplier
    return int(raw.to_integral_value(rounding=ROUND_FLOOR))


def qualifying_spend(*, member_id: int, at: datetime) -> Decimal:
    return _qualification(member_id=member_id, at=at)[0]


# Qualifying spend at a moment (plus an amount the statement's snapshot cannot
# see) and the highest active tier it reaches; parameters: that amount, member
# id, the start of the qualification period (excluded) and the moment.
_QUALIFICATION_SQL = (
    "SELECT s.spend, t.id, t.rank FROM ("
    "  SELECT COALESCE(SUM(amount - refunded_amount), 0) + %s::numeric AS spend FROM points_purchase"
    "  WHERE member_id = %s AND paid_at > %s AND paid_at <= %s) s "
    "LEFT JOIN LATERAL (SELECT id, rank FROM members_tier WHERE is_active AND threshold <= s.spend "
    "  ORDER BY rank DESC LIMIT 1) t ON true"
)

Qualification = tuple[Decimal, int | None, int | None]


def qualification_query(member_id: int, at: datetime, *, plus: Decimal = Decimal("0.00")) -> tuple[str, list[Any]]:
    """The SQL of the member's qualification at ``at`` (columns spend, id and
    rank of the tier it reaches) and its parameters; ``plus``: the amount of a
    purchase written by the same statement, which its snapshot does not hold
    (the till's one-statement purchase, ``points/till.py``)."""
    months = relativedelta(months=settings.LOYALTY_TIER_QUALIFICATION_MONTHS)
    return _QUALIFICATION_SQL, [plus, member_id, at - months, at]


def _qualification_from(spend: Any, tier_id: int | None, rank: int | None) -> Qualification:
    return Decimal(spend).quantize(CENT), tier_id, rank


def _qualification(*, member_id: int, at: datetime) -> Qualification:
    """Qualifying spend at ``at`` and the highest active tier it reaches (id
    and rank; ``None`` below every threshold), as ``tier_for_spend`` picks it."""
    with connection.cursor() as cursor:
        execute(cursor, *qualification_query(member_id, at))
        return _qualification_from(*cursor.fetchone())


# -----------------------------------------------------------------------------
# Ledger primitives (caller holds the account lock)
# -----------------------------------------------------------------------------
@dataclass
class Refs:
    """Where a ledger change comes from."""

    source: str
    store: Store | None = None
    terminal: Terminal | None = None
    purchase: Purchase | None = None
    refund: Refund | None = None
    by_user: AbstractBaseUser | None = None
    reason: str = ""
    reference: str = ""

    def fields(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "store": self.store,
            "terminal": self.terminal,
            "purchase": self.purchase,
            "refund": self.refund,
            "by_user": self.by_user if self.by_user is not None and self.by_user.is_authenticated else None,
            "reason": self.reason[:255],
            "reference": self.reference[:64],
        }


def _entry(account: PointsAccount, *, kind: str, points: int, at: datetime, refs: Refs) -> PointsEntry:
    account.balance += points
    entry = insert(PointsEntry, **_entry_values(account, kind=kind, points=points, at=at, refs=refs))
    webhook_points_changed(entry)  # delivered after commit, with a stable event id
    return entry


def _entry_values(account: PointsAccount, *, kind: str, points: int, at: datetime, refs: Refs) -> dict[str, Any]:
    """The entry's fields, ``account.balance`` already changed by ``points``."""
    return {
        "member_id": account.member_id, "kind": kind, "points": points, "balance_after": account.balance,
        "created_at": at, **refs.fields(),
    }


def _credit(
    account: PointsAccount,
    *,
    kind: str,
    points: int,
    at: datetime,
    refs: Refs,
    expires_at: datetime | None = None,
    pending_until: datetime | None = None,
    writes: tuple[list[Write], int] | None = None,
) -> tuple[PointsEntry, PointsLot | None]:
    """Add points: pay clawback debt first, open a lot with the rest (the entry
    and its lot in one statement). With ``writes`` (a list of ``Write`` and the
    entry's primary key, taken beforehand) the entry and its lot are added to
    the list, written by the caller's ``together`` statement (the purchase's
    last): the instances get their keys then."""
    if points <= 0:
        raise InvalidPoints()
    account.balance += points
    values = _entry_values(account, kind=kind, points=points, at=at, refs=refs)
    paid_down = min(account.debt, points)
    account.debt -= paid_down
    rest = points - paid_down
    lot_values = None
    if rest > 0:
        lot_values = {
            "member_id": account.member_id,
            "original": rest,
            "remaining": rest,
            "earned_at": at,
            "expires_at": expires_at or expiry_for(at),
            # Pending relative to the credit's own time, so back-dated and
            # replayed credits behave as they did at that moment.
            "pending_until": pending_until if pending_until and pending_until > at else None,
        }
        if lot_values["pending_until"] is not None:
            account.pending += rest
    lot = None
    if writes is not None:
        queue, entry_id = writes
        write, entry = insert_write(PointsEntry, id=entry_id, **values)
        queue.append(write)
        if lot_values is not None:
            write, lot = insert_write(PointsLot, entry=entry, **lot_values)
            queue.append(write)
    elif lot_values is not None:
        entry, lot = insert_pair(PointsEntry, values, PointsLot, "entry", lot_values)
    else:
        entry = insert(PointsEntry, **values)
    webhook_points_changed(entry)  # delivered after commit, with a stable event id
    return entry, lot


def pending_of(lot: PointsLot | None) -> int:
    """The points of a credit that are pending: its lot's, when the lot waits
    for release. Points that paid clawback debt opened no lot and are not
    pending (the account's ``pending`` grows by the same)."""
    return lot.original if lot is not None and lot.pending_until is not None else 0


def _draw(
    account: PointsAccount,
    *,
    kind: str,
    points: int,
    at: datetime,
    refs: Refs,
    spendable_only: bool,
    allow_debt: bool = False,
    first_lots: list[int] | None = None,
) -> PointsEntry:
    """Take ``points`` from lots, first to expire first (``first_lots`` before
    the rest). With ``allow_debt`` a shortfall becomes clawback debt (refunds);
    otherwise it raises ``InsufficientPoints`` and nothing is written."""
    if points <= 0:
        raise InvalidPoints()
    # Plain SQL on the open-lots index (lot_open_member_idx): this runs on every
    # exchange and every purchase paid with points (loyalty/sql.py says why).
    sql = _OPEN_LOTS_SQL + (_SPENDABLE_AT_SQL if spendable_only else "") + " ORDER BY expires_at, id"
    with connection.cursor() as cursor:
        execute(cursor, sql, {"member": account.member_id, "at": at})
        lots = cursor.fetchall()  # (id, remaining, pending_until), first to expire first
    if first_lots:
        lots.sort(key=lambda lot: 0 if lot[0] in first_lots else 1)  # stable: expiry order within each part
    available = sum(lot[1] for lot in lots)
    if available < points and not allow_debt:
        raise InsufficientPoints(available=available, requested=points)
    entry = _entry(account, kind=kind, points=-points, at=at, refs=refs)
    left = points
    taken: list[tuple[int, int, int]] = []  # (lot id, points taken, remaining after)
    for lot_id, remaining, pending_until in lots:
        if left == 0:
            break
        take = min(remaining, left)
        left -= take
        if pending_until is not None:  # not yet released: counted in pending
            account.pending -= take
        taken.append((lot_id, take, remaining - take))
    if taken:
        _lots_take(entry, taken)
    account.debt += left
    return entry


_OPEN_LOTS_SQL = "SELECT id, remaining, pending_until FROM points_pointslot WHERE member_id = %(member)s AND remaining > 0"
# Spendable at the debit's own time (``at``), like the expiry filter.
_SPENDABLE_AT_SQL = " AND (pending_until IS NULL OR pending_until <= %(at)s) AND expires_at > %(at)s"


def _lots_take(entry: PointsEntry, taken: list[tuple[int, int, int]]) -> None:
    """Set the drawn lots' remaining and record the allocations: two statements,
    the same whatever the number of lots (arrays), so each is prepared once."""
    ids = [lot_id for lot_id, _take, _after in taken]
    with connection.cursor() as cursor:
        execute(
            cursor,
            "UPDATE points_pointslot l SET remaining = v.remaining "
            "FROM unnest(%s::bigint[], %s::integer[]) AS v(id, remaining) WHERE l.id = v.id",
            [ids, [after for _lot_id, _take, after in taken]],
        )
        execute(
            cursor,
            "INSERT INTO points_pointsallocation (entry_id, lot_id, points) "
            "SELECT %s::bigint, v.lot_id, v.points FROM unnest(%s::bigint[], %s::integer[]) AS v(lot_id, points)",
            [entry.pk, ids, [-take for _lot_id, take, _after in taken]],
        )


def _return_to_lots(
    account: PointsAccount, *, points: int, drawn_by: PointsEntry, at: datetime, refs: Refs
) -> PointsEntry:
    """Give back ``points`` that ``drawn_by`` took, into the lots they came from
    (last drawn first), keeping those lots' original expiry. Debt is paid first."""
    entry = _entry(account, kind=Kind.REVERSE, points=points, at=at, refs=refs)
    left = points
    paid_down = min(account.debt, left)
    account.debt -= paid_down
    left -= paid_down
    if left == 0:
        return entry
    drawn: dict[int, int] = {}
    for allocation in PointsAllocation.objects.filter(entry__in=_draw_chain(drawn_by)).order_by("-pk"):
        drawn[allocation.lot_id] = drawn.get(allocation.lot_id, 0) - allocation.points
    lots = {lot.pk: lot for lot in PointsLot.objects.filter(pk__in=drawn).only("id", "original", "remaining", "pending_until", "expires_at")}
    allocations, changed = [], []
    for lot_id, net_drawn in drawn.items():
        if left == 0:
            break
        lot = lots[lot_id]
        give = min(net_drawn, left, lot.original - lot.remaining)
        if give <= 0:
            continue
        lot.remaining += give
        left -= give
        if lot.pending_until is not None:
            account.pending += give
        allocations.append(PointsAllocation(entry=entry, lot=lot, points=give))
        changed.append(lot)
    PointsLot.objects.bulk_update(changed, ["remaining"])
    PointsAllocation.objects.bulk_create(allocations)
    if left > 0:
        # Lots were drawn again meanwhile; the rest opens a lot with the
        # original entry's earliest expiry so nothing is lost or extended.
        expiry = min((lot.expires_at for lot in lots.values()), default=expiry_for(at))
        lot = insert(
            PointsLot,
            member_id=account.member_id, entry=entry, original=left, remaining=left, earned_at=at, expires_at=expiry
        )
    return entry


def _draw_chain(entry: PointsEntry) -> list[int]:
    """A redeem entry and the returns already made for it (they share its purchase)."""
    return [entry.pk] + list(
        PointsEntry.objects.filter(
            purchase_id=entry.purchase_id, kind=Kind.REVERSE, points__gt=0, source=Source.REFUND
        ).values_list("pk", flat=True)
    ) if entry.purchase_id else [entry.pk]


_ACCOUNT_SAVE_SQL = "UPDATE points_pointsaccount SET balance = %s, pending = %s, debt = %s, updated_at = %s WHERE member_id = %s"


def _save(account: PointsAccount) -> None:
    # account.save(update_fields=[...]) in plain SQL: on every purchase (loyalty/sql.py).
    account.updated_at = timezone.now()
    with connection.cursor() as cursor:
        execute(
            cursor,
            _ACCOUNT_SAVE_SQL, [account.balance, account.pending, account.debt, account.updated_at, account.member_id]
        )
        if cursor.rowcount != 1:  # as save(update_fields=...) would
            raise DatabaseError(f"points account of member {account.member_id} not found to save")


def _member_can_earn(member: Member) -> None:
    if member.status == Member.Status.FROZEN:
        raise MemberFrozen()
    if member.status == Member.Status.CLOSED:
        raise MemberClosed()


# -----------------------------------------------------------------------------
# Purchases
# -----------------------------------------------------------------------------
@dataclass
class PurchaseResult:
    purchase: Purchase
    balance: int
    spendable: int
    points_pending: int
    tier: Tier | None
    tier_changed: bool
    coupons_written_off: list[Any] = field(default_factory=list)


def paid_at_check(paid_at: datetime, now: datetime) -> None:
    """Raise ``InvalidPaidAt`` for a payment time the till may not record (future, or too old)."""
    if paid_at > now + timedelta(minutes=5) or paid_at < now - timedelta(days=settings.LOYALTY_PAID_AT_MAX_AGE_DAYS):
        raise InvalidPaidAt(days=settings.LOYALTY_PAID_AT_MAX_AGE_DAYS)


def purchase_preview(
    *, identified: IdentifiedMember | None, store: Store, amount: Decimal, points_to_use: int = 0,
    at: datetime | None = None,
) -> dict[str, Any]:
    """What ``purchase_record`` would do, without writing anything."""
    at = at or timezone.now()
    max_points = points_max_for_bill(amount)
    if identified is None:
        return {"points_to_earn": 0, "max_points_to_use": 0, "cash_paid_by_points": Decimal("0.00"),
                "amount_due": amount, "balance": None}
    member = identified.member
    account = PointsAccount.objects.filter(member=member).first()
    spendable = account.spendable if account else 0
    usable = min(max_points, spendable) if identified.by_code and member.can_spend else 0
    if points_to_use > usable:
        if points_to_use > max_points:
            raise PointsOverCap(max_points=max_points, detail={"max_points": max_points})
        if not identified.by_code:
            raise MemberCodeRequired()
        raise InsufficientPoints(available=spendable, requested=points_to_use)
    cash = points_cash_value(points_to_use)
    multiplier = campaign_multiplier_for(member=member, store=store, at=at)  # preview: no budget reserved
    earn = points_for_amount(amount=amount - cash, tier=member.tier, multiplier=multiplier) if member.can_earn else 0
    return {
        "points_to_earn": earn,
        "max_points_to_use": usable,
        "cash_paid_by_points": cash,
        "amount_due": amount - cash,
        "balance": account.balance if account else 0,
    }


def _purchase_record(
    *,
    store: Store,
    terminal: Terminal | None,
    receipt_no: str,
    amount: Decimal,
    paid_at: datetime | None = None,
    identified: IdentifiedMember | None = None,
    lines: list[Any] | None = None,
    points_to_use: int = 0,
    coupon_codes: list[str] | None = None,
    now: datetime | None = None,
) -> PurchaseResult:
    """Record a purchase at the till: earn points, pay part with points.

    Preconditions: ``identified`` comes from ``members.selectors.member_resolve``
    (by code, or by member number/phone, which can only earn).
    Raises ``DuplicateReceipt``, ``MemberCodeRequired``, ``MemberCodeAlreadyUsed``,
    ``MemberFrozen``, ``MemberClosed``, ``PointsOverCap``, ``InsufficientPoints``,
    ``InvalidPaidAt`` and the coupon errors of ``coupon_write_off``; on any of
    them nothing is written.

    ``purchase_record`` runs it in a savepoint (callers may catch an error and
    go on); ``purchase_record_in_transaction`` in the API's durable transaction.
    """
    now = now or timezone.now()
    if amount <= 0:
        raise InvalidAmount()
    paid_at = paid_at or now
    paid_at_check(paid_at, now)
    # Normalised before de-duplicating: a code typed in lower case and the
    # same code scanned are one coupon, written off once.
    from campaigns.services.coupons import coupon_code_normalise

    coupon_codes = list(dict.fromkeys(filter(None, (coupon_code_normalise(code) for code in coupon_codes or []))))
    member = identified.member if identified else None
    # What the request itself gets wrong first; then the receipt is written,
    # which answers a receipt or member code already used (a till's retry
    # learns its purchase was recorded) before the member's state is checked;
    # any later error rolls the insert back with everything else.
    if (points_to_use or coupon_codes) and (member is None or not identified.by_code):
        raise MemberCodeRequired()
    max_points = points_max_for_bill(amount)
    if member is not None and points_to_use > max_points:
        raise PointsOverCap(max_points=max_points, detail={"max_points": max_points})
    if member is None:
        purchase = _purchase_insert(
            store=store, terminal=terminal, receipt_no=receipt_no, amount=amount, paid_at=paid_at, lines=lines
        )
        return PurchaseResult(purchase, balance=0, spendable=0, points_pending=0, tier=None, tier_changed=False)

    tier = member.tier
    # One statement locks the member's account (lock order: account, then the
    # purchase), inserts the purchase, and reads what the rest asks of the
    # programme's set-up (any campaign running, the webhooks of ledger
    # changes) with the key of the earn entry, which the purchase's last
    # statement writes with its lot and message (_purchase_finish).
    # The purchase is inserted with the points it earns and uses when no
    # campaign changes them (the common case): its row is then written once,
    # not inserted and updated again by the last statement (_purchase_finish).
    cash = points_cash_value(points_to_use) if points_to_use else Decimal("0.00")
    fields = {
        "store": store, "terminal": terminal, "receipt_no": receipt_no, "amount": amount, "paid_at": paid_at,
        "lines": lines or [], "member": member, "tier": tier, "code_step": identified.code_step,
        "offline": identified.offline, "points_used": points_to_use, "cash_paid_by_points": cash,
        "points_earned": points_for_amount(amount=amount - cash, tier=tier, multiplier=ONE), "multiplier": ONE,
    }
    write, purchase = insert_write(Purchase, on_conflict_do_nothing=True, **fields)
    inserted = _purchase_points(purchase)
    campaigns_sql, campaigns_params = purchase_campaigns_column(paid_at)
    webhooks_sql, webhooks_params = subscribed_column(POINTS_CHANGED)
    account, (any_running, subscribed, entry_id) = account_lock_with(
        member,
        f"{campaigns_sql}, {webhooks_sql}, {next_id_column(PointsEntry)}",
        [*campaigns_params, *webhooks_params],
        before=write,
    )
    if purchase.pk is None:
        _purchase_conflict(fields)
    # The receipt (a till's retry learns its purchase was recorded) before the
    # member's state; an error rolls the insert back with everything else.
    _member_can_earn(member)
    with subscriptions_known({POINTS_CHANGED: subscribed}):
        return _purchase_earn(
            purchase, account, member=member, tier=tier, store=store, terminal=terminal, paid_at=paid_at, now=now,
            amount=amount, points_to_use=points_to_use, coupon_codes=coupon_codes, any_running=any_running,
            entry_id=entry_id, inserted=inserted,
        )


def _purchase_earn(
    purchase: Purchase,
    account: PointsAccount,
    *,
    member: Member,
    tier: Tier,
    store: Store,
    terminal: Terminal | None,
    paid_at: datetime,
    now: datetime,
    amount: Decimal,
    points_to_use: int,
    coupon_codes: list[str],
    any_running: bool,
    entry_id: int,
    inserted: tuple[Any, ...],
) -> PurchaseResult:
    """The rest of ``_purchase_record`` once the member's account is locked;
    ``entry_id``: the primary key taken for the earn entry; ``inserted``: the
    purchase's points as its insert wrote them (``_purchase_points``)."""
    refs = Refs(source=Source.PURCHASE, store=store, terminal=terminal, purchase=purchase)
    cash = purchase.cash_paid_by_points  # what the points pay, inserted with the purchase
    if points_to_use:
        _draw(account, kind=Kind.REDEEM, points=points_to_use, at=paid_at, refs=refs, spendable_only=True)
    coupons = _coupons_write_off(
        coupon_codes, store=store, terminal=terminal, purchase=purchase, member=member, amount=amount, at=now
    )
    running = campaigns_for_purchase(at=paid_at, any_running=any_running)
    boost = purchase_boost(
        member=member, store=store, tier=tier, base_amount=amount - cash, at=paid_at,
        reference=f"purchase:{purchase.pk}", running=running,
    )
    multiplier, earned = boost.multiplier, boost.earned
    pending = 0
    writes: list[Write] = []  # the earn's rows, written by _purchase_finish's statement
    if earned > 0:
        pending_until = paid_at + timedelta(days=settings.LOYALTY_POINTS_PENDING_DAYS)
        # The key taken with the lock keeps the member's entries numbered in the
        # order they were written only if no entry came since: points paying
        # part of the bill wrote one (its key the sequence's next), so then the
        # entry and lot are written at once, as every other credit's.
        earn_entry, lot = _credit(
            account, kind=Kind.EARN, points=earned, at=paid_at, refs=refs, pending_until=pending_until,
            writes=None if points_to_use else (writes, entry_id),
        )
        pending = pending_of(lot)
        notify_points_earned(earn_entry, lot=lot, member=member, writes=writes)
    purchase.points_earned, purchase.multiplier = earned, multiplier
    qualification = _purchase_finish(
        purchase, account, at=paid_at, writes=writes, points_written=_purchase_points(purchase) == inserted
    )
    new_tier = tier_upgrade_if_qualified(member=member, at=paid_at, qualification=qualification)
    if campaigns_after_purchase(purchase=purchase, at=paid_at, running=running):
        account.refresh_from_db()  # a first-purchase bonus was credited
    return PurchaseResult(
        purchase,
        balance=account.balance,
        spendable=account.spendable,
        points_pending=pending,
        tier=new_tier or tier,
        tier_changed=new_tier is not None,
        coupons_written_off=coupons,
    )


purchase_record = transaction.atomic(_purchase_record)


def purchase_record_in_transaction(**kwargs: Any) -> PurchaseResult:
    """``purchase_record`` without a savepoint of its own, for the API: inside
    its durable transaction, which an error rolls back whole (two statements
    fewer at the till). Raises ``RuntimeError`` outside a durable transaction,
    where a caller could catch an error and commit half a purchase."""
    if not in_durable_transaction():
        raise RuntimeError("purchase_record_in_transaction needs a durable transaction: use purchase_record")
    return _purchase_record(**kwargs)


def _coupons_write_off(codes: list[str], **kwargs: Any) -> list[dict[str, Any]]:
    """Write off the coupons of a purchase (after the account lock: lock order)."""
    if not codes:
        return []
    from campaigns.services.coupons import coupon_write_off

    written = []
    for code in codes:
        coupon = coupon_write_off(code=code, receipt_no=kwargs["purchase"].receipt_no, **kwargs)
        benefit = coupon.benefit
        written.append(
            {
                "code": coupon.code,
                "name": benefit.name,
                "kind": benefit.kind,
                "value": benefit.value,
                "cash_price": benefit.cash_price,
            }
        )
    return written


_PURCHASE_POINTS_SQL = (
    "UPDATE points_purchase SET points_earned = %s, points_used = %s, cash_paid_by_points = %s, multiplier = %s "
    "WHERE id = %s RETURNING 1"
)


def _purchase_points(purchase: Purchase) -> tuple[Any, ...]:
    """What ``_PURCHASE_POINTS_SQL`` writes of a purchase."""
    return purchase.points_earned, purchase.points_used, purchase.cash_paid_by_points, purchase.multiplier


def _purchase_finish(
    purchase: Purchase,
    account: PointsAccount,
    *,
    at: datetime,
    writes: list[Write] | None = None,
    points_written: bool = False,
) -> Qualification:
    """Save the purchase's points (unless ``points_written``: its row already
    holds them) and ``account`` (as ``_save``), after ``writes`` (the earn's
    entry, lot and message), and return the member's qualification at ``at``
    (as ``_qualification``): one statement, one round trip at the till. The
    spend is read from the statement's snapshot, which has the purchase
    (inserted before) and is not changed by these writes (they touch no amount)."""
    account.updated_at = timezone.now()
    found: dict[str, bool] = {"purchase": True} if points_written else {}
    saved = [] if points_written else [
        Write(
            _PURCHASE_POINTS_SQL,
            [*_purchase_points(purchase), purchase.pk],
            ("1",),
            lambda row: found.__setitem__("purchase", row is not None),
        )
    ]
    saved.append(
        Write(
            _ACCOUNT_SAVE_SQL + " RETURNING 1",
            [account.balance, account.pending, account.debt, account.updated_at, account.member_id],
            ("1",),
            lambda row: found.__setitem__("account", row is not None),
        )
    )
    qualification = together([*(writes or ()), *saved], *qualification_query(account.member_id, at))
    if not (found["purchase"] and found["account"]):  # as save(update_fields=...) would
        raise DatabaseError(f"purchase {purchase.pk} or the points account of member {account.member_id} not found")
    return _qualification_from(*qualification)


def _receipt_exists(store: Store, receipt_no: str) -> bool:
    with connection.cursor() as cursor:
        execute(cursor, "SELECT 1 FROM points_purchase WHERE store_id = %s AND receipt_no = %s", [store.pk, receipt_no])
        return cursor.fetchone() is not None


def _purchase_insert(**fields: Any) -> Purchase:
    """Insert the purchase; a receipt number or member code already used (by a
    concurrent request too: the insert waits for it) raises, writing nothing.
    ON CONFLICT rather than a savepoint around the insert: two statements fewer."""
    fields["lines"] = fields.get("lines") or []
    purchase = insert(Purchase, on_conflict_do_nothing=True, **fields)
    if purchase is None:
        _purchase_conflict(fields)
    return purchase


def _purchase_conflict(fields: dict[str, Any]) -> NoReturn:
    """Raise for a purchase the insert did not write (``ON CONFLICT DO NOTHING``)."""
    if _receipt_exists(fields["store"], fields["receipt_no"]):
        raise DuplicateReceipt(receipt_no=fields["receipt_no"])
    if fields.get("code_step") is not None and Purchase.objects.filter(
        member=fields["member"], code_step=fields["code_step"]
    ).exists():
        raise MemberCodeAlreadyUsed()
    raise IntegrityError(f"purchase {fields['receipt_no']!r} conflicts with a row under another unique constraint")


# -----------------------------------------------------------------------------
# Refunds
# -----------------------------------------------------------------------------
@dataclass
class RefundResult:
    refund: Refund
    balance: int
    coupons_restored: list[Any] = field(default_factory=list)


@transaction.atomic
def purchase_refund(
    *, store: Store, terminal: Terminal | None, receipt_no: str, refund_no: str, amount: Decimal,
    at: datetime | None = None,
) -> RefundResult:
    """Refund all or part of a purchase: reverse earned points in proportion,
    return used points into their original lots, clawing back points already
    spent as debt. Never refused for lack of points.
    Raises ``PurchaseNotFound``, ``DuplicateRefund``, ``RefundExceedsPurchase``."""
    at = at or timezone.now()
    if amount <= 0:
        raise InvalidAmount()
    head = Purchase.objects.filter(store=store, receipt_no=receipt_no).only("id", "member_id").first()
    if head is None:
        raise PurchaseNotFound(receipt_no=receipt_no)
    if Refund.objects.filter(store=store, refund_no=refund_no).exists():
        raise DuplicateRefund(refund_no=refund_no)
    account = account_lock(head.member) if head.member_id else None  # member before purchase: lock order
    purchase = purchase_qs_for_update().get(pk=head.pk)
    if amount > purchase.refundable_amount:
        raise RefundExceedsPurchase(refundable=purchase.refundable_amount, detail={"refundable": str(purchase.refundable_amount)})
    try:
        with transaction.atomic():
            refund = Refund.objects.create(
                purchase=purchase, store=store, terminal=terminal, refund_no=refund_no, amount=amount
            )
    except IntegrityError:
        raise DuplicateRefund(refund_no=refund_no) from None

    refunded_total = purchase.refunded_amount + amount
    # floor(points × refunded ÷ amount) in integer cents: a Decimal share
    # (e.g. 100/300 = 0.333…) rounds down and loses a point.
    refunded_cents, amount_cents = int(refunded_total * 100), int(purchase.amount * 100)
    returned = purchase.points_used * refunded_cents // amount_cents - purchase.points_returned
    # Earned points reverse over what they were earned on (a claim earns on
    # what was not refunded before it) ...
    offset_cents = int(purchase.claim_refund_offset * 100)
    reversed_ = (
        purchase.points_earned * (refunded_cents - offset_cents) // (amount_cents - offset_cents)
        - purchase.points_reversed
    )
    # ... and never take again points of this purchase that already expired:
    # the member lost those once.
    if reversed_ > 0 and purchase.points_earned:
        reversible = purchase.points_earned - purchase.points_reversed - _expired_from_purchase(purchase)
        reversed_ = max(min(reversed_, reversible), 0)
    clawback = 0
    if account is not None:
        refs = Refs(source=Source.REFUND, store=store, terminal=terminal, purchase=purchase, refund=refund)
        if returned > 0:
            redeem = purchase.entries.filter(kind=Kind.REDEEM).order_by("pk").first()
            assert redeem is not None, "a purchase that used points has its redeem entry"
            _return_to_lots(account, points=returned, drawn_by=redeem, at=at, refs=refs)
        if reversed_ > 0:
            debt_before = account.debt
            earn_lots = list(
                PointsLot.objects.filter(
                    member_id=account.member_id, entry__purchase=purchase, entry__kind=Kind.EARN
                ).values_list("pk", flat=True)
            )
            _draw(
                account, kind=Kind.REVERSE, points=reversed_, at=at, refs=refs, spendable_only=False,
                allow_debt=True, first_lots=earn_lots,
            )
            clawback = account.debt - debt_before
        _save(account)
    Refund.objects.filter(pk=refund.pk).update(
        points_reversed=max(reversed_, 0), points_returned=max(returned, 0), clawback=clawback
    )
    refund.points_reversed, refund.points_returned, refund.clawback = max(reversed_, 0), max(returned, 0), clawback
    restored: list[str] = []
    if refunded_total == purchase.amount:
        from campaigns.services.coupons import coupons_restore_for_purchase

        restored = [coupon.code for coupon in coupons_restore_for_purchase(purchase=purchase, at=at)]
    Purchase.objects.filter(pk=purchase.pk).update(
        refunded_amount=refunded_total,
        points_reversed=purchase.points_reversed + max(reversed_, 0),
        points_returned=purchase.points_returned + max(returned, 0),
    )
    return RefundResult(refund, balance=account.balance if account else 0, coupons_restored=restored)


def _expired_from_purchase(purchase: Purchase) -> int:
    """Points earned by ``purchase`` that expired (drawn from its earn lots by expiry)."""
    drawn = PointsAllocation.objects.filter(
        entry__kind=Kind.EXPIRE, lot__entry__purchase=purchase, lot__entry__kind=Kind.EARN
    ).aggregate(total=models.Sum("points"))["total"]
    return -(drawn or 0)


# -----------------------------------------------------------------------------
# Claims, check-in, generic credits and debits
# -----------------------------------------------------------------------------
@transaction.atomic
def purchase_claim(*, member: Member, store: Store, receipt_no: str, at: datetime | None = None) -> PurchaseResult:
    """A member claims a receipt recorded without a member, once, within the
    claim window; earns on what was not refunded at the member's tier.
    Raises ``PurchaseNotFound``, ``ClaimNotAllowed``, ``MemberFrozen``, ``MemberClosed``."""
    at = at or timezone.now()
    _member_can_earn(member)
    account = account_lock(member)
    purchase = purchase_qs_for_update().filter(store=store, receipt_no=receipt_no).first()
    if purchase is None:
        raise PurchaseNotFound(receipt_no=receipt_no)
    if purchase.member_id is not None:
        raise ClaimNotAllowed(reason=gettext("it was already credited to a member"), detail={"reason": "already_claimed"})
    if purchase.paid_at < at - timedelta(days=settings.LOYALTY_CLAIM_WINDOW_DAYS):
        raise ClaimNotAllowed(reason=gettext("the claim window has passed"), detail={"reason": "too_old"})
    net = purchase.refundable_amount
    if net <= 0:
        raise ClaimNotAllowed(reason=gettext("it was fully refunded"), detail={"reason": "refunded"})
    tier = member.tier
    boost = purchase_boost(
        member=member, store=store, tier=tier, base_amount=net, at=purchase.paid_at, reference=f"purchase:{purchase.pk}"
    )
    multiplier, earned = boost.multiplier, boost.earned
    purchase.member, purchase.tier, purchase.claimed_at = member, tier, at
    purchase.points_earned, purchase.multiplier = earned, multiplier
    purchase.claim_refund_offset = purchase.refunded_amount
    purchase.save(
        update_fields=["member", "tier", "claimed_at", "points_earned", "multiplier", "claim_refund_offset"]
    )
    pending = 0
    if earned > 0:
        refs = Refs(source=Source.CLAIM, store=store, purchase=purchase)
        pending_until = purchase.paid_at + timedelta(days=settings.LOYALTY_POINTS_PENDING_DAYS)
        earn_entry, lot = _credit(account, kind=Kind.EARN, points=earned, at=at, refs=refs, pending_until=pending_until)
        pending = pending_of(lot)
        notify_points_earned(earn_entry)
    _save(account)
    new_tier = tier_upgrade_if_qualified(member=member, at=at)
    if campaigns_after_purchase(purchase=purchase, at=at):
        account.refresh_from_db()  # a first-purchase bonus was credited
    return PurchaseResult(
        purchase, balance=account.balance, spendable=account.spendable, points_pending=pending,
        tier=new_tier or tier, tier_changed=new_tier is not None,
    )


@transaction.atomic
def points_credit(
    *, member: Member, points: int, kind: str, refs: Refs, at: datetime | None = None,
    expires_at: datetime | None = None,
) -> PointsEntry:
    """Credit points (bonus, campaign, adjustment, import). Raises ``InvalidPoints``,
    ``MemberFrozen``, ``MemberClosed``."""
    at = at or timezone.now()
    _member_can_earn(member)
    account = account_lock(member)
    entry, _ = _credit(account, kind=kind, points=points, at=at, refs=refs, expires_at=expires_at)
    _save(account)
    return entry


@transaction.atomic
def points_debit(
    *, member: Member, points: int, kind: str, refs: Refs, at: datetime | None = None,
    account: PointsAccount | None = None,
) -> PointsEntry:
    """Spend points (benefit exchange, negative adjustment), first to expire first.
    ``account``: the member's account when the caller already holds its lock.
    Raises ``InvalidPoints``, ``InsufficientPoints``, ``MemberFrozen``, ``MemberClosed``."""
    at = at or timezone.now()
    _member_can_earn(member)
    account = account if account is not None else account_lock(member)
    entry = _draw(account, kind=kind, points=points, at=at, refs=refs, spendable_only=True)
    _save(account)
    return entry


@transaction.atomic
def member_check_in(*, member: Member, at: datetime | None = None) -> PointsEntry:
    """Daily check-in points, once per local day. Raises ``AlreadyCheckedIn``."""
    at = at or timezone.now()
    _member_can_earn(member)
    account = account_lock(member)
    day = timezone.localtime(at).date()
    points = settings.LOYALTY_CHECK_IN_POINTS
    try:
        with transaction.atomic():
            CheckIn.objects.create(member=member, day=day, points=points)
    except IntegrityError:
        raise AlreadyCheckedIn() from None
    entry, _ = _credit(account, kind=Kind.BONUS, points=points, at=at, refs=Refs(source=Source.CHECK_IN))
    _save(account)
    campaigns_after_check_in(member=member, at=at)
    return entry


# -----------------------------------------------------------------------------
# Operator adjustments
# -----------------------------------------------------------------------------
@transaction.atomic
def adjustment_request(
    *, member: Member, points: int, reason: str, by_user: AbstractBaseUser, batch: str = ""
) -> PointsAdjustment:
    """Adjust points with a mandatory reason. Up to the approval threshold it
    applies at once; above it, it waits for a second operator.
    Raises ``ReasonRequired``, ``InvalidPoints`` and, when applied at once,
    ``InsufficientPoints``."""
    from members.errors import ReasonRequired

    reason = (reason or "").strip()
    if not reason:
        raise ReasonRequired()
    if not isinstance(points, int) or points == 0:
        raise InvalidPoints()
    if member.status == Member.Status.CLOSED:
        raise MemberClosed()
    adjustment = PointsAdjustment.objects.create(
        member=member, points=points, reason=reason, requested_by=by_user, batch=batch
    )
    if abs(points) <= settings.LOYALTY_ADJUST_APPROVAL_THRESHOLD:
        _adjustment_apply(adjustment, by_user=by_user)
    return adjustment


def _adjustment_apply(adjustment: PointsAdjustment, *, by_user: AbstractBaseUser) -> None:
    account = account_lock(adjustment.member)
    refs = Refs(source=Source.OPERATOR, by_user=adjustment.requested_by, reason=adjustment.reason,
                reference=f"adjustment:{adjustment.pk}")
    at = timezone.now()
    if adjustment.points > 0:
        entry, _ = _credit(account, kind=Kind.ADJUST, points=adjustment.points, at=at, refs=refs)
    else:
        entry = _draw(account, kind=Kind.ADJUST, points=-adjustment.points, at=at, refs=refs, spendable_only=True)
    _save(account)
    adjustment.entry = entry
    adjustment.status = PointsAdjustment.Status.APPLIED
    adjustment.decided_by = by_user
    adjustment.decided_at = at
    adjustment.save(update_fields=["entry", "status", "decided_by", "decided_at"])


@transaction.atomic
def adjustment_approve(*, adjustment: PointsAdjustment, by_user: AbstractBaseUser) -> PointsAdjustment:
    """A second operator approves. Raises ``SelfApprovalForbidden``,
    ``AdjustmentNotPending``, ``InsufficientPoints``."""
    adjustment = PointsAdjustment.objects.select_for_update().get(pk=adjustment.pk)
    if adjustment.status != PointsAdjustment.Status.PENDING:
        raise AdjustmentNotPending()
    if adjustment.requested_by_id == by_user.pk:
        raise SelfApprovalForbidden()
    _adjustment_apply(adjustment, by_user=by_user)
    return adjustment


@transaction.atomic
def adjustment_reject(*, adjustment: PointsAdjustment, by_user: AbstractBaseUser) -> PointsAdjustment:
    adjustment = PointsAdjustment.objects.select_for_update().get(pk=adjustment.pk)
    if adjustment.status != PointsAdjustment.Status.PENDING:
        raise AdjustmentNotPending()
    adjustment.status = PointsAdjustment.Status.REJECTED
    adjustment.decided_by = by_user
    adjustment.decided_at = timezone.now()
    adjustment.save(update_fields=["status", "decided_by", "decided_at"])
    return adjustment


# -----------------------------------------------------------------------------
# Tiers
# -----------------------------------------------------------------------------
def tier_upgrade_if_qualified(
    *, member: Member, at: datetime, qualification: Qualification | None = None
) -> Tier | None:
    """Upgrade at once when qualifying spend crosses a higher tier's threshold.
    One query when nothing changes (the spend and the tier it reaches together);
    none when the caller read ``qualification`` at ``at`` in its transaction."""
    spend, target_id, target_rank = qualification or _qualification(member_id=member.pk, at=at)
    if target_id is None or target_id == member.tier_id or target_rank <= member.tier.rank:
        return None
    target = Tier.objects.get(pk=target_id)
    previous = member.tier
    Member.objects.filter(pk=member.pk).update(tier=target, tier_since=at, updated_at=timezone.now())
    member.tier, member.tier_since = target, at
    TierChange.objects.create(
        member=member, from_tier=previous, to_tier=target, reason=TierChange.Reason.UPGRADE, qualifying_spend=spend
    )
    MemberEvent.objects.create(
        member=member, kind=MemberEvent.Kind.TIER_CHANGED, reason="upgrade",
        data={"from": previous.code, "to": target.code, "qualifying_spend": str(spend)},
    )
    from campaigns.services.issuing import tier_privileges_grant

    tier_privileges_grant(member=member, tier=target, at=at)
    notify_tier_changed(member, previous, target, at=at)
    webhook_tier_changed(member, previous, target, reason=TierChange.Reason.UPGRADE, at=at)
    return target

