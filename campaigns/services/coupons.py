"""Coupons: issue, exchange for points, write off, restore, void, re-issue, expire.

Lock order (project-wide): member → points account → coupons (by pk). Issuing
to a member takes the member's points account lock first, so per-member limits
hold under concurrency; stock is a conditional F() update, never oversold.
"""

from __future__ import annotations

import logging
import secrets
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import connection, transaction
from django.utils import formats, timezone
from django.utils.translation import gettext

from campaigns.errors import (
    BenefitUnavailable,
    CouponAlreadyWrittenOff,
    CouponBelowMinimumSpend,
    CouponExpired,
    CouponNotFound,
    CouponNotMembers,
    CouponNotRestorable,
    CouponNotYetValid,
    CouponVoid,
    CouponWrongStore,
    MemberLimitReached,
    OutOfStock,
)
from campaigns.models import Benefit, Coupon, CouponEvent
from campaigns.services.notifications import notify_coupon_issued
from campaigns.services.webhooks import webhook_coupon_written_off
from loyalty.sql import execute, in_durable_transaction, insert
from members.errors import MemberClosed, MemberFrozen, ReasonRequired
from members.models import Member, Store, Terminal
from points.locks import account_lock

logger = logging.getLogger(__name__)

# No 0/O, 1/I/L: readable aloud and typed without mistakes.
CODE_ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"
CODE_LENGTH = 12  # 31^12 ≈ 7.9e17: unguessable under throttling


def coupon_code_new() -> str:
    return "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))


def coupon_code_normalise(code: str) -> str:
    """Scanned or typed codes: strip spaces and dashes, upper-case."""
    return "".join(ch for ch in (code or "").strip().upper() if ch not in " -")[:64]


def _event(coupon: Coupon, kind: str, *, at: datetime, **fields: Any) -> CouponEvent:
    by_user = fields.pop("by_user", None)
    if by_user is not None and not by_user.is_authenticated:
        by_user = None
    return insert(CouponEvent, coupon=coupon, kind=kind, created_at=at, by_user=by_user, **fields)


def _validity(benefit: Benefit, at: datetime) -> tuple[datetime, datetime]:
    if benefit.validity == Benefit.Validity.FIXED:
        return benefit.valid_from or at, benefit.valid_until  # type: ignore[return-value]
    return at, at + timedelta(days=benefit.valid_days)


def benefit_unavailable_reason(*, benefit: Benefit, member: Member, at: datetime | None = None) -> str | None:
    """Why ``member`` cannot get ``benefit`` now (None when they can). Stock and
    per-member limits are re-checked under locks when issuing."""
    at = at or timezone.now()
    if not benefit.is_active:
        return "inactive"
    if benefit.active_from and at < benefit.active_from:
        return "not_started"
    if benefit.active_until and at >= benefit.active_until:
        return "ended"
    if benefit.validity == Benefit.Validity.FIXED and benefit.valid_until and benefit.valid_until <= at:
        return "ended"
    eligible = _eligible_tier_ids(benefit)
    if eligible and member.tier_id not in eligible:
        return "tier"
    if benefit.total_stock is not None and benefit.issued_count >= benefit.total_stock:
        return "out_of_stock"
    return None


def _eligible_tier_ids(benefit: Benefit) -> list[int]:
    """The tiers that may get ``benefit`` (none: every tier). Prefetched by the
    catalogue; otherwise one prepared statement (every exchange asks)."""
    prefetched = getattr(benefit, "_prefetched_objects_cache", {})
    if "eligible_tiers" in prefetched:
        return [tier.pk for tier in prefetched["eligible_tiers"]]
    with connection.cursor() as cursor:
        execute(cursor, _ELIGIBLE_TIERS_SQL, [benefit.pk])
        return [row[0] for row in cursor.fetchall()]


_ELIGIBLE_TIERS_SQL = (
    f"SELECT tier_id FROM {Benefit.eligible_tiers.through._meta.db_table} WHERE benefit_id = %s"  # noqa: S608 - model table
)


def _stock_take(benefit: Benefit) -> None:
    # Plain SQL: on every exchange, under the member's lock (loyalty/sql.py).
    with connection.cursor() as cursor:
        execute(
            cursor,
            "UPDATE campaigns_benefit SET issued_count = issued_count + 1 "
            "WHERE id = %s AND (total_stock IS NULL OR issued_count < total_stock)",
            [benefit.pk],
        )
        if cursor.rowcount == 0:
            raise OutOfStock()


def _limit_check(benefit: Benefit, member: Member) -> None:
    if benefit.per_member_limit is None:
        return
    held = Coupon.objects.filter(benefit=benefit, member=member).exclude(status=Coupon.Status.VOID).count()
    if held >= benefit.per_member_limit:
        raise MemberLimitReached(limit=benefit.per_member_limit)


