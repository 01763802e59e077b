"""Campaigns: multipliers at the till, bonuses, coupon grants, birthdays,
referrals and reactivation waves.

Every effect goes through the ledger and coupon services and is recorded as a
``CampaignGrant`` unique per (campaign, member, reference): a re-run of a
scheduled campaign issues nothing twice. Budgets are reserved with a
conditional ``F()`` update under a CHECK constraint, so they are never
exceeded, even by concurrent tills.

Lock order: a reservation holds the campaign's row until the transaction
commits, so every member's points account a transaction will lock is locked
before any campaign row (the till holds the buyer's account; ``purchase_boost``
also locks the referrer's before a referred member's first purchase reserves
anything; scheduled grants lock the member's account first). Campaign rows are
then taken multipliers first (by pk), then bonuses, then referrals.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from functools import partial
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Exists, F, OuterRef, Q, QuerySet
from django.utils import timezone

from campaigns.models import Campaign, CampaignGrant, Coupon
from loyalty.errors import LoyaltyError
from loyalty.sql import execute
from members.models import Member, Store, Tier

logger = logging.getLogger(__name__)
ONE = Decimal("1")


# -----------------------------------------------------------------------------
# Which campaigns apply
# -----------------------------------------------------------------------------
def campaigns_running(*, kinds: list[str], at: datetime) -> QuerySet[Campaign]:
    return (
        Campaign.objects.filter(kind__in=kinds, status=Campaign.Status.ACTIVE, starts_at__lte=at)
        .filter(Q(ends_at__isnull=True) | Q(ends_at__gt=at))
        .prefetch_related("stores", "tiers")
        .select_related("segment", "benefit")
        .order_by("pk")
    )


PURCHASE_KINDS = (Campaign.Kind.MULTIPLIER, Campaign.Kind.BIRTHDAY, Campaign.Kind.BONUS, Campaign.Kind.REFERRAL)


_ANY_RUNNING_SQL = (
    f"EXISTS (SELECT 1 FROM {Campaign._meta.db_table} WHERE kind = ANY(%s) AND status = %s "  # noqa: S608 - model table
    "AND starts_at <= %s AND (ends_at IS NULL OR ends_at > %s))"
)


def purchase_campaigns_column(at: datetime) -> tuple[str, list[Any]]:
    """Whether any campaign a purchase may touch runs at ``at``, as one SQL
    expression and its parameters, to read in a statement the till makes anyway
    (its account lock) and pass to ``campaigns_for_purchase(any_running=...)``."""
    return _ANY_RUNNING_SQL, [[str(kind) for kind in PURCHASE_KINDS], str(Campaign.Status.ACTIVE), at, at]


def campaigns_for_purchase(*, at: datetime, any_running: bool | None = None) -> list[Campaign]:
    """Every running campaign a purchase may touch (multipliers, birthday,
    first-purchase bonus, referral), read once per purchase and passed to
    ``purchase_boost`` and ``campaigns_after_purchase``: nothing more when none
    runs, which is the common case at the till. ``any_running``: that answer,
    read by the caller with another statement (``purchase_campaigns_column``);
    else one plain query asks (the ORM's query with its joins costs the till
    several milliseconds of CPU)."""
    if any_running is None:
        sql, params = purchase_campaigns_column(at)
        with connection.cursor() as cursor:
            execute(cursor, f"SELECT {sql}", params)
            (any_running,) = cursor.fetchone()
    if not any_running:
        return []
    return list(campaigns_running(kinds=list(PURCHASE_KINDS), at=at))


def _of_kinds(running: list[Campaign] | None, kinds: list[str], at: datetime) -> list[Campaign]:
    if running is None:
        return list(campaigns_running(kinds=kinds, at=at))
    return [campaign for campaign in running if campaign.kind in kinds]


def _in_segment(campaign: Campaign, member: Member, at: datetime) -> bool:
    if campaign.segment_id is None:
        return True
    from campaigns.services.segments import segment_members

    return segment_members(campaign.segment, at=at).filter(pk=member.pk).exists()


def _targets(
    campaign: Campaign,
    *,
    member: Member,
    store: Store | None,
    at: datetime,
    tier_id: int | None = None,
    in_segment: Callable[[Member, datetime], bool] | None = None,
) -> bool:
    """Whether the campaign applies to ``member`` at ``store``; ``tier_id``: the
    member's tier then (a replayed purchase), the current tier by default;
    ``in_segment``: a cached segment test (the dry run)."""
    stores = [s.pk for s in campaign.stores.all()]
    if stores and (store is None or store.pk not in stores):
        return False
    tiers = [t.pk for t in campaign.tiers.all()]
    if tiers and (tier_id or member.tier_id) not in tiers:
        return False
    return (in_segment or partial(_in_segment, campaign))(member, at)


def _day_matches(campaign: Campaign, *, member: Member, at: datetime) -> bool:
    local = timezone.localtime(at)
    if campaign.kind == Campaign.Kind.BIRTHDAY:
        return member.birthday is not None and member.birthday.month == local.month
    if campaign.weekdays and local.isoweekday() not in campaign.weekdays:
        return False
    return not (campaign.month_day and local.day != campaign.month_day)


def multipliers_for(
    *, member: Member, store: Store | None, at: datetime, running: list[Campaign] | None = None
) -> list[Campaign]:
    """Multiplier and birthday campaigns that apply to this purchase (among
    ``running``, from ``campaigns_for_purchase``, when given)."""
    return [
        campaign
        for campaign in _of_kinds(running, [Campaign.Kind.MULTIPLIER, Campaign.Kind.BIRTHDAY], at)
        if campaign.multiplier > ONE
        and _day_matches(campaign, member=member, at=at)
        and _targets(campaign, member=member, store=store, at=at)
    ]


def combined_multiplier(campaigns: list[Campaign]) -> Decimal:
    """The largest non-stackable multiplier, times every stackable one."""
    best = max((c.multiplier for c in campaigns if not c.stackable), default=ONE)
    result = best
    for campaign in campaigns:
        if campaign.stackable:
            result *= campaign.multiplier
    return result


def _effective(campaigns: list[Campaign]) -> list[Campaign]:
    """The campaigns that actually count: the best non-stackable one and every stackable one."""
    plain = [c for c in campaigns if not c.stackable]
    best = max(plain, key=lambda c: (c.multiplier, -c.pk), default=None)
    return [c for c in campaigns if c.stackable or c is best]


def campaign_multiplier_for(*, member: Member, store: Store | None, at: datetime) -> Decimal:
    """Multiplier a purchase would get now, without reserving budget (previews)."""
    return combined_multiplier(_effective(multipliers_for(member=member, store=store, at=at)))


# -----------------------------------------------------------------------------
# Budget and grants
# -----------------------------------------------------------------------------
def _reserve(campaign: Campaign, *, points: int = 0, coupons: int = 0) -> bool:
    """Take budget with a conditional update: False when it would be exceeded.

    A campaign without a budget is not touched: updating its row would make
    every till running the campaign queue behind one row lock. Its results
    come from its grants (``campaign_results``)."""
    needs_points = bool(points) and campaign.budget_points is not None
    needs_coupons = bool(coupons) and campaign.budget_coupons is not None
    if not needs_points and not needs_coupons:
        return True
    points = points if needs_points else 0
    coupons = coupons if needs_coupons else 0
    condition = Q()
    if points:
        condition &= Q(budget_points__isnull=True) | Q(spent_points__lte=F("budget_points") - points)
    if coupons:
        condition &= Q(budget_coupons__isnull=True) | Q(spent_coupons__lte=F("budget_coupons") - coupons)
    return bool(
        Campaign.objects.filter(condition, pk=campaign.pk).update(
            spent_points=F("spent_points") + points, spent_coupons=F("spent_coupons") + coupons
        )
    )


def _limit_reached(campaign: Campaign, member: Member) -> bool:
    if campaign.per_member_limit is None:
        return False
    return CampaignGrant.objects.filter(campaign=campaign, member=member).count() >= campaign.per_member_limit


def _grant_row(campaign: Campaign, member: Member, reference: str, **fields: Any) -> CampaignGrant | None:
    try:
        with transaction.atomic():
            return CampaignGrant.objects.create(campaign=campaign, member=member, reference=reference, **fields)
    except IntegrityError:
        return None


@dataclass
class Boost:
    multiplier: Decimal = ONE
    earned: int = 0
    campaigns: list[int] = field(default_factory=list)


def purchase_boost(
    *,
    member: Member,
    store: Store | None,
    tier: Tier,
    base_amount: Decimal,
    at: datetime,
    reference: str,
    running: list[Campaign] | None = None,
) -> Boost:
    """Points a purchase earns with the campaigns running, reserving their budget
    for the extra points; a campaign whose budget or per-member limit would be
    exceeded is left out. Records a grant per campaign applied."""
    from points.services import points_for_amount

    _referrer_lock(member, at, running)
    candidates = [
        c for c in multipliers_for(member=member, store=store, at=at, running=running) if not _limit_reached(c, member)
    ]
    base = points_for_amount(amount=base_amount, tier=tier, multiplier=ONE)
    if not candidates:  # the common case: no savepoint, no budget row touched
        return Boost(multiplier=ONE, earned=base)
    while True:
        effective = _effective(candidates)
        multiplier = combined_multiplier(effective)
        earned = points_for_amount(amount=base_amount, tier=tier, multiplier=multiplier)
        shares = _extra_shares(effective, earned - base)
        failed = None
        with transaction.atomic():
            for campaign in effective:
                if not _reserve(campaign, points=shares[campaign.pk]):
                    failed = campaign
                    transaction.set_rollback(True)
                    break
        if failed is None:
            break
        candidates = [c for c in candidates if c.pk != failed.pk]
    for campaign in effective:
        _grant_row(campaign, member, reference, points=shares[campaign.pk])
    return Boost(multiplier=multiplier, earned=earned, campaigns=[c.pk for c in effective])


def _referrer_lock(member: Member, at: datetime, running: list[Campaign] | None = None) -> None:
    """Before a referred member's first purchase reserves any budget, lock the
    referrer's points account, which ``referral_reward`` will credit: accounts
    before campaign rows, or the referrer's own purchase (their account, then
    the same multiplier row) deadlocks with this one."""
    from points.locks import account_lock
    from points.models import Purchase

    if not member.referrer_id or Purchase.objects.filter(member=member)[:2].count() > 1:
        return
    if _of_kinds(running, [Campaign.Kind.REFERRAL], at):
        referrer = Member.objects.filter(pk=member.referrer_id).first()
        if referrer is not None:
            account_lock(referrer)


def _extra_shares(campaigns: list[Campaign], extra: int) -> dict[int, int]:
    """Split the extra points over the campaigns by their multiplier's excess over 1."""
    if not campaigns or extra <= 0:
        return {c.pk: 0 for c in campaigns}
    weights = {c.pk: c.multiplier - ONE for c in campaigns}
    total = sum(weights.values())
    shares = {pk: int(extra * weight / total) for pk, weight in weights.items()}
    first = campaigns[0].pk
    shares[first] += extra - sum(shares.values())
    return shares


