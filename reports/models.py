"""Rollups behind the monthly KPI report, and the monthly snapshots.

Every table here except ``MonthlyKpiSnapshot`` is derived data: written only
by ``reports.services.rollups_build`` from the raw rows of the other apps,
and rebuilt from them at will (``manage.py build_rollups --since``). The
definitions of the figures are in ``reports/selectors.py``.

Time buckets are local calendar days and months (``TIME_ZONE``); a month is
the ``date`` of its first day.

Foreign keys to members, stores and tiers carry no database constraint: the
rows are disposable copies, inserted in bulk by set-based SQL, and must
never stand in the way of anything the source apps do.
"""

from __future__ import annotations

from django.core.serializers.json import DjangoJSONEncoder
from django.db import models
from django.utils.translation import gettext_lazy as _

from members.models import Member, Store, Tier


def _store_fk() -> models.ForeignKey:
    return models.ForeignKey(
        Store,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        null=True,
        blank=True,
        related_name="+",
        verbose_name=_("store"),
    )


def _tier_fk() -> models.ForeignKey:
    return models.ForeignKey(
        Tier,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        null=True,
        blank=True,
        related_name="+",
        verbose_name=_("tier"),
    )


class RollupDay(models.Model):
    """A local day whose daily rollups are built (absent: not built yet)."""

    day = models.DateField(_("day"), primary_key=True)
    built_at = models.DateTimeField(_("built at"))

    class Meta:
        verbose_name = _("rolled-up day")
        verbose_name_plural = _("rolled-up days")
        ordering = ["-day"]

    def __str__(self) -> str:
        return f"{self.day:%Y-%m-%d}"