def _member_active(member: Member) -> None:
    if member.status == Member.Status.FROZEN:
        raise MemberFrozen()
    if member.status == Member.Status.CLOSED:
        raise MemberClosed()


@transaction.atomic
def coupon_issue(
    *,
    benefit: Benefit,
    member: Member,
    source: str,
    by_user: AbstractBaseUser | None = None,
    reference: str = "",
    reason: str = "",
    at: datetime | None = None,
    check_eligibility: bool = True,
) -> Coupon:
    """Issue one coupon of ``benefit`` to ``member``.

    Raises ``BenefitUnavailable``, ``OutOfStock``, ``MemberLimitReached``,
    ``MemberFrozen``, ``MemberClosed``; a repeated ``reference`` returns the
    coupon already issued for it (tier privilege periods, campaign runs)."""
    at = at or timezone.now()
    _member_active(member)
    account_lock(member)  # serialises per-member limits
    if reference:
        existing = Coupon.objects.filter(benefit=benefit, member=member, reference=reference).first()
        if existing is not None:
            return existing
    if check_eligibility:
        _eligibility_check(benefit, member, at)
    _limit_check(benefit, member)
    _stock_take(benefit)
    return _coupon_create(benefit=benefit, member=member, source=source, at=at, reference=reference,
                          by_user=by_user, reason=reason or source)


def _coupon_create(
    *, benefit: Benefit, member: Member, source: str, at: datetime, reason: str, code: str | None = None, **fields: Any
) -> Coupon:
    """The coupon row, its ``issued`` event and the member's message (stock already taken)."""
    by_user = fields.pop("by_user", None)
    valid_from, valid_until = _validity(benefit, at)
    coupon = insert(
        Coupon,
        code=code or coupon_code_new(),
        benefit=benefit,
        member=member,
        source=source,
        valid_from=valid_from,
        valid_until=valid_until,
        issued_at=at,
        **fields,
    )
    _event(coupon, CouponEvent.Kind.ISSUED, at=at, by_user=by_user, reason=reason)
    notify_coupon_issued(coupon)
    return coupon


def _eligibility_check(benefit: Benefit, member: Member, at: datetime) -> None:
    reason_code = benefit_unavailable_reason(benefit=benefit, member=member, at=at)
    if reason_code == "out_of_stock":
        raise OutOfStock()
    if reason_code is not None:
        raise BenefitUnavailable(reason=reason_text(reason_code), detail={"reason": reason_code})


def _benefit_exchange(*, benefit: Benefit, member: Member, at: datetime | None = None, code: str = "") -> Coupon:
    """Exchange points for a coupon: the points debit, the stock and the coupon
    are one transaction. ``code``: the new coupon's code when the caller made
    it beforehand (``coupon_code_new``), e.g. to draw its QR image before the lock.
    Raises ``BenefitUnavailable``, ``OutOfStock``, ``MemberLimitReached``,
    ``InsufficientPoints``, ``MemberFrozen``, ``MemberClosed``.

    Every exchange of a member queues behind their account lock until commit,
    so the read-only checks come before it and the lock is taken once.

    ``benefit_exchange`` runs it in a savepoint; ``benefit_exchange_in_transaction``
    in the API's durable transaction."""
    from points.models import PointsEntry
    from points.services import Refs, points_debit

    at = at or timezone.now()
    if benefit.points_price <= 0:
        raise BenefitUnavailable(reason=reason_text("not_exchangeable"), detail={"reason": "not_exchangeable"})
    _member_active(member)
    _eligibility_check(benefit, member, at)
    account = account_lock(member)
    _limit_check(benefit, member)
    code = code or coupon_code_new()
    entry = points_debit(
        member=member,
        points=benefit.points_price,
        kind=PointsEntry.Kind.REDEEM,
        refs=Refs(source=PointsEntry.Source.BENEFIT, reason=benefit.name, reference=f"coupon:{code}"),
        at=at,
        account=account,
    )
    _stock_take(benefit)
    return _coupon_create(
        benefit=benefit, member=member, source=Coupon.Source.EXCHANGE, at=at, reason=Coupon.Source.EXCHANGE,
        code=code, exchange_entry=entry,
    )


benefit_exchange = transaction.atomic(_benefit_exchange)


def benefit_exchange_in_transaction(**kwargs: Any) -> Coupon:
    """``benefit_exchange`` without a savepoint of its own, for the API (inside
    its durable transaction). Raises ``RuntimeError`` outside one."""
    if not in_durable_transaction():
        raise RuntimeError("benefit_exchange_in_transaction needs a durable transaction: use benefit_exchange")
    return _benefit_exchange(**kwargs)