def _credit(campaign: Campaign, member: Member, points: int, reference: str, at: datetime) -> CampaignGrant | None:
    """Give bonus points once per reference, within budget and per-member limit."""
    from points.locks import account_lock
    from points.models import PointsEntry
    from points.services import Refs, points_credit

    if points <= 0:
        return None
    with transaction.atomic():
        account_lock(member)  # lock order: the account before the campaign row
        if _limit_reached(campaign, member):
            return None
        grant = _grant_row(campaign, member, reference, points=points)
        if grant is None:
            return None
        if not _reserve(campaign, points=points):
            transaction.set_rollback(True)
            return None
        try:
            entry = points_credit(
                member=member,
                points=points,
                kind=PointsEntry.Kind.BONUS,
                refs=Refs(
                    source=PointsEntry.Source.CAMPAIGN, reason=campaign.name, reference=f"campaign:{campaign.pk}"
                ),
                at=at,
            )
        except LoyaltyError as exc:  # frozen/closed member: no bonus, nothing reserved
            logger.info("campaign %s: no bonus for member %s (%s)", campaign.pk, member.pk, exc.code)
            transaction.set_rollback(True)
            return None
        CampaignGrant.objects.filter(pk=grant.pk).update(entry=entry)
    return grant


def _coupon(
    campaign: Campaign, member: Member, reference: str, at: datetime, benefit: Any = None
) -> CampaignGrant | None:
    """Give one coupon once per reference, within the coupon budget and limits."""
    from campaigns.services.coupons import coupon_issue
    from points.locks import account_lock

    benefit = benefit or campaign.benefit
    if benefit is None:
        return None
    with transaction.atomic():
        account_lock(member)  # lock order: the account before the campaign row
        if _limit_reached(campaign, member):
            return None
        grant = _grant_row(campaign, member, reference)
        if grant is None:
            return None
        if not _reserve(campaign, coupons=1):
            transaction.set_rollback(True)
            return None
        try:
            coupon = coupon_issue(
                benefit=benefit,
                member=member,
                source=Coupon.Source.CAMPAIGN,
                reference=f"campaign:{campaign.pk}:{reference}",
                reason=campaign.name,
                at=at,
            )
        except LoyaltyError as exc:
            logger.info("campaign %s: no coupon for member %s (%s)", campaign.pk, member.pk, exc.code)
            transaction.set_rollback(True)
            return None
        CampaignGrant.objects.filter(pk=grant.pk).update(coupon=coupon)
    return grant