class DailyRollup(models.Model):
    """Additive figures of one local day, by store and tier.

    What "store" and "tier" mean depends on the family of the figure:

    * purchases, sales, refunds: the store where the purchase was made and
      the tier the member had when it was made (``Purchase.tier``); a refund
      counts on the day it was made, for its purchase's store and tier;
    * points, coupons: the member's registration store and the tier the member
      had at the moment of the entry or coupon event (bearer coupons: none);
    * upgrades, downgrades: the member's registration store and the tier moved into.

    A NULL store or tier is "none" (a member without a registration store, a
    bearer coupon); such rows count in the totals only.
    """

    day = models.DateField(_("day"))
    store = _store_fk()
    tier = _tier_fk()
    purchases = models.IntegerField(_("purchases"), default=0)
    sales_amount = models.DecimalField(_("gross sales"), max_digits=16, decimal_places=2, default=0)
    refunds_amount = models.DecimalField(_("refunds"), max_digits=16, decimal_places=2, default=0)
    points_issued = models.BigIntegerField(_("points issued"), default=0)
    points_redeemed = models.BigIntegerField(_("points redeemed"), default=0)
    points_expired = models.BigIntegerField(_("points expired"), default=0)
    points_reversed = models.BigIntegerField(_("points reversed (net)"), default=0)
    points_adjusted_out = models.BigIntegerField(_("points removed by adjustments"), default=0)
    coupons_issued = models.IntegerField(_("coupons issued"), default=0)
    coupons_written_off = models.IntegerField(_("coupons written off (net)"), default=0)
    coupons_expired = models.IntegerField(_("coupons expired"), default=0)
    upgrades = models.IntegerField(_("upgrades"), default=0)
    downgrades = models.IntegerField(_("downgrades"), default=0)

    class Meta:
        verbose_name = _("daily rollup")
        verbose_name_plural = _("daily rollups")
        ordering = ["-day"]
        constraints = [
            models.UniqueConstraint(
                fields=["day", "store", "tier"], nulls_distinct=False, name="daily_rollup_unique_cell"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.day:%Y-%m-%d} {self.store_id}/{self.tier_id}"


class MonthlyMemberActivity(models.Model):
    """Purchases of one member in one month at one store in one tier (tier at
    purchase): the source of distinct active and repeat member counts, which
    do not add up across days, stores or tiers."""

    month = models.DateField(_("month"))
    member = models.ForeignKey(
        Member,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        related_name="+",
        verbose_name=_("member"),
    )
    store = _store_fk()
    tier = _tier_fk()
    purchases = models.IntegerField(_("purchases"))

    class Meta:
        verbose_name = _("monthly member activity")
        verbose_name_plural = _("monthly member activity")
        constraints = [
            models.UniqueConstraint(
                fields=["month", "member", "store", "tier"],
                nulls_distinct=False,
                name="member_activity_unique_cell",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.month:%Y-%m} {self.member_id}: {self.purchases}"


class MonthlyRollup(models.Model):
    """Figures of one month that are not sums of days: distinct members and
    stocks at the month's end, for every combination of store and tier.

    ``scope`` says which dimensions the row is for (the others are summed
    over): both, the store only, the tier only, or the whole chain. Member
    figures count by registration store and tier at ``as_of``; active and
    repeat members by purchase store and tier at purchase.
    """

    class Scope(models.TextChoices):
        STORE_TIER = "store_tier", _("Store and tier")
        STORE = "store", _("Store")
        TIER = "tier", _("Tier")
        ALL = "all", _("All")

    month = models.DateField(_("month"))
    scope = models.CharField(_("scope"), max_length=10, choices=Scope.choices)
    store = _store_fk()
    tier = _tier_fk()
    new_members = models.IntegerField(_("new members"), default=0)
    members_at_month_end = models.IntegerField(_("members at month end"), default=0)
    active_members = models.IntegerField(_("active members"), default=0)
    repeat_members = models.IntegerField(_("repeat members"), default=0)
    points_outstanding = models.BigIntegerField(_("points outstanding"), default=0)
    points_expiring_next_month = models.BigIntegerField(_("points expiring next month"), default=0)
    sleeping_members = models.IntegerField(_("sleeping members"), default=0)
    churned_members = models.IntegerField(_("churned members"), default=0)
    # End of the month, or the end of the last day built for the current month.
    as_of = models.DateTimeField(_("as of"))
    built_at = models.DateTimeField(_("built at"))

    class Meta:
        verbose_name = _("monthly rollup")
        verbose_name_plural = _("monthly rollups")
        ordering = ["-month", "scope"]
        constraints = [
            models.UniqueConstraint(
                fields=["month", "scope", "store", "tier"], nulls_distinct=False, name="monthly_rollup_unique_cell"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.month:%Y-%m} {self.scope} {self.store_id}/{self.tier_id}"


class RollupMonth(models.Model):
    """When the ``MonthlyRollup`` rows of a month were computed, as of which
    moment, and the highest ids of the source tables then: a later run skips
    the month while no row dated before ``as_of`` has arrived since."""

    month = models.DateField(_("month"), primary_key=True)
    as_of = models.DateTimeField(_("as of"))
    built_at = models.DateTimeField(_("built at"))
    watermarks = models.JSONField(_("watermarks"), default=dict)

    class Meta:
        verbose_name = _("rolled-up month")
        verbose_name_plural = _("rolled-up months")
        ordering = ["-month"]

    def __str__(self) -> str:
        return f"{self.month:%Y-%m}"


class CohortActivity(models.Model):
    """Members registered in ``cohort`` (a month) who bought in ``month``."""

    cohort = models.DateField(_("registration month"))
    month = models.DateField(_("month"))
    members = models.IntegerField(_("active members"))

    class Meta:
        verbose_name = _("cohort activity")
        verbose_name_plural = _("cohort activity")
        constraints = [models.UniqueConstraint(fields=["month", "cohort"], name="cohort_activity_unique_cell")]

    def __str__(self) -> str:
        return f"{self.cohort:%Y-%m} in {self.month:%Y-%m}: {self.members}"


class ExpiryCohortRollup(models.Model):
    """Points expired on ``day`` out of lots opened in month ``cohort`` (breakage by earning cohort)."""

    day = models.DateField(_("day"))
    cohort = models.DateField(_("earning month"))
    points = models.BigIntegerField(_("points expired"))

    class Meta:
        verbose_name = _("expiry by earning cohort")
        verbose_name_plural = _("expiry by earning cohort")
        constraints = [models.UniqueConstraint(fields=["day", "cohort"], name="expiry_cohort_unique_cell")]
        indexes = [models.Index(fields=["cohort"], name="expiry_cohort_cohort_idx")]

    def __str__(self) -> str:
        return f"{self.day:%Y-%m-%d} {self.cohort:%Y-%m}: {self.points}"


class MonthlyKpiSnapshot(models.Model):
    """The monthly report of one month as it was built (beat on the 1st, or
    ``manage.py build_monthly_report``); a rebuild replaces ``data``.

    Its view permission (``reports.view_monthlykpisnapshot``) is the
    permission to read reports, in admin and through the API."""

    month = models.DateField(_("month"), unique=True)
    built_at = models.DateTimeField(_("built at"))
    data = models.JSONField(_("data"), encoder=DjangoJSONEncoder, default=dict)

    class Meta:
        verbose_name = _("monthly KPI snapshot")
        verbose_name_plural = _("monthly KPI snapshots")
        ordering = ["-month"]

    def __str__(self) -> str:
        return f"{self.month:%Y-%m}"
