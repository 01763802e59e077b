"""The benefit catalogue and coupons.

A coupon moves ``issued → written_off | expired | void`` (a refund may take a
written-off coupon back to ``issued``); every change is a ``CouponEvent``
written by the service that made it, in the same transaction.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import F, Q
from django.utils.translation import gettext_lazy as _
from django.utils.translation import pgettext_lazy

from loyalty.models import TimeStampedModel
from members.models import Member, Store, Terminal, Tier


class Benefit(TimeStampedModel):
    class Kind(models.TextChoices):
        CASH_OFF = "cash_off", _("Cash off")
        PERCENT_OFF = "percent_off", _("Percent off")
        GIFT = "gift", _("Gift")
        SERVICE = "service", _("Service")
        TIER_PRIVILEGE = "tier_privilege", _("Tier privilege")

    class Validity(models.TextChoices):
        FIXED = "fixed", _("Fixed dates")
        DAYS = "days", _("N days after issue")

    name = models.CharField(_("name"), max_length=100)
    description = models.TextField(_("description"), blank=True)
    kind = models.CharField(_("kind"), max_length=16, choices=Kind.choices)
    value = models.DecimalField(
        _("value"),
        max_digits=10,
        decimal_places=2,
        default=0,
        help_text=_("CNY off for cash-off, percent for percent-off, nominal value otherwise."),
    )
    min_spend = models.DecimalField(_("minimum spend"), max_digits=10, decimal_places=2, default=0)
    points_price = models.PositiveIntegerField(
        _("price in points"), default=0, help_text=_("0: cannot be exchanged for points.")
    )
    cash_price = models.DecimalField(
        _("cash part"), max_digits=10, decimal_places=2, default=0, help_text=_("Collected at the till on write-off.")
    )
    eligible_tiers = models.ManyToManyField(
        Tier, blank=True, related_name="eligible_benefits", verbose_name=_("eligible tiers"),
        help_text=_("Empty: every tier."),
    )
    granted_by_tiers = models.ManyToManyField(
        Tier, blank=True, related_name="granted_benefits", verbose_name=_("granted by tiers"),
        help_text=_("Members of these tiers get one on reaching the tier and every month while in it."),
    )
    total_stock = models.PositiveIntegerField(_("total stock"), null=True, blank=True, help_text=_("Empty: unlimited."))
    issued_count = models.PositiveIntegerField(_("issued"), default=0, editable=False)
    per_member_limit = models.PositiveIntegerField(
        _("limit per member"), null=True, blank=True, help_text=_("Empty: unlimited.")
    )
    validity = models.CharField(_("validity"), max_length=8, choices=Validity.choices, default=Validity.DAYS)
    valid_from = models.DateTimeField(_("valid from"), null=True, blank=True)
    valid_until = models.DateTimeField(_("valid until"), null=True, blank=True)
    valid_days = models.PositiveIntegerField(_("valid days after issue"), default=30)
    stores = models.ManyToManyField(
        Store, blank=True, related_name="benefits", verbose_name=_("stores"), help_text=_("Empty: every store.")
    )
    active_from = models.DateTimeField(_("exchangeable from"), null=True, blank=True)
    active_until = models.DateTimeField(_("exchangeable until"), null=True, blank=True)
    is_active = models.BooleanField(_("active"), default=True)

    class Meta:
        verbose_name = _("benefit")
        verbose_name_plural = _("benefits")
        ordering = ["points_price", "pk"]
        constraints = [
            # Stock is never oversold: the counter is bumped with F() under this check.
            models.CheckConstraint(
                condition=Q(total_stock__isnull=True) | Q(issued_count__lte=F("total_stock")),
                name="benefit_stock_not_oversold",
            ),
            models.CheckConstraint(
                condition=Q(validity="days") | (Q(valid_until__isnull=False)), name="benefit_fixed_has_end"
            ),
        ]

    def __str__(self) -> str:
        return self.name


class CouponBatch(models.Model):
    """Codes generated for print or imported from a third party; ``reference``
    makes each batch idempotent (a name, or the file's SHA-256)."""

    class Kind(models.TextChoices):
        GENERATED = "generated", _("Generated for print")
        IMPORTED = "imported", _("Imported")

    benefit = models.ForeignKey(Benefit, on_delete=models.PROTECT, related_name="batches", verbose_name=_("benefit"))
    kind = models.CharField(_("kind"), max_length=10, choices=Kind.choices)
    reference = models.CharField(_("reference"), max_length=100, unique=True)
    quantity = models.PositiveIntegerField(_("quantity"))
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, verbose_name=_("created by")
    )
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)

    class Meta:
        verbose_name = _("coupon batch")
        verbose_name_plural = _("coupon batches")
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.reference