# -----------------------------------------------------------------------------
# Event hooks (called by the points services inside their transaction)
# -----------------------------------------------------------------------------
def campaigns_after_purchase(*, purchase: Any, at: datetime, running: list[Campaign] | None = None) -> int:
    """First-purchase bonuses and referral rewards. Returns bonus points given.
    ``running``: the campaigns of ``campaigns_for_purchase``, when already read."""
    from points.models import Purchase

    member = purchase.member
    if member is None:
        return 0
    bonuses = [
        c for c in _of_kinds(running, [Campaign.Kind.BONUS], at) if c.condition == Campaign.Condition.FIRST_PURCHASE
    ]
    if not bonuses and not member.referrer_id:
        return 0
    given = 0
    first = not Purchase.objects.filter(member=member).exclude(pk=purchase.pk).exists()
    if not first:
        return 0
    for campaign in bonuses:
        if _targets(
            campaign, member=member, store=purchase.store, at=at
        ):
            grant = _credit(campaign, member, campaign.points, "first_purchase", at)
            given += grant.points if grant else 0
    if member.referrer_id:
        referral_reward(referee=member, at=at, store=purchase.store)
    return given


def _streak_start(member: Member, today: date) -> date | None:
    """First day of the run of consecutive check-ins ending ``today`` (None
    when the member did not check in today): the latest day up to today
    whose previous day has no check-in."""
    from points.models import CheckIn

    table = CheckIn._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT MAX(c.day) FROM {table} c WHERE c.member_id = %s AND c.day <= %s "  # noqa: S608 - model table
            f"AND NOT EXISTS (SELECT 1 FROM {table} p WHERE p.member_id = c.member_id AND p.day = c.day - 1) "
            f"AND EXISTS (SELECT 1 FROM {table} t WHERE t.member_id = c.member_id AND t.day = %s)",
            [member.pk, today, today],
        )
        (start,) = cursor.fetchone()
    return start


