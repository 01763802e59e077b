from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils.translation import gettext_lazy as _
from django.utils.translation import pgettext_lazy
from rest_framework_api_key.models import AbstractAPIKey

from loyalty.models import TimeStampedModel


class Store(TimeStampedModel):
    code = models.CharField(_("code"), max_length=32, unique=True)
    name = models.CharField(_("name"), max_length=100)
    city = models.CharField(_("city"), max_length=50, blank=True)
    address = models.CharField(_("address"), max_length=200, blank=True)
    is_active = models.BooleanField(_("active"), default=True)

    class Meta:
        verbose_name = _("store")
        verbose_name_plural = _("stores")
        ordering = ["code"]

    def __str__(self) -> str:
        return f"{self.code} {self.name}"


class Terminal(TimeStampedModel):
    """A till (POS or clerk console) of one store; authenticates with an API key."""

    # PROTECT: purchases and coupon write-offs keep pointing at their terminal.
    store = models.ForeignKey(Store, on_delete=models.PROTECT, related_name="terminals", verbose_name=_("store"))
    name = models.CharField(_("name"), max_length=100)
    is_active = models.BooleanField(_("active"), default=True)
    # Set when the till fails too often (loyalty/throttle.py). Read with the
    # terminal at every request, so checking them costs the till nothing.
    identify_blocked_until = models.DateTimeField(
        _("member lookups blocked until"),
        null=True,
        blank=True,
        help_text=_("Set after too many unknown or forged member codes, numbers or phones; clear it to lift the block."),
    )
    coupon_blocked_until = models.DateTimeField(
        _("coupon codes blocked until"),
        null=True,
        blank=True,
        help_text=_("Set after too many unknown coupon codes; clear it to lift the block."),
    )

    # DRF treats the authenticated principal as request.user.
    is_authenticated = True

    class Meta:
        verbose_name = _("terminal")
        verbose_name_plural = _("terminals")
        ordering = ["store__code", "name"]
        constraints = [models.UniqueConstraint(fields=["store", "name"], name="terminal_unique_name_per_store")]

    def __str__(self) -> str:
        return f"{self.store.code}/{self.name}"


class TerminalAPIKey(AbstractAPIKey):
    """Hashed API key of a terminal (the plain key is shown once, at creation)."""

    terminal = models.ForeignKey(
        Terminal, on_delete=models.CASCADE, related_name="api_keys", verbose_name=_("terminal")
    )

    class Meta(AbstractAPIKey.Meta):
        verbose_name = _("terminal API key")
        verbose_name_plural = _("terminal API keys")


class Tier(models.Model):
    """A membership tier. Tiers are data: operators edit them in admin."""

    code = models.SlugField(_("code"), max_length=32, unique=True)
    name = models.CharField(_("name"), max_length=50)
    rank = models.PositiveSmallIntegerField(_("rank"), unique=True, help_text=_("Higher rank is a better tier."))
    threshold = models.DecimalField(
        _("qualifying spend"),
        max_digits=12,
        decimal_places=2,
        default=Decimal("0.00"),
        validators=[MinValueValidator(Decimal("0"))],
        help_text=_("Net spend over the qualification period needed to reach this tier (CNY)."),
    )
    qualification_months = models.PositiveSmallIntegerField(_("qualification period (months)"), default=12)
    validity_months = models.PositiveSmallIntegerField(
        _("validity (months)"), default=12, help_text=_("A member keeps this tier at least this long.")
    )
    earn_multiplier = models.DecimalField(_("earn multiplier"), max_digits=4, decimal_places=2, default=Decimal("1.00"))
    discount_rate = models.DecimalField(
        _("member discount rate"),
        max_digits=4,
        decimal_places=2,
        default=Decimal("1.00"),
        help_text=_("Share of the price the member pays, e.g. 0.88 for 88%."),
    )
    is_active = models.BooleanField(_("active"), default=True)

    class Meta:
        verbose_name = _("tier")
        verbose_name_plural = _("tiers")
        ordering = ["rank"]
        constraints = [
            models.CheckConstraint(condition=Q(threshold__gte=0), name="tier_threshold_non_negative"),
            models.CheckConstraint(condition=Q(earn_multiplier__gt=0), name="tier_earn_multiplier_positive"),
            models.CheckConstraint(
                condition=Q(discount_rate__gt=0) & Q(discount_rate__lte=1), name="tier_discount_rate_range"
            ),
        ]

    def __str__(self) -> str:
        return self.name