class Coupon(models.Model):
    class Status(models.TextChoices):
        ISSUED = "issued", _("Issued")
        WRITTEN_OFF = "written_off", _("Written off")
        EXPIRED = "expired", _("Expired")
        VOID = "void", _("Void")

    class Source(models.TextChoices):
        EXCHANGE = "exchange", _("Points exchange")
        CAMPAIGN = "campaign", _("Campaign")
        TIER_PRIVILEGE = "tier_privilege", _("Tier privilege")
        OPERATOR = "operator", _("Operator grant")
        IMPORT = "import", _("Import")
        BATCH = "batch", _("Printed batch")
        REISSUE = "reissue", _("Re-issue")

    code = models.CharField(_("code"), max_length=64, unique=True)
    benefit = models.ForeignKey(Benefit, on_delete=models.PROTECT, related_name="coupons", verbose_name=_("benefit"))
    # NULL: a bearer coupon (printed or imported) not yet bound to a member.
    member = models.ForeignKey(
        Member, on_delete=models.PROTECT, null=True, blank=True, related_name="coupons", verbose_name=_("member")
    )
    status = models.CharField(_("status"), max_length=12, choices=Status.choices, default=Status.ISSUED)
    source = models.CharField(_("source"), max_length=16, choices=Source.choices)
    reference = models.CharField(
        _("reference"), max_length=100, blank=True, help_text=_("Campaign, tier privilege period, import…")
    )
    valid_from = models.DateTimeField(_("valid from"))
    valid_until = models.DateTimeField(_("valid until"))
    issued_at = models.DateTimeField(_("issued at"), db_index=True)
    written_off_at = models.DateTimeField(_("written off at"), null=True, blank=True)
    written_off_store = models.ForeignKey(
        Store, on_delete=models.PROTECT, null=True, blank=True, related_name="+", verbose_name=_("written off at store")
    )
    written_off_terminal = models.ForeignKey(
        Terminal, on_delete=models.PROTECT, null=True, blank=True, related_name="+", verbose_name=_("terminal")
    )
    written_off_receipt = models.CharField(_("receipt number"), max_length=64, blank=True)
    purchase = models.ForeignKey(
        "points.Purchase",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="coupons",
        verbose_name=_("used on purchase"),
    )
    exchange_entry = models.ForeignKey(
        "points.PointsEntry",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="+",
        verbose_name=_("points paid"),
    )
    replaces = models.OneToOneField(
        "self", on_delete=models.PROTECT, null=True, blank=True, related_name="replaced_by", verbose_name=_("replaces")
    )
    batch = models.ForeignKey(
        CouponBatch, on_delete=models.PROTECT, null=True, blank=True, related_name="coupons", verbose_name=_("batch")
    )

    class Meta:
        verbose_name = _("coupon")
        verbose_name_plural = _("coupons")
        ordering = ["-issued_at"]
        constraints = [
            # A reference (tier privilege period, campaign run…) issues one coupon per member.
            models.UniqueConstraint(
                fields=["benefit", "member", "reference"],
                condition=~Q(reference=""),
                name="coupon_once_per_reference",
            ),
            models.CheckConstraint(
                condition=~Q(status="written_off") | Q(written_off_at__isnull=False),
                name="coupon_written_off_has_time",
            ),
        ]
        indexes = [
            models.Index(fields=["member", "status", "valid_until"], name="coupon_member_status_idx"),
            models.Index(fields=["valid_until"], condition=Q(status="issued"), name="coupon_issued_expiry_idx"),
        ]

    def __str__(self) -> str:
        return self.code


class CouponEvent(models.Model):
    """Append-only history of a coupon: who, where, when, why."""

    class Kind(models.TextChoices):
        ISSUED = "issued", _("Issued")
        WRITTEN_OFF = "written_off", _("Written off")
        RESTORED = "restored", _("Restored by refund")
        EXPIRED = "expired", _("Expired")
        VOID = "void", _("Voided")

    coupon = models.ForeignKey(Coupon, on_delete=models.PROTECT, related_name="events", verbose_name=_("coupon"))
    kind = models.CharField(_("kind"), max_length=12, choices=Kind.choices)
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
    )
    receipt_no = models.CharField(_("receipt number"), max_length=64, blank=True)
    reason = models.CharField(_("reason"), max_length=255, blank=True)
    created_at = models.DateTimeField(_("at"), db_index=True)

    class Meta:
        verbose_name = _("coupon event")
        verbose_name_plural = _("coupon events")
        ordering = ["-created_at", "-pk"]

    def __str__(self) -> str:
        return f"{self.coupon_id} {self.kind}"