def profile_complete(member: Member) -> bool:
    return bool(member.phone and member.name and member.birthday and member.gender != Member.Gender.UNKNOWN)


def campaigns_after_profile(*, member: Member, at: datetime | None = None) -> int:
    """"Profile completed" bonuses, once per member, when name, birthday and gender are all given."""
    at = at or timezone.now()
    if member.status != Member.Status.ACTIVE or not profile_complete(member):
        return 0
    given = 0
    for campaign in campaigns_running(kinds=[Campaign.Kind.BONUS], at=at):
        if campaign.condition == Campaign.Condition.PROFILE_COMPLETED and _targets(
            campaign, member=member, store=None, at=at
        ):
            grant = _credit(campaign, member, campaign.points, "profile_completed", at)
            given += grant.points if grant else 0
    return given


def campaigns_after_check_in(*, member: Member, at: datetime) -> int:
    """Check-in streak bonuses: once per streak of ``streak_days`` consecutive
    days. A streak ends on its last day: a run of 14 consecutive check-ins is
    two streaks of 7 (bonus on the 7th and 14th day), a missed day starts over."""
    given = 0
    today = timezone.localtime(at).date()
    campaigns = [
        c
        for c in campaigns_running(kinds=[Campaign.Kind.BONUS], at=at)
        if c.condition == Campaign.Condition.CHECK_IN_STREAK and c.streak_days > 0
    ]
    if not campaigns:
        return 0
    start = _streak_start(member, today)
    if start is None:
        return 0
    run = (today - start).days + 1
    for campaign in campaigns:
        days = campaign.streak_days
        if run % days or not _targets(campaign, member=member, store=None, at=at):
            continue
        # One grant per streak: the run's first day and the streak's number in it.
        grant = _credit(campaign, member, campaign.points, f"streak:{start.isoformat()}:{run // days}", at)
        given += grant.points if grant else 0
    return given