class MemberTag(models.Model):
    """A label operators and imports put on members, used by segments."""

    name = models.CharField(_("name"), max_length=50, unique=True)

    class Meta:
        verbose_name = _("member tag")
        verbose_name_plural = _("member tags")
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Member(TimeStampedModel):
    class Gender(models.TextChoices):
        UNKNOWN = "unknown", _("Unknown")
        FEMALE = "female", _("Female")
        MALE = "male", _("Male")

    class Channel(models.TextChoices):
        STORE = "store", _("Store")
        MINI_PROGRAM = "mini_program", _("Mini-program")
        IMPORT = "import", _("Import")
        PAY_TO_JOIN = "pay_to_join", _("Pay to join")

    class Status(models.TextChoices):
        ACTIVE = "active", _("Active")
        FROZEN = "frozen", _("Frozen")
        CLOSED = "closed", _("Closed")

    class Lifecycle(models.TextChoices):
        NEW = "new", pgettext_lazy("lifecycle", "New")
        ACTIVE = "active", pgettext_lazy("lifecycle", "Active")
        SLEEPING = "sleeping", _("Sleeping")
        CHURNED = "churned", _("Churned")

    class RfmGroup(models.TextChoices):
        # Recency, frequency, monetary each high (above the median score) or low.
        IMPORTANT_VALUE = "important_value", _("Important value (R↑ F↑ M↑)")
        IMPORTANT_DEVELOP = "important_develop", _("Important to develop (R↑ F↓ M↑)")
        IMPORTANT_RETAIN = "important_retain", _("Important to retain (R↓ F↑ M↑)")
        IMPORTANT_RECALL = "important_recall", _("Important to win back (R↓ F↓ M↑)")
        GENERAL_VALUE = "general_value", _("General value (R↑ F↑ M↓)")
        GENERAL_DEVELOP = "general_develop", _("General to develop (R↑ F↓ M↓)")
        GENERAL_RETAIN = "general_retain", _("General to retain (R↓ F↑ M↓)")
        GENERAL_RECALL = "general_recall", _("General to win back (R↓ F↓ M↓)")

    member_no = models.CharField(_("member number"), max_length=16, unique=True)
    # E.164; NULL once the member is closed (personal data erased).
    phone = models.CharField(_("mobile phone"), max_length=20, unique=True, null=True, blank=True)
    name = models.CharField(pgettext_lazy("person", "name"), max_length=50, blank=True)
    gender = models.CharField(_("gender"), max_length=8, choices=Gender.choices, default=Gender.UNKNOWN)
    birthday = models.DateField(_("birthday"), null=True, blank=True)
    registration_store = models.ForeignKey(
        Store,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="registered_members",
        verbose_name=_("registration store"),
    )
    channel = models.CharField(_("channel"), max_length=16, choices=Channel.choices, default=Channel.STORE)
    referrer = models.ForeignKey(
        "self", on_delete=models.SET_NULL, null=True, blank=True, related_name="referees", verbose_name=_("referrer")
    )
    marketing_consent = models.BooleanField(_("marketing consent"), default=False)
    status = models.CharField(_("status"), max_length=8, choices=Status.choices, default=Status.ACTIVE)
    wechat_openid = models.CharField(_("WeChat openid"), max_length=64, unique=True, null=True, blank=True)
    tier = models.ForeignKey(Tier, on_delete=models.PROTECT, related_name="members", verbose_name=_("tier"))
    tier_since = models.DateTimeField(_("in tier since"))
    tier_override_until = models.DateTimeField(
        _("manual tier kept until"),
        null=True,
        blank=True,
        help_text=_("A manually set tier is not downgraded before this time."),
    )
    # Per-member secret of the rotating member code (hex); rotated on close.
    code_secret = models.CharField(_("code secret"), max_length=64, editable=False)
    closed_at = models.DateTimeField(_("closed at"), null=True, blank=True)
    referral_code = models.CharField(_("referral code"), max_length=12, unique=True, null=True, blank=True)
    tags = models.ManyToManyField(MemberTag, blank=True, related_name="members", verbose_name=_("tags"))
    # Segmentation, recomputed nightly in SQL (campaigns.services.segments).
    last_purchase_at = models.DateTimeField(_("last purchase"), null=True, blank=True)
    lifecycle_stage = models.CharField(
        _("lifecycle stage"), max_length=8, choices=Lifecycle.choices, default=Lifecycle.NEW
    )
    rfm_recency = models.PositiveSmallIntegerField(_("RFM recency score"), default=0)
    rfm_frequency = models.PositiveSmallIntegerField(_("RFM frequency score"), default=0)
    rfm_monetary = models.PositiveSmallIntegerField(_("RFM monetary score"), default=0)
    rfm_group = models.CharField(_("RFM group"), max_length=20, choices=RfmGroup.choices, blank=True)
    segments_updated_at = models.DateTimeField(_("segments updated at"), null=True, blank=True)

    # DRF treats the authenticated principal as request.user.
    is_authenticated = True

    class Meta:
        verbose_name = _("member")
        verbose_name_plural = _("members")
        ordering = ["-created_at"]
        permissions = [("view_member_phone", _("Can see members' full phone numbers"))]
        constraints = [
            models.CheckConstraint(
                condition=Q(status="closed") | Q(phone__isnull=False), name="member_phone_required_unless_closed"
            ),
        ]
        indexes = [
            models.Index(fields=["status", "tier"], name="member_status_tier_idx"),
            models.Index(fields=["lifecycle_stage"], name="member_lifecycle_idx"),
            models.Index(fields=["rfm_group"], name="member_rfm_group_idx"),
        ]

    def __str__(self) -> str:
        return self.member_no

    @property
    def can_earn(self) -> bool:
        return self.status == self.Status.ACTIVE

    @property
    def can_spend(self) -> bool:
        return self.status == self.Status.ACTIVE

    @property
    def masked_phone(self) -> str:
        return mask_phone(self.phone)

    @property
    def masked_name(self) -> str:
        return mask_name(self.name)