class CouponIssueRequest(models.Model):
    """Retry queue of coupons issued asynchronously (tier privileges,
    campaigns): retried with backoff within 15 minutes; what still fails is
    listed in admin."""

    class Status(models.TextChoices):
        PENDING = "pending", pgettext_lazy("queue", "Pending")
        DONE = "done", _("Issued")
        FAILED = "failed", _("Failed")

    benefit = models.ForeignKey(Benefit, on_delete=models.PROTECT, related_name="+", verbose_name=_("benefit"))
    member = models.ForeignKey(Member, on_delete=models.PROTECT, related_name="+", verbose_name=_("member"))
    source = models.CharField(_("source"), max_length=16, choices=Coupon.Source.choices)
    reference = models.CharField(_("reference"), max_length=100)
    status = models.CharField(_("status"), max_length=8, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveSmallIntegerField(_("attempts"), default=0)
    last_error = models.TextField(_("last error"), blank=True)
    next_attempt_at = models.DateTimeField(_("next attempt at"), db_index=True)
    coupon = models.ForeignKey(
        Coupon, on_delete=models.PROTECT, null=True, blank=True, related_name="+", verbose_name=_("coupon")
    )
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)

    class Meta:
        verbose_name = _("coupon issue request")
        verbose_name_plural = _("coupon issue requests")
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["benefit", "member", "reference"], name="issue_request_once"),
        ]

    def __str__(self) -> str:
        return f"{self.benefit_id}→{self.member_id} ({self.status})"