def referral_reward(*, referee: Member, at: datetime, store: Store | None = None) -> None:
    """The referrer of a member making their first purchase (at ``store``) gets
    the referral reward (once per referee), and the threshold reward once at N
    referrals. A campaign limited to stores counts first purchases made there."""
    # Read now, not the cached relation: the referrer may have been frozen since.
    referrer = Member.objects.select_related("tier").filter(pk=referee.referrer_id).first()
    if referrer is None or referrer.pk == referee.pk or referrer.status != Member.Status.ACTIVE:
        return
    for campaign in campaigns_running(kinds=[Campaign.Kind.REFERRAL], at=at):
        if not _targets(campaign, member=referrer, store=store, at=at):
            continue
        _credit(campaign, referrer, campaign.points, f"referee:{referee.pk}", at)
        if campaign.threshold_count and campaign.threshold_points:
            done = CampaignGrant.objects.filter(
                campaign=campaign, member=referrer, reference__startswith="referee:"
            ).count()
            if done >= campaign.threshold_count:
                _credit(campaign, referrer, campaign.threshold_points, f"threshold:{campaign.threshold_count}", at)


# -----------------------------------------------------------------------------
# Scheduled runs
# -----------------------------------------------------------------------------
def _segment_or_all(campaign: Campaign, at: datetime) -> QuerySet[Member]:
    if campaign.segment_id is not None:
        from campaigns.services.segments import segment_members

        members = segment_members(campaign.segment, at=at)
    else:
        members = Member.objects.filter(status=Member.Status.ACTIVE)
    tiers = [t.pk for t in campaign.tiers.all()]
    if tiers:
        members = members.filter(tier_id__in=tiers)
    return members.select_related("tier")