def _first_write_off(coupon: Coupon) -> CouponAlreadyWrittenOff:
    store = coupon.written_off_store
    return CouponAlreadyWrittenOff(
        store=store.name if store else "-",
        terminal=coupon.written_off_terminal.name if coupon.written_off_terminal else "-",
        receipt_no=coupon.written_off_receipt or "-",
        at=formats.date_format(timezone.localtime(coupon.written_off_at), "Y-m-d H:i:s"),
        detail={
            "store": store.code if store else None,
            "terminal": coupon.written_off_terminal_id,
            "receipt_no": coupon.written_off_receipt,
            "written_off_at": coupon.written_off_at.isoformat() if coupon.written_off_at else None,
        },
    )


def coupon_usable_check(
    coupon: Coupon, *, store: Store, member: Member | None, at: datetime, amount: Decimal | None = None
) -> None:
    """Raise the error that stops ``coupon`` from being used now, if any."""
    if coupon.status == Coupon.Status.WRITTEN_OFF:
        raise _first_write_off(coupon)
    if coupon.status == Coupon.Status.VOID:
        raise CouponVoid()
    if coupon.status == Coupon.Status.EXPIRED or coupon.valid_until <= at:
        raise CouponExpired(
            valid_until=formats.date_format(timezone.localtime(coupon.valid_until), "Y-m-d H:i"),
            detail={"valid_until": coupon.valid_until.isoformat()},
        )
    if coupon.valid_from > at:
        raise CouponNotYetValid(
            valid_from=formats.date_format(timezone.localtime(coupon.valid_from), "Y-m-d H:i"),
            detail={"valid_from": coupon.valid_from.isoformat()},
        )
    stores = [s.pk for s in coupon.benefit.stores.all()]
    if stores and store.pk not in stores:
        raise CouponWrongStore(detail={"store": store.code})
    if coupon.member_id is not None:
        if member is not None and coupon.member_id != member.pk:
            raise CouponNotMembers()
        _member_active(coupon.member)  # type: ignore[arg-type]
    if amount is not None and coupon.benefit.min_spend and amount < coupon.benefit.min_spend:
        raise CouponBelowMinimumSpend(min_spend=coupon.benefit.min_spend)


@transaction.atomic
def coupon_write_off(
    *,
    code: str,
    store: Store,
    terminal: Terminal | None,
    receipt_no: str = "",
    member: Member | None = None,
    purchase: Any = None,
    amount: Decimal | None = None,
    by_user: AbstractBaseUser | None = None,
    at: datetime | None = None,
) -> Coupon:
    """Write a coupon off, atomically and once. Raises ``CouponNotFound``,
    ``CouponAlreadyWrittenOff`` (naming the first write-off), ``CouponVoid``,
    ``CouponExpired``, ``CouponNotYetValid``, ``CouponWrongStore``,
    ``CouponNotMembers``, ``CouponBelowMinimumSpend``, ``MemberFrozen``."""
    from campaigns.locks import coupon_qs_for_update

    at = at or timezone.now()
    normalised = coupon_code_normalise(code)
    # PostgreSQL text cannot hold NUL: no coupon has such a code.
    head = None if "\x00" in normalised else Coupon.objects.filter(code=normalised).only("id", "member_id").first()
    if head is None:
        raise CouponNotFound(detail={"code": normalised})
    if head.member_id is not None and member is not None and member.pk != head.member_id:
        # Refused before any lock: the caller holds its own member's account,
        # and locking the owner's too could deadlock two tills swapping coupons.
        raise CouponNotMembers()
    if head.member_id is not None and member is None:
        owner = Member.objects.get(pk=head.member_id)
        account_lock(owner)  # lock order: account before coupon
    coupon = (
        coupon_qs_for_update()
        .select_related("benefit", "member", "written_off_store", "written_off_terminal")
        .get(pk=head.pk)
    )
    coupon_usable_check(coupon, store=store, member=member, at=at, amount=amount)
    coupon.status = Coupon.Status.WRITTEN_OFF
    coupon.written_off_at = at
    coupon.written_off_store = store
    coupon.written_off_terminal = terminal
    coupon.written_off_receipt = receipt_no
    coupon.purchase = purchase
    coupon.save(
        update_fields=[
            "status",
            "written_off_at",
            "written_off_store",
            "written_off_terminal",
            "written_off_receipt",
            "purchase",
        ]
    )
    _event(
        coupon, CouponEvent.Kind.WRITTEN_OFF, at=at, store=store, terminal=terminal, receipt_no=receipt_no,
        by_user=by_user,
    )
    webhook_coupon_written_off(coupon)
    return coupon