# -----------------------------------------------------------------------------
# Segments and campaigns
# -----------------------------------------------------------------------------
class Segment(TimeStampedModel):
    """A set of members defined by criteria (all given criteria must hold;
    an empty criterion does not filter)."""

    name = models.CharField(_("name"), max_length=100)
    tiers = models.ManyToManyField(Tier, blank=True, related_name="+", verbose_name=_("tiers"))
    lifecycle_stages = models.JSONField(_("lifecycle stages"), default=list, blank=True)
    rfm_groups = models.JSONField(_("RFM groups"), default=list, blank=True)
    stores = models.ManyToManyField(
        Store, blank=True, related_name="+", verbose_name=_("registration stores")
    )
    tags = models.ManyToManyField("members.MemberTag", blank=True, related_name="+", verbose_name=_("tags"))
    birthday_month = models.PositiveSmallIntegerField(
        _("birthday month"), null=True, blank=True, help_text=_("1–12; 0 means the current month when used.")
    )
    registered_from = models.DateField(_("registered from"), null=True, blank=True)
    registered_until = models.DateField(_("registered until"), null=True, blank=True)
    marketing_consent_only = models.BooleanField(_("only members who accept marketing"), default=True)

    class Meta:
        verbose_name = _("segment")
        verbose_name_plural = _("segments")
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Campaign(TimeStampedModel):
    class Kind(models.TextChoices):
        MULTIPLIER = "multiplier", _("Points multiplier")
        BONUS = "bonus", _("Bonus points on a condition")
        COUPON_GRANT = "coupon_grant", _("Coupon grant to a segment")
        BIRTHDAY = "birthday", _("Birthday month")
        REFERRAL = "referral", _("Referral")
        REACTIVATION = "reactivation", _("Reactivation of sleeping members")

    class Status(models.TextChoices):
        DRAFT = "draft", _("Draft")
        ACTIVE = "active", pgettext_lazy("campaign status", "Active")
        PAUSED = "paused", _("Paused")
        ENDED = "ended", _("Ended")

    class Condition(models.TextChoices):
        FIRST_PURCHASE = "first_purchase", _("First purchase")
        PROFILE_COMPLETED = "profile_completed", _("Profile completed")
        CHECK_IN_STREAK = "check_in_streak", _("Check-in streak")

    name = models.CharField(_("name"), max_length=100)
    kind = models.CharField(_("kind"), max_length=16, choices=Kind.choices)
    status = models.CharField(_("status"), max_length=8, choices=Status.choices, default=Status.DRAFT)
    starts_at = models.DateTimeField(_("starts at"))
    ends_at = models.DateTimeField(_("ends at"), null=True, blank=True)
    segment = models.ForeignKey(
        Segment, on_delete=models.PROTECT, null=True, blank=True, related_name="campaigns", verbose_name=_("segment")
    )
    stores = models.ManyToManyField(Store, blank=True, related_name="+", verbose_name=_("only at stores"))
    tiers = models.ManyToManyField(Tier, blank=True, related_name="+", verbose_name=_("only for tiers"))
    # Multiplier (multiplier, birthday): dates via the window, weekdays, or a monthly member day.
    multiplier = models.DecimalField(_("multiplier"), max_digits=4, decimal_places=2, default=1)
    weekdays = models.JSONField(_("weekdays"), default=list, blank=True, help_text=_("1 = Monday … 7 = Sunday."))
    month_day = models.PositiveSmallIntegerField(_("monthly member day"), null=True, blank=True)
    stackable = models.BooleanField(_("stackable"), default=False, help_text=_("Multiplies with other multipliers."))
    # Bonus points.
    condition = models.CharField(_("condition"), max_length=20, choices=Condition.choices, blank=True)
    streak_days = models.PositiveSmallIntegerField(_("check-in streak days"), default=7)
    points = models.PositiveIntegerField(_("points"), default=0, help_text=_("Bonus / referral reward points."))
    # Coupons (grant, birthday gift, reactivation offer).
    benefit = models.ForeignKey(
        Benefit, on_delete=models.PROTECT, null=True, blank=True, related_name="+", verbose_name=_("benefit")
    )
    # Referral: reward at a number of successful referrals.
    threshold_count = models.PositiveSmallIntegerField(_("referrals for the threshold reward"), default=0)
    threshold_points = models.PositiveIntegerField(_("threshold reward points"), default=0)
    # Reactivation waves: [{"after_days": 0, "benefit": <id or null>, "message": "..."}, ...]
    waves = models.JSONField(_("waves"), default=list, blank=True)
    per_member_limit = models.PositiveIntegerField(_("limit per member"), null=True, blank=True)
    budget_points = models.PositiveIntegerField(_("points budget"), null=True, blank=True)
    budget_coupons = models.PositiveIntegerField(_("coupons budget"), null=True, blank=True)
    spent_points = models.PositiveIntegerField(_("points issued"), default=0, editable=False)
    spent_coupons = models.PositiveIntegerField(_("coupons issued"), default=0, editable=False)

    class Meta:
        verbose_name = _("campaign")
        verbose_name_plural = _("campaigns")
        ordering = ["-starts_at"]
        constraints = [
            # The budget is never exceeded: spend is bumped with F() under these checks.
            models.CheckConstraint(
                condition=Q(budget_points__isnull=True) | Q(spent_points__lte=F("budget_points")),
                name="campaign_points_within_budget",
            ),
            models.CheckConstraint(
                condition=Q(budget_coupons__isnull=True) | Q(spent_coupons__lte=F("budget_coupons")),
                name="campaign_coupons_within_budget",
            ),
            models.CheckConstraint(condition=Q(multiplier__gt=0), name="campaign_multiplier_positive"),
        ]

    def __str__(self) -> str:
        return self.name


class CampaignGrant(models.Model):
    """What a campaign gave one member: unique per (campaign, member, reference),
    so a re-run of a scheduled campaign issues nothing twice."""

    campaign = models.ForeignKey(Campaign, on_delete=models.PROTECT, related_name="grants", verbose_name=_("campaign"))
    member = models.ForeignKey(Member, on_delete=models.PROTECT, related_name="+", verbose_name=_("member"))
    reference = models.CharField(_("reference"), max_length=100)
    points = models.PositiveIntegerField(_("points"), default=0)
    coupon = models.ForeignKey(
        Coupon, on_delete=models.PROTECT, null=True, blank=True, related_name="+", verbose_name=_("coupon")
    )
    entry = models.ForeignKey(
        "points.PointsEntry", on_delete=models.PROTECT, null=True, blank=True, related_name="+",
        verbose_name=_("points entry"),
    )
    created_at = models.DateTimeField(_("at"), auto_now_add=True, db_index=True)

    class Meta:
        verbose_name = _("campaign grant")
        verbose_name_plural = _("campaign grants")
        constraints = [
            models.UniqueConstraint(fields=["campaign", "member", "reference"], name="campaign_grant_once"),
        ]

    def __str__(self) -> str:
        return f"{self.campaign_id}→{self.member_id} {self.reference}"