def campaign_run(*, campaign: Campaign, at: datetime | None = None) -> int:
    """Run a scheduled campaign (coupon grant, birthday gifts, reactivation waves)
    once for today; safe to re-run. Returns grants made."""
    at = at or timezone.now()
    if (
        campaign.status != Campaign.Status.ACTIVE
        or campaign.starts_at > at
        or (campaign.ends_at and campaign.ends_at <= at)
    ):
        return 0
    made = 0
    local = timezone.localtime(at)
    if campaign.kind == Campaign.Kind.COUPON_GRANT:
        for member in _segment_or_all(campaign, at).iterator(chunk_size=500):
            made += _coupon(campaign, member, "grant", at) is not None
    elif campaign.kind == Campaign.Kind.BIRTHDAY and campaign.benefit_id:
        members = _segment_or_all(campaign, at).filter(birthday__month=local.month)
        for member in members.iterator(chunk_size=500):
            made += _coupon(campaign, member, f"birthday:{local.year}", at) is not None
    elif campaign.kind == Campaign.Kind.REACTIVATION:
        made += _reactivation_waves(campaign, at)
    return made


def _sleeping_members(campaign: Campaign, at: datetime) -> QuerySet[Member]:
    """Members of the campaign sleeping as of the nightly job, without a
    purchase since (the stage is refreshed only at night)."""
    from points.models import Purchase

    sleeping_days = getattr(settings, "LOYALTY_LIFECYCLE_SLEEPING_DAYS", 90)
    recent = Purchase.objects.filter(
        member_id=OuterRef("pk"), paid_at__gt=at - timedelta(days=sleeping_days), refunded_amount__lt=F("amount")
    )
    members = _segment_or_all(campaign, at).filter(lifecycle_stage=Member.Lifecycle.SLEEPING)
    return members.exclude(Exists(recent))


def _reactivation_waves(campaign: Campaign, at: datetime) -> int:
    """Sleeping members enter at wave 0; wave k follows ``after_days`` later,
    unless the member bought since entering."""
    from points.models import Purchase

    made = 0
    waves = sorted(campaign.waves or [], key=lambda wave: int(wave.get("after_days", 0)))
    if not waves:
        return 0
    for member in _sleeping_members(campaign, at).iterator(chunk_size=500):
        made += _wave(campaign, member, 0, waves[0], at)
    # Bought since entering: the waves stop at once, from the purchases
    # themselves (``last_purchase_at`` is only refreshed by the nightly job).
    bought = Purchase.objects.filter(
        member_id=OuterRef("member_id"), paid_at__gt=OuterRef("created_at"), refunded_amount__lt=F("amount")
    )
    entries = (
        CampaignGrant.objects.filter(campaign=campaign, reference="wave:0", member__status=Member.Status.ACTIVE)
        .exclude(member__last_purchase_at__gt=F("created_at"))
        .exclude(Exists(bought))
        .select_related("member__tier")
        .order_by("pk")
    )
    for entry in entries.iterator(chunk_size=500):
        member = entry.member
        for index, wave in enumerate(waves[1:], start=1):
            if entry.created_at + timedelta(days=int(wave.get("after_days", 0))) <= at:
                made += _wave(campaign, member, index, wave, at)
    return made


def _wave(campaign: Campaign, member: Member, index: int, wave: dict[str, Any], at: datetime) -> int:
    from campaigns.models import Benefit

    reference = f"wave:{index}"
    benefit = Benefit.objects.filter(pk=wave.get("benefit")).first() if wave.get("benefit") else None
    # The grant and its message together: a wave is never recorded without its message.
    with transaction.atomic():
        if benefit is not None:
            grant = _coupon(campaign, member, reference, at, benefit=benefit)
        else:
            grant = _grant_row(campaign, member, reference)
        if grant is None:
            return 0
        if wave.get("message"):
            try:
                from campaigns.services.notifications import message_enqueue
            except ImportError:  # messaging not installed in this build
                return 1
            message_enqueue(
                member=member,
                kind="campaign",
                payload={"campaign": campaign.name, "text": wave["message"], "wave": index},
                dedupe_key=f"campaign:{campaign.pk}:{member.pk}:{reference}",
                marketing=True,
            )
    return 1