def mask_phone(phone: str | None) -> str:
    """``+8613812345678`` → ``138****5678``."""
    if not phone:
        return ""
    national = phone[3:] if phone.startswith("+86") else phone.lstrip("+")
    if len(national) < 7:
        return "*" * len(national)
    return f"{national[:3]}****{national[-4:]}"


def mask_name(name: str) -> str:
    """``王小明`` → ``王**``; ``Li Lei`` → ``L*****``."""
    if not name:
        return ""
    return name[0] + "*" * (len(name) - 1) if len(name) > 1 else "*"


class MemberEvent(models.Model):
    """Audit trail of changes to a member (status, tier, profile): who, what, when, why.

    Append-only: written by services in the same transaction as the change.
    """

    class Kind(models.TextChoices):
        ENROLLED = "enrolled", _("Enrolled")
        FROZEN = "frozen", _("Frozen")
        UNFROZEN = "unfrozen", _("Unfrozen")
        CLOSED = "closed", _("Closed")
        TIER_CHANGED = "tier_changed", _("Tier changed")
        WECHAT_BOUND = "wechat_bound", _("WeChat bound")
        PROFILE_UPDATED = "profile_updated", _("Profile updated")

    # PROTECT: audit history must outlive any attempt to delete a member.
    member = models.ForeignKey(Member, on_delete=models.PROTECT, related_name="events", verbose_name=_("member"))
    kind = models.CharField(_("kind"), max_length=24, choices=Kind.choices)
    reason = models.CharField(_("reason"), max_length=255, blank=True)
    data = models.JSONField(_("data"), default=dict, blank=True)
    by_user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, verbose_name=_("by operator")
    )
    by_terminal = models.ForeignKey(
        Terminal, on_delete=models.PROTECT, null=True, blank=True, verbose_name=_("by terminal")
    )
    created_at = models.DateTimeField(_("at"), auto_now_add=True, db_index=True)

    class Meta:
        verbose_name = _("member event")
        verbose_name_plural = _("member events")
        ordering = ["-created_at", "-pk"]

    def __str__(self) -> str:
        return f"{self.member_id} {self.kind}"