# -----------------------------------------------------------------------------
# Messages and webhooks
# -----------------------------------------------------------------------------
class OutboxMessage(models.Model):
    """A message to a member, sent once through a pluggable channel."""

    class Kind(models.TextChoices):
        POINTS_EARNED = "points_earned", _("Points earned")
        EXPIRY_WARNING = "expiry_warning", _("Points expire in 30 days")
        EXPIRY_LAST_CHANCE = "expiry_last_chance", _("Points expire in 7 days")
        COUPON_ISSUED = "coupon_issued", _("Coupon issued")
        COUPON_EXPIRING = "coupon_expiring", _("Coupon about to expire")
        TIER_CHANGED = "tier_changed", _("Tier changed")
        CAMPAIGN = "campaign", _("Campaign message")

    class Status(models.TextChoices):
        PENDING = "pending", pgettext_lazy("queue", "Pending")
        SENT = "sent", _("Sent")
        FAILED = "failed", _("Failed")
        SKIPPED = "skipped", _("Skipped")

    member = models.ForeignKey(Member, on_delete=models.PROTECT, related_name="messages", verbose_name=_("member"))
    kind = models.CharField(_("kind"), max_length=20, choices=Kind.choices)
    channel = models.CharField(_("channel"), max_length=16)
    # Nothing is sent twice: the same event for the same member has one key.
    # Unique through outbox_dedupe_key_unique (a constraint, not unique=True:
    # that would add a second, LIKE-pattern index no query uses).
    dedupe_key = models.CharField(_("de-duplication key"), max_length=150)
    marketing = models.BooleanField(_("marketing"), default=False, help_text=_("Needs the member's consent."))
    payload = models.JSONField(_("payload"), default=dict)
    status = models.CharField(_("status"), max_length=8, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveSmallIntegerField(_("attempts"), default=0)
    next_attempt_at = models.DateTimeField(_("next attempt at"), db_index=True)
    last_error = models.TextField(_("last error"), blank=True)
    sent_at = models.DateTimeField(_("sent at"), null=True, blank=True)
    created_at = models.DateTimeField(_("created at"), auto_now_add=True, db_index=True)

    class Meta:
        verbose_name = _("outbox message")
        verbose_name_plural = _("outbox messages")
        ordering = ["-created_at"]
        constraints = [models.UniqueConstraint(fields=["dedupe_key"], name="outbox_dedupe_key_unique")]

    def __str__(self) -> str:
        return f"{self.kind} → {self.member_id} ({self.status})"


class WebhookEndpoint(TimeStampedModel):
    """An ERP/CRM endpoint receiving signed events."""

    name = models.CharField(_("name"), max_length=100)
    url = models.URLField(_("URL"))
    secret = models.CharField(_("signing secret"), max_length=128)
    events = models.JSONField(_("events"), default=list, blank=True, help_text=_("Empty: every event."))
    is_active = models.BooleanField(_("active"), default=True)

    class Meta:
        verbose_name = _("webhook endpoint")
        verbose_name_plural = _("webhook endpoints")

    def __str__(self) -> str:
        return self.name


class WebhookDelivery(models.Model):
    """One event for one endpoint; ``event_id`` is stable across retries."""

    class Status(models.TextChoices):
        PENDING = "pending", pgettext_lazy("queue", "Pending")
        DELIVERED = "delivered", _("Delivered")
        FAILED = "failed", _("Failed")

    endpoint = models.ForeignKey(
        WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries", verbose_name=_("endpoint")
    )
    event_id = models.UUIDField(_("event id"))
    event = models.CharField(_("event"), max_length=32)
    payload = models.JSONField(_("payload"))
    status = models.CharField(_("status"), max_length=10, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveSmallIntegerField(_("attempts"), default=0)
    next_attempt_at = models.DateTimeField(_("next attempt at"), db_index=True)
    last_status_code = models.PositiveSmallIntegerField(_("last HTTP status"), null=True, blank=True)
    last_error = models.TextField(_("last error"), blank=True)
    delivered_at = models.DateTimeField(_("delivered at"), null=True, blank=True)
    created_at = models.DateTimeField(_("created at"), auto_now_add=True, db_index=True)

    class Meta:
        verbose_name = _("webhook delivery")
        verbose_name_plural = _("webhook deliveries")
        ordering = ["-created_at"]
        constraints = [models.UniqueConstraint(fields=["endpoint", "event_id"], name="webhook_delivery_once")]

    def __str__(self) -> str:
        return f"{self.event} {self.event_id} → {self.endpoint_id}"
