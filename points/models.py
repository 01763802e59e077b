"""Purchases, refunds and the append-only points ledger.

Invariants (checked by ``python manage.py check_ledger`` and backed by
database constraints where a row can express them):

- ``PointsAccount.balance`` = sum of the member's ``PointsEntry.points``
  = sum of open lots' ``remaining`` − ``debt``;
- ``debt`` (refund clawback not yet paid down) is ≥ 0, and while it is > 0
  no lot holds points (credits pay debt first, before a lot opens);
- every lot has 0 ≤ ``remaining`` ≤ ``original``, and ``original`` −
  draws + returns recorded in ``PointsAllocation`` = ``remaining``;
- entries and allocations are never updated or deleted (a database trigger
  refuses it); a mistake is corrected with a new entry.
"""

from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.db import models
from django.db.models import F, Q
from django.utils.translation import gettext_lazy as _

from members.models import Member, Store, Terminal, Tier


class PointsAccount(models.Model):
    """Cached balance of one member; its row lock serialises every change of
    the member's points (lots and entries are written only under it)."""

    member = models.OneToOneField(
        Member, on_delete=models.PROTECT, primary_key=True, related_name="points_account", verbose_name=_("member")
    )
    balance = models.IntegerField(_("balance"), default=0)
    pending = models.IntegerField(_("pending"), default=0, help_text=_("Earned points not yet spendable."))
    debt = models.IntegerField(_("clawback debt"), default=0, help_text=_("Points owed after a refund."))
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)

    class Meta:
        verbose_name = _("points account")
        verbose_name_plural = _("points accounts")
        constraints = [
            models.CheckConstraint(condition=Q(pending__gte=0), name="account_pending_non_negative"),
            models.CheckConstraint(condition=Q(debt__gte=0), name="account_debt_non_negative"),
            # Spendable (balance + debt − pending) is never negative.
            models.CheckConstraint(
                condition=Q(balance__gte=F("pending") - F("debt")), name="account_spendable_non_negative"
            ),
            # Below zero only through clawback: then the balance is exactly the debt.
            models.CheckConstraint(
                condition=Q(debt=0) | (Q(balance=-F("debt")) & Q(pending=0)), name="account_debt_means_no_lots"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.member_id}: {self.balance}"

    @property
    def spendable(self) -> int:
        return max(self.balance - self.pending, 0) if self.debt == 0 else 0


class Purchase(models.Model):
    # PROTECT: the ledger refers to purchases; they are never deleted.
    # No index of its own: purchase_unique_receipt_per_store leads with the store.
    store = models.ForeignKey(
        Store, on_delete=models.PROTECT, related_name="purchases", verbose_name=_("store"), db_index=False
    )
    terminal = models.ForeignKey(
        Terminal, on_delete=models.PROTECT, null=True, blank=True, related_name="purchases", verbose_name=_("terminal")
    )
    receipt_no = models.CharField(_("receipt number"), max_length=64)
    # No index of its own: purchase_member_paid_idx leads with the member.
    member = models.ForeignKey(
        Member, on_delete=models.PROTECT, null=True, blank=True, related_name="purchases", verbose_name=_("member"),
        db_index=False,
    )
    tier = models.ForeignKey(
        Tier, on_delete=models.PROTECT, null=True, blank=True, related_name="+", verbose_name=_("tier at purchase")
    )
    amount = models.DecimalField(_("amount"), max_digits=12, decimal_places=2)
    refunded_amount = models.DecimalField(_("refunded amount"), max_digits=12, decimal_places=2, default=Decimal("0"))
    paid_at = models.DateTimeField(_("paid at"))
    lines = models.JSONField(_("lines"), default=list, blank=True)
    points_earned = models.IntegerField(_("points earned"), default=0)
    points_used = models.IntegerField(_("points used"), default=0)
    cash_paid_by_points = models.DecimalField(
        _("paid by points (CNY)"), max_digits=12, decimal_places=2, default=Decimal("0")
    )
    points_reversed = models.IntegerField(_("points reversed by refunds"), default=0)
    points_returned = models.IntegerField(_("points returned by refunds"), default=0)
    multiplier = models.DecimalField(_("earn multiplier applied"), max_digits=8, decimal_places=4, default=Decimal("1"))
    # Time step of the member code used; unique per member so a code serves one purchase.
    code_step = models.BigIntegerField(_("member code step"), null=True, blank=True)
    offline = models.BooleanField(_("queued offline"), default=False, help_text=_("Flagged for audit."))
    claimed_at = models.DateTimeField(_("claimed at"), null=True, blank=True)
    # Refunded before a claim: the claim earned on the rest, so later refunds
    # reverse the claimed points over (amount − this).
    claim_refund_offset = models.DecimalField(
        _("refunded before claim"), max_digits=12, decimal_places=2, default=Decimal("0")
    )
    created_at = models.DateTimeField(_("recorded at"), auto_now_add=True)

    class Meta:
        verbose_name = _("purchase")
        verbose_name_plural = _("purchases")
        ordering = ["-paid_at"]
        constraints = [
            models.UniqueConstraint(fields=["store", "receipt_no"], name="purchase_unique_receipt_per_store"),
            models.UniqueConstraint(
                fields=["member", "code_step"],
                condition=Q(code_step__isnull=False),
                name="purchase_member_code_used_once",
            ),
            models.CheckConstraint(condition=Q(amount__gt=0), name="purchase_amount_positive"),
            models.CheckConstraint(
                condition=Q(refunded_amount__gte=0) & Q(refunded_amount__lte=F("amount")),
                name="purchase_refunded_within_amount",
            ),
            models.CheckConstraint(
                condition=Q(points_earned__gte=0) & Q(points_used__gte=0), name="purchase_points_non_negative"
            ),
        ]
        indexes = [
            # Covering: a member's qualifying spend (each purchase at the till, the
            # nightly tier evaluation) is read from the index alone, not from
            # purchases scattered over the table (docs/performance.md, session 5).
            models.Index(
                fields=["member", "paid_at"], include=["amount", "refunded_amount"], name="purchase_member_spend_idx"
            ),
            models.Index(fields=["paid_at"], name="purchase_paid_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.store_id}/{self.receipt_no}"

    @property
    def refundable_amount(self) -> Decimal:
        return self.amount - self.refunded_amount


class Refund(models.Model):
    purchase = models.ForeignKey(Purchase, on_delete=models.PROTECT, related_name="refunds", verbose_name=_("purchase"))
    store = models.ForeignKey(Store, on_delete=models.PROTECT, related_name="refunds", verbose_name=_("store"))
    terminal = models.ForeignKey(
        Terminal, on_delete=models.PROTECT, null=True, blank=True, related_name="refunds", verbose_name=_("terminal")
    )
    refund_no = models.CharField(_("refund number"), max_length=64)
    amount = models.DecimalField(_("amount"), max_digits=12, decimal_places=2)
    points_reversed = models.IntegerField(_("earned points reversed"), default=0)
    points_returned = models.IntegerField(_("used points returned"), default=0)
    clawback = models.IntegerField(_("points clawed back as debt"), default=0)
    created_at = models.DateTimeField(_("refunded at"), auto_now_add=True, db_index=True)

    class Meta:
        verbose_name = _("refund")
        verbose_name_plural = _("refunds")
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["store", "refund_no"], name="refund_unique_number_per_store"),
            models.CheckConstraint(condition=Q(amount__gt=0), name="refund_amount_positive"),
        ]

    def __str__(self) -> str:
        return f"{self.store_id}/{self.refund_no}"


class PointsEntry(models.Model):
    """One change of a member's balance. Append-only (a trigger refuses UPDATE and DELETE)."""

    class Kind(models.TextChoices):
        EARN = "earn", _("Earn")
        BONUS = "bonus", _("Bonus")
        REDEEM = "redeem", _("Redeem")
        EXPIRE = "expire", _("Expire")
        ADJUST = "adjust", _("Adjust")
        REVERSE = "reverse", _("Reverse")

    class Source(models.TextChoices):
        PURCHASE = "purchase", _("Purchase")
        REFUND = "refund", _("Refund")
        CLAIM = "claim", _("Claimed receipt")
        CAMPAIGN = "campaign", _("Campaign")
        BENEFIT = "benefit", _("Benefit exchange")
        OPERATOR = "operator", _("Operator")
        CHECK_IN = "check_in", _("Daily check-in")
        EXPIRY = "expiry", _("Expiry")
        IMPORT = "import", _("Import")

    # PROTECT everywhere: ledger rows outlive anything they point to.
    # No index of its own: entry_member_time_idx leads with the member.
    member = models.ForeignKey(
        Member, on_delete=models.PROTECT, related_name="points_entries", verbose_name=_("member"), db_index=False
    )
    kind = models.CharField(_("kind"), max_length=8, choices=Kind.choices)
    points = models.IntegerField(_("points"))
    balance_after = models.IntegerField(_("balance after"))
    source = models.CharField(_("source"), max_length=10, choices=Source.choices)
    purchase = models.ForeignKey(
        Purchase, on_delete=models.PROTECT, null=True, blank=True, related_name="entries", verbose_name=_("purchase")
    )
    # Indexed only where set (entry_refund_idx, entry_by_user_idx): most entries
    # have neither, and a NULL would cost every earn an index insertion.
    refund = models.ForeignKey(
        Refund, on_delete=models.PROTECT, null=True, blank=True, related_name="entries", verbose_name=_("refund"),
        db_index=False,
    )
    store = models.ForeignKey(
        Store, on_delete=models.PROTECT, null=True, blank=True, related_name="+", verbose_name=_("store")
    )
    terminal = models.ForeignKey(
        Terminal, on_delete=models.PROTECT, null=True, blank=True, related_name="+", verbose_name=_("terminal")
    )
    by_user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="+",
        verbose_name=_("by operator"),
        db_index=False,
    )
    reason = models.CharField(_("reason"), max_length=255, blank=True)
    # Free reference for other apps (campaign id, coupon code, import batch…).
    reference = models.CharField(_("reference"), max_length=64, blank=True)
    created_at = models.DateTimeField(_("at"), db_index=True)

    class Meta:
        verbose_name = _("points entry")
        verbose_name_plural = _("points entries")
        ordering = ["-created_at", "-pk"]
        constraints = [
            models.CheckConstraint(condition=~Q(points=0), name="entry_points_non_zero"),
            models.CheckConstraint(
                condition=(Q(kind__in=["earn", "bonus"]) & Q(points__gt=0))
                | (Q(kind__in=["redeem", "expire"]) & Q(points__lt=0))
                | Q(kind__in=["adjust", "reverse"]),
                name="entry_sign_matches_kind",
            ),
        ]
        indexes = [
            models.Index(fields=["member", "-created_at", "-id"], name="entry_member_time_idx"),
            models.Index(fields=["refund"], condition=Q(refund__isnull=False), name="entry_refund_idx"),
            models.Index(fields=["by_user"], condition=Q(by_user__isnull=False), name="entry_by_user_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.member_id} {self.kind} {self.points:+d}"


class PointsLot(models.Model):
    """Points opened by one credit, with their expiry; debits draw from lots
    first to expire first. ``remaining`` changes only under the account lock."""

    member = models.ForeignKey(Member, on_delete=models.PROTECT, related_name="points_lots", verbose_name=_("member"))
    # No index of its own: every lookup of an entry's lots also names the
    # entry's member, and the member's index finds them (a few per member).
    # Each lot update of the nightly expiry inserted into it at a random page.
    entry = models.ForeignKey(
        PointsEntry, on_delete=models.PROTECT, related_name="lots", verbose_name=_("opened by"), db_index=False
    )
    original = models.IntegerField(_("original points"))
    remaining = models.IntegerField(_("remaining points"))
    earned_at = models.DateTimeField(_("earned at"))
    expires_at = models.DateTimeField(_("expires at"))
    pending_until = models.DateTimeField(_("pending until"), null=True, blank=True)

    class Meta:
        verbose_name = _("points lot")
        verbose_name_plural = _("points lots")
        ordering = ["expires_at", "pk"]
        constraints = [
            models.CheckConstraint(condition=Q(original__gt=0), name="lot_original_positive"),
            models.CheckConstraint(
                condition=Q(remaining__gte=0) & Q(remaining__lte=F("original")), name="lot_remaining_in_range"
            ),
        ]
        indexes = [
            models.Index(
                fields=["member", "expires_at", "id"], condition=Q(remaining__gt=0), name="lot_open_member_idx"
            ),
            models.Index(fields=["expires_at"], condition=Q(remaining__gt=0), name="lot_open_expiry_idx"),
            models.Index(
                fields=["pending_until"], condition=Q(pending_until__isnull=False), name="lot_pending_idx"
            ),
        ]

    def __str__(self) -> str:
        return f"lot {self.pk}: {self.remaining}/{self.original}"


class PointsAllocation(models.Model):
    """How much a debit drew from (or a refund returned to) one lot. Append-only.

    Its two keys have no foreign-key constraint in the database: the rows
    they point to can never go (entries and lots refuse DELETE, migration
    points/0004), allocations are only written with the entry and lots of the
    same statement or transaction, and ``check_ledger`` finds any allocation
    whose entry or lot is missing. The constraints' checks at commit were a
    third of the nightly expiry's time (docs/performance.md, session 5)."""

    entry = models.ForeignKey(
        PointsEntry, on_delete=models.PROTECT, related_name="allocations", verbose_name=_("entry"),
        db_constraint=False,
    )
    lot = models.ForeignKey(
        PointsLot, on_delete=models.PROTECT, related_name="allocations", verbose_name=_("lot"), db_constraint=False
    )
    # Negative: drawn from the lot; positive: returned into it.
    points = models.IntegerField(_("points"))

    class Meta:
        verbose_name = _("points allocation")
        verbose_name_plural = _("points allocations")
        constraints = [models.CheckConstraint(condition=~Q(points=0), name="allocation_points_non_zero")]

    def __str__(self) -> str:
        return f"entry {self.entry_id} lot {self.lot_id} {self.points:+d}"


class PointsAdjustment(models.Model):
    """An operator's adjustment; above the approval threshold it waits for a
    second operator."""

    class Status(models.TextChoices):
        PENDING = "pending", _("Waiting for approval")
        APPLIED = "applied", _("Applied")
        REJECTED = "rejected", _("Rejected")

    member = models.ForeignKey(Member, on_delete=models.PROTECT, related_name="adjustments", verbose_name=_("member"))
    points = models.IntegerField(_("points"))
    reason = models.CharField(_("reason"), max_length=255)
    status = models.CharField(_("status"), max_length=8, choices=Status.choices, default=Status.PENDING)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.PROTECT,
        null=True,
        related_name="+",
        verbose_name=_("requested by"),
    )
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="+",
        verbose_name=_("approved or rejected by"),
    )
    decided_at = models.DateTimeField(_("decided at"), null=True, blank=True)
    entry = models.OneToOneField(
        PointsEntry, on_delete=models.PROTECT, null=True, blank=True, related_name="+", verbose_name=_("entry")
    )
    # Bulk credits: one adjustment per member per uploaded file.
    batch = models.CharField(_("batch"), max_length=64, blank=True)
    created_at = models.DateTimeField(_("requested at"), auto_now_add=True, db_index=True)

    class Meta:
        verbose_name = _("points adjustment")
        verbose_name_plural = _("points adjustments")
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(condition=~Q(points=0), name="adjustment_points_non_zero"),
            models.UniqueConstraint(
                fields=["batch", "member"], condition=~Q(batch=""), name="adjustment_once_per_batch_member"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.member_id} {self.points:+d} ({self.status})"


class CheckIn(models.Model):
    member = models.ForeignKey(Member, on_delete=models.PROTECT, related_name="check_ins", verbose_name=_("member"))
    day = models.DateField(_("day"))
    points = models.IntegerField(_("points"))
    created_at = models.DateTimeField(_("at"), auto_now_add=True)

    class Meta:
        verbose_name = _("check-in")
        verbose_name_plural = _("check-ins")
        constraints = [models.UniqueConstraint(fields=["member", "day"], name="check_in_once_per_day")]

    def __str__(self) -> str:
        return f"{self.member_id} {self.day}"