class TierChange(models.Model):
    """History of tier changes with their reason. Append-only."""

    class Reason(models.TextChoices):
        ENROLMENT = "enrolment", _("Enrolment")
        UPGRADE = "upgrade", _("Upgrade (qualifying spend)")
        DOWNGRADE = "downgrade", _("Downgrade (evaluation)")
        MANUAL = "manual", _("Manual change by an operator")
        OVERRIDE_EXPIRED = "override_expired", _("Manual tier expired")

    member = models.ForeignKey(Member, on_delete=models.PROTECT, related_name="tier_changes", verbose_name=_("member"))
    from_tier = models.ForeignKey(
        Tier, on_delete=models.PROTECT, null=True, blank=True, related_name="+", verbose_name=_("from tier")
    )
    to_tier = models.ForeignKey(Tier, on_delete=models.PROTECT, related_name="+", verbose_name=_("to tier"))
    reason = models.CharField(_("reason"), max_length=20, choices=Reason.choices)
    note = models.CharField(_("note"), max_length=255, blank=True)
    qualifying_spend = models.DecimalField(
        _("qualifying spend"), max_digits=14, decimal_places=2, null=True, blank=True
    )
    override_until = models.DateTimeField(_("manual tier kept until"), null=True, blank=True)
    by_user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, verbose_name=_("by operator")
    )
    created_at = models.DateTimeField(_("at"), auto_now_add=True, db_index=True)

    class Meta:
        verbose_name = _("tier change")
        verbose_name_plural = _("tier changes")
        ordering = ["-created_at", "-pk"]

    def __str__(self) -> str:
        return f"{self.member_id}: {self.from_tier_id} → {self.to_tier_id}"


class MemberToken(models.Model):
    """A member's bearer token for the member API, stored hashed (SHA-256 of
    a high-entropy secret); looked up by its public prefix."""

    member = models.ForeignKey(Member, on_delete=models.CASCADE, related_name="tokens", verbose_name=_("member"))
    prefix = models.CharField(_("prefix"), max_length=16, unique=True)
    key_hash = models.CharField(_("key hash"), max_length=64)
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)
    expires_at = models.DateTimeField(_("expires at"))
    revoked_at = models.DateTimeField(_("revoked at"), null=True, blank=True)

    class Meta:
        verbose_name = _("member token")
        verbose_name_plural = _("member tokens")

    def __str__(self) -> str:
        return f"{self.prefix}…"


class StaffProfile(models.Model):
    """Binds a staff user to a store: store managers see only their store,
    clerks at the console act for it."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="staff_profile", verbose_name=_("user")
    )
    store = models.ForeignKey(
        Store, on_delete=models.PROTECT, null=True, blank=True, related_name="staff", verbose_name=_("store")
    )

    class Meta:
        verbose_name = _("staff profile")
        verbose_name_plural = _("staff profiles")
        permissions = [("use_console", _("Can use the clerk console of their store"))]

    def __str__(self) -> str:
        return f"{self.user} @ {self.store}"