@transaction.atomic
def coupons_restore_for_purchase(*, purchase: Any, at: datetime | None = None) -> list[Coupon]:
    """After a purchase is fully refunded: coupons used on it go back to
    ``issued`` when still valid (others stay written off, history kept)."""
    from campaigns.locks import coupon_qs_for_update

    at = at or timezone.now()
    restored = []
    for coupon in coupon_qs_for_update().filter(purchase=purchase, status=Coupon.Status.WRITTEN_OFF):
        if coupon.valid_until <= at:
            continue
        coupon.status = Coupon.Status.ISSUED
        coupon.written_off_at = None
        coupon.written_off_store = None
        coupon.written_off_terminal = None
        coupon.written_off_receipt = ""
        coupon.purchase = None
        coupon.save(
            update_fields=[
                "status",
                "written_off_at",
                "written_off_store",
                "written_off_terminal",
                "written_off_receipt",
                "purchase",
            ]
        )
        _event(coupon, CouponEvent.Kind.RESTORED, at=at, store=purchase.store, receipt_no=purchase.receipt_no)
        restored.append(coupon)
    return restored


@transaction.atomic
def coupon_void(*, coupon: Coupon, by_user: AbstractBaseUser | None, reason: str) -> Coupon:
    """Cancel an issued coupon. Raises ``ReasonRequired``, ``CouponNotRestorable``."""
    from campaigns.locks import coupon_qs_for_update

    reason = (reason or "").strip()
    if not reason:
        raise ReasonRequired()
    coupon = coupon_qs_for_update().get(pk=coupon.pk)
    if coupon.status != Coupon.Status.ISSUED:
        raise CouponNotRestorable(status=coupon.get_status_display())
    coupon.status = Coupon.Status.VOID
    coupon.save(update_fields=["status"])
    _event(coupon, CouponEvent.Kind.VOID, at=timezone.now(), by_user=by_user, reason=reason)
    return coupon


@transaction.atomic
def coupon_reissue(*, coupon: Coupon, by_user: AbstractBaseUser | None, reason: str) -> Coupon:
    """Void a coupon (if still issued) and issue a replacement linked to it,
    same benefit and member, without taking stock or limits again.
    Raises ``ReasonRequired``, ``CouponNotRestorable`` (written off or already replaced)."""
    reason = (reason or "").strip()
    if not reason:
        raise ReasonRequired()
    if coupon.status == Coupon.Status.ISSUED:
        coupon = coupon_void(coupon=coupon, by_user=by_user, reason=reason)
    if coupon.status == Coupon.Status.WRITTEN_OFF or Coupon.objects.filter(replaces=coupon).exists():
        raise CouponNotRestorable(status=coupon.get_status_display())
    at = timezone.now()
    valid_from, valid_until = _validity(coupon.benefit, at)
    if coupon.benefit.validity == Benefit.Validity.FIXED:
        valid_from, valid_until = coupon.valid_from, max(coupon.valid_until, at + timedelta(days=1))
    new = Coupon.objects.create(
        code=coupon_code_new(),
        benefit=coupon.benefit,
        member=coupon.member,
        source=Coupon.Source.REISSUE,
        valid_from=valid_from,
        valid_until=valid_until,
        issued_at=at,
        replaces=coupon,
    )
    _event(new, CouponEvent.Kind.ISSUED, at=at, by_user=by_user, reason=reason)
    return new


def coupons_expire_due(*, as_of: datetime | None = None, batch_size: int = 5000) -> int:
    """Set-based: issued coupons past their validity become expired, each with
    an event. Safe to re-run."""
    as_of = as_of or timezone.now()
    total = 0
    while True:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(
                """
                WITH due AS (
                    SELECT id FROM campaigns_coupon WHERE status = 'issued' AND valid_until <= %(as_of)s
                    ORDER BY id LIMIT %(limit)s FOR UPDATE SKIP LOCKED
                ), changed AS (
                    UPDATE campaigns_coupon c SET status = 'expired' FROM due WHERE c.id = due.id RETURNING c.id
                )
                INSERT INTO campaigns_couponevent (coupon_id, kind, receipt_no, reason, created_at)
                SELECT id, 'expired', '', '', %(now)s FROM changed
                """,
                {"as_of": as_of, "limit": batch_size, "now": timezone.now()},
            )
            count = cursor.rowcount
        total += count
        if count < batch_size:
            break
    logger.info("coupon expiry as of %s: %s expired", as_of, total)
    return total


def reason_text(code: str) -> str:
    """Translated text of a ``benefit_unavailable_reason`` code."""
    texts = {
        "inactive": gettext("not available"),
        "not_started": gettext("not started yet"),
        "ended": gettext("ended"),
        "tier": gettext("not for your tier"),
        "out_of_stock": gettext("out of stock"),
        "limit": gettext("per-member limit reached"),
        "points": gettext("not enough points"),
        "not_exchangeable": gettext("not exchangeable for points"),
    }
    return texts.get(code, code)