def campaigns_run_scheduled(*, at: datetime | None = None) -> int:
    at = at or timezone.now()
    total = 0
    kinds = [Campaign.Kind.COUPON_GRANT, Campaign.Kind.BIRTHDAY, Campaign.Kind.REACTIVATION]
    for campaign in campaigns_running(kinds=kinds, at=at):
        total += campaign_run(campaign=campaign, at=at)
    return total


# -----------------------------------------------------------------------------
# Results and dry run
# -----------------------------------------------------------------------------
def campaign_results(*, campaign: Campaign, using: str = "default") -> dict[str, Any]:
    """The campaign's totals to date, read from the database ``using`` (the
    reports pass their reporting database)."""
    from django.db.models import Count, Sum

    from points.models import Purchase

    grants = CampaignGrant.objects.using(using).filter(campaign=campaign)
    totals = grants.aggregate(members=Count("member", distinct=True), points=Sum("points"))
    coupons = Coupon.objects.using(using).filter(pk__in=grants.exclude(coupon=None).values("coupon"))
    reached = grants.values("member")
    sales = Purchase.objects.using(using).filter(member__in=reached, paid_at__gte=campaign.starts_at).aggregate(
        total=Sum(F("amount") - F("refunded_amount"))
    )["total"]
    return {
        "members_reached": totals["members"] or 0,
        "points_issued": totals["points"] or 0,
        "coupons_issued": coupons.count(),
        "coupons_written_off": coupons.filter(status=Coupon.Status.WRITTEN_OFF).count(),
        "sales_of_reached_members": (sales or Decimal("0")).quantize(Decimal("0.01")),
    }


@dataclass
class Forecast:
    purchases: int = 0
    members: int = 0
    points: int = 0
    coupons: int = 0


def campaign_dry_run(*, campaign: Campaign, weeks: int = 4, now: datetime | None = None) -> Forecast:
    """Forecast what ``campaign`` would issue, without writing anything.

    Multipliers, birthday multipliers and first-purchase bonuses: the last
    ``weeks`` of purchases replayed in order through the campaign alone, as if
    it had been active, with its targeting, per-member limit and points budget
    as the till applies them. Coupon grants, birthday gifts and the first
    reactivation wave: the members the next run would reach (those not given
    it yet), within the coupon budget left and the benefit's stock."""
    now = now or timezone.now()
    # Fresh, with what every replayed purchase looks at loaded once.
    campaign = (
        Campaign.objects.select_related("segment", "benefit").prefetch_related("stores", "tiers").get(pk=campaign.pk)
    )
    forecast = Forecast()
    reached: set[int] = set()
    if campaign.kind in (Campaign.Kind.MULTIPLIER, Campaign.Kind.BIRTHDAY, Campaign.Kind.BONUS):
        reached = _replay_purchases(campaign, forecast, since=now - timedelta(weeks=weeks), now=now)
    gifted = _coupon_targets(campaign, now)
    if gifted is not None:
        forecast.coupons = len(gifted) if _forecast_issues_coupons(campaign) else 0
        reached |= gifted
    forecast.members = len(reached)
    return forecast


def _replay_purchases(campaign: Campaign, forecast: Forecast, *, since: datetime, now: datetime) -> set[int]:
    from points.models import Purchase
    from points.services import points_for_amount

    reached: set[int] = set()
    per_member: dict[int, int] = {}
    budget_points = campaign.budget_points
    purchases = (
        Purchase.objects.filter(paid_at__gte=since, paid_at__lt=now, member__isnull=False)
        .select_related("member", "tier", "store")
        .order_by("paid_at", "pk")
    )
    seen_before = set(
        Purchase.objects.filter(paid_at__lt=since, member__isnull=False).values_list("member_id", flat=True)
    )
    # Segment membership once per local month (a birthday-month criterion
    # follows the month), among the members who bought in the window.
    segment_months: dict[tuple[int, int], set[int]] = {}

    def in_segment(member: Member, at: datetime) -> bool:
        from campaigns.services.segments import segment_members

        local = timezone.localtime(at)
        key = (local.year, local.month)
        if key not in segment_months:
            buyers = purchases.values("member_id")
            segment_months[key] = set(
                segment_members(campaign.segment, at=at).filter(pk__in=buyers).values_list("pk", flat=True)
            )
        return member.pk in segment_months[key]

    for purchase in purchases.iterator(chunk_size=1000):
        member = purchase.member
        # Whether this is the member's first purchase, whatever happens below.
        first = member.pk not in seen_before
        seen_before.add(member.pk)
        if campaign.per_member_limit is not None and per_member.get(member.pk, 0) >= campaign.per_member_limit:
            continue
        tier = purchase.tier or member.tier
        if not _targets(
            campaign,
            member=member,
            store=purchase.store,
            at=purchase.paid_at,
            tier_id=tier.pk,
            in_segment=in_segment if campaign.segment_id else None,
        ):
            continue
        if campaign.kind == Campaign.Kind.BONUS:
            if campaign.condition != Campaign.Condition.FIRST_PURCHASE or not first or campaign.points <= 0:
                continue
            extra = campaign.points
        else:
            if campaign.multiplier <= ONE or not _day_matches(campaign, member=member, at=purchase.paid_at):
                continue
            base_amount = purchase.amount - purchase.cash_paid_by_points
            base = points_for_amount(amount=base_amount, tier=tier, multiplier=ONE)
            extra = points_for_amount(amount=base_amount, tier=tier, multiplier=campaign.multiplier) - base
        if budget_points is not None and forecast.points + extra > budget_points:
            continue
        forecast.purchases += 1
        forecast.points += extra
        per_member[member.pk] = per_member.get(member.pk, 0) + 1
        reached.add(member.pk)
    return reached


def _forecast_issues_coupons(campaign: Campaign) -> bool:
    if campaign.kind == Campaign.Kind.REACTIVATION:
        waves = sorted(campaign.waves or [], key=lambda wave: int(wave.get("after_days", 0)))
        return bool(waves and waves[0].get("benefit"))
    return campaign.benefit_id is not None


def _coupon_targets(campaign: Campaign, now: datetime) -> set[int] | None:
    """Members the next scheduled run would reach (None for campaigns that are not run)."""
    local = timezone.localtime(now)
    if campaign.kind == Campaign.Kind.COUPON_GRANT:
        if campaign.benefit_id is None:
            return set()
        members, reference = _segment_or_all(campaign, now), "grant"
    elif campaign.kind == Campaign.Kind.BIRTHDAY and campaign.benefit_id:
        members = _segment_or_all(campaign, now).filter(birthday__month=local.month)
        reference = f"birthday:{local.year}"
    elif campaign.kind == Campaign.Kind.REACTIVATION:
        if not campaign.waves:
            return set()
        members = _sleeping_members(campaign, now)
        reference = "wave:0"
    else:
        return None
    given = CampaignGrant.objects.filter(campaign=campaign, reference=reference).values("member_id")
    members = members.exclude(pk__in=given)
    limit = None
    if campaign.budget_coupons is not None and _forecast_issues_coupons(campaign):
        limit = max(campaign.budget_coupons - campaign.spent_coupons, 0)
    benefit = campaign.benefit if campaign.kind != Campaign.Kind.REACTIVATION else None
    if benefit is not None:
        eligible = list(benefit.eligible_tiers.values_list("pk", flat=True))
        if eligible:
            members = members.filter(tier_id__in=eligible)
        if benefit.total_stock is not None:
            stock = max(benefit.total_stock - benefit.issued_count, 0)
            limit = stock if limit is None else min(limit, stock)
    ids = members.order_by().values_list("pk", flat=True)
    return set(ids if limit is None else ids[:limit])
