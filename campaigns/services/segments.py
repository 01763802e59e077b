"""Segments: lifecycle stages, RFM scores and groups, member tags.

``segments_compute`` is the nightly job (beat ``segments-compute``, 00:40
local). It writes the segmentation columns kept on ``Member`` so that
segments, campaigns and admin filter on plain indexed columns:

* ``last_purchase_at``: the latest ``paid_at`` of a purchase not fully
  refunded (any age, up to ``as_of``).
* ``lifecycle_stage``, in local calendar days (``TIME_ZONE``) between the
  run's day and the registration / last purchase day, so the result does not
  depend on the hour the job runs:

  - ``new``: registered ≤ ``LOYALTY_LIFECYCLE_NEW_DAYS`` (30) days ago,
    whatever was bought;
  - otherwise, with a purchase: ``churned`` when the last one is ≥
    ``LOYALTY_LIFECYCLE_CHURNED_DAYS`` (180) days ago, ``sleeping`` when ≥
    ``LOYALTY_LIFECYCLE_SLEEPING_DAYS`` (90) days ago, else ``active``;
  - otherwise, never bought: ``churned`` once registered ≥ CHURNED_DAYS ago,
    else ``sleeping`` (past the welcome period without a first purchase is a
    reactivation target, never "active").

* RFM scores 1–5 on quintiles (``ntile(5)``) over the members (not closed)
  with at least one net purchase in the last ``LOYALTY_RFM_MONTHS`` (12)
  months: recency = local days since the last purchase (fewer days, higher
  score), frequency = purchases not fully refunded, monetary = net spend
  (amount − refunded). Equal values get equal scores: a tie takes the lowest
  quintile it spans (``ntile`` alone would split, say, the many one-time
  buyers across scores 1–3 by member id).
  Members without a purchase in the window get 0 / 0 / 0 and no RFM group
  (blank): they are not customers of the period, and the lifecycle stage
  already says how long ago they bought.
* ``rfm_group``: each of R, F, M is "high" when the member's score is above
  the average score of the scored population (the usual 8-group RFM model;
  with uniform quintiles this is scores 4–5, and it adapts to ties: with 70 %
  one-time buyers every repeat buyer is "high" on F). ``RFM_GROUPS`` maps the
  three flags to ``Member.RfmGroup``.

Quintiles need the whole population, so the scores are computed in one
statement into a session temporary table; members are then updated in id
batches, one transaction per batch, writing only rows whose values changed
(a re-run writes nothing). ``segments_updated_at`` is the time a member's
values last changed; the time of the last run and its counts are in the
``Heartbeat`` row ``segments_compute``. Closed members are skipped.

Segments (``segment_members``, ``segment_size``, ``segment_sample``) are the
selectors campaigns and admin use; member tags are set by operators
(``member_tags_set`` / ``member_tags_remove``) and by CSV import
(``member_tags_import_csv``).
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import io
import logging
import time as clock
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import IO, Any

from dateutil.relativedelta import relativedelta
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import DatabaseError, connection, transaction
from django.db.models import Count, Exists, OuterRef, QuerySet
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from campaigns.models import Segment
from loyalty.errors import InvalidInput
from loyalty.models import Heartbeat
from members.models import Member, MemberEvent, MemberTag

logger = logging.getLogger(__name__)

# Members per transaction of the nightly job: each batch holds the row locks of
# its changed members for well under a second.
SEGMENTS_BATCH_SIZE = 5000
HEARTBEAT_NAME = "segments_compute"

# (recency high, frequency high, monetary high) → group.
RFM_GROUPS: dict[tuple[bool, bool, bool], str] = {
    (True, True, True): Member.RfmGroup.IMPORTANT_VALUE,
    (True, False, True): Member.RfmGroup.IMPORTANT_DEVELOP,
    (False, True, True): Member.RfmGroup.IMPORTANT_RETAIN,
    (False, False, True): Member.RfmGroup.IMPORTANT_RECALL,
    (True, True, False): Member.RfmGroup.GENERAL_VALUE,
    (True, False, False): Member.RfmGroup.GENERAL_DEVELOP,
    (False, True, False): Member.RfmGroup.GENERAL_RETAIN,
    (False, False, False): Member.RfmGroup.GENERAL_RECALL,
}


# -----------------------------------------------------------------------------
# Nightly computation
# -----------------------------------------------------------------------------
@dataclass
class SegmentsResult:
    updated: int = 0  # members whose segmentation values changed (rows written)
    scored: int = 0  # members with RFM scores (a purchase in the window)
    batches: int = 0
    max_batch_seconds: float = 0.0
    as_of: datetime | None = None


def _rfm_group_case() -> tuple[str, dict[str, str]]:
    """A SQL CASE over the flags ``r_high``, ``f_high``, ``m_high`` giving the
    group of ``RFM_GROUPS``; the group values are bound as parameters."""
    whens = []
    params: dict[str, str] = {}
    for index, ((r_high, f_high, m_high), group) in enumerate(RFM_GROUPS.items()):
        flags = " AND ".join(
            name if high else f"NOT {name}"
            for name, high in (("r_high", r_high), ("f_high", f_high), ("m_high", m_high))
        )
        whens.append(f"WHEN {flags} THEN %(group_{index})s")
        params[f"group_{index}"] = str(group)
    return "CASE " + " ".join(whens) + " END", params


# A session temporary table: it outlives the batch transactions of one run and
# is dropped at its end (or at the start of the next run on the same connection).
_SCORES_DROP_SQL = "DROP TABLE IF EXISTS pg_temp.segments_rfm_scores"
_SCORES_CREATE_SQL = """
CREATE TEMPORARY TABLE segments_rfm_scores (
    member_id bigint PRIMARY KEY,
    r smallint NOT NULL,
    f smallint NOT NULL,
    m smallint NOT NULL,
    rfm_group varchar(20) NOT NULL
)
"""

# One statement over the whole population: quintiles need every member at once.
_SCORES_INSERT_SQL = """
INSERT INTO segments_rfm_scores (member_id, r, f, m, rfm_group)
WITH bought AS (
    SELECT p.member_id,
           %(today)s - MAX((p.paid_at AT TIME ZONE %(tz)s)::date) AS days,
           COUNT(*) AS frequency,
           SUM(p.amount - p.refunded_amount) AS monetary
    FROM points_purchase p
    JOIN members_member mm ON mm.id = p.member_id
    WHERE mm.status <> 'closed' AND p.refunded_amount < p.amount
      AND p.paid_at > %(since)s AND p.paid_at <= %(as_of)s
    GROUP BY p.member_id
), tiles AS (
    SELECT member_id, days, frequency, monetary,
           ntile(5) OVER (ORDER BY days DESC) AS r_tile,
           ntile(5) OVER (ORDER BY frequency) AS f_tile,
           ntile(5) OVER (ORDER BY monetary) AS m_tile
    FROM bought
), scores AS (
    -- Equal values, equal scores: the lowest quintile the tie spans.
    SELECT member_id,
           MIN(r_tile) OVER (PARTITION BY days) AS r,
           MIN(f_tile) OVER (PARTITION BY frequency) AS f,
           MIN(m_tile) OVER (PARTITION BY monetary) AS m
    FROM tiles
), flagged AS (
    SELECT member_id, r, f, m,
           r > AVG(r) OVER () AS r_high, f > AVG(f) OVER () AS f_high, m > AVG(m) OVER () AS m_high
    FROM scores
)
SELECT member_id, r, f, m, {group_case} FROM flagged
"""

_UPDATE_BATCH_SQL = """
WITH last AS (
    SELECT member_id, MAX(paid_at) AS paid_at
    FROM points_purchase
    WHERE member_id BETWEEN %(lo)s AND %(hi)s AND refunded_amount < amount AND paid_at <= %(as_of)s
    GROUP BY member_id
), fresh AS (
    SELECT m.id,
           l.paid_at AS last_purchase_at,
           CASE
             WHEN %(today)s - (m.created_at AT TIME ZONE %(tz)s)::date <= %(new_days)s THEN 'new'
             WHEN l.paid_at IS NULL THEN
               CASE WHEN %(today)s - (m.created_at AT TIME ZONE %(tz)s)::date >= %(churned_days)s
                    THEN 'churned' ELSE 'sleeping' END
             WHEN %(today)s - (l.paid_at AT TIME ZONE %(tz)s)::date >= %(churned_days)s THEN 'churned'
             WHEN %(today)s - (l.paid_at AT TIME ZONE %(tz)s)::date >= %(sleeping_days)s THEN 'sleeping'
             ELSE 'active'
           END AS lifecycle_stage,
           COALESCE(s.r, 0) AS r, COALESCE(s.f, 0) AS f, COALESCE(s.m, 0) AS m,
           COALESCE(s.rfm_group, '') AS rfm_group
    FROM members_member m
    LEFT JOIN last l ON l.member_id = m.id
    LEFT JOIN segments_rfm_scores s ON s.member_id = m.id
    WHERE m.id BETWEEN %(lo)s AND %(hi)s AND m.status <> 'closed'
), changed AS (
    -- Only rows whose values differ, locked in id order like every other
    -- multi-member writer, so that a re-run writes nothing.
    SELECT m.id FROM members_member m JOIN fresh f ON f.id = m.id
    WHERE (m.last_purchase_at, m.lifecycle_stage, m.rfm_recency, m.rfm_frequency, m.rfm_monetary, m.rfm_group)
          IS DISTINCT FROM (f.last_purchase_at, f.lifecycle_stage, f.r, f.f, f.m, f.rfm_group)
    ORDER BY m.id
    FOR NO KEY UPDATE OF m
)
UPDATE members_member m
SET last_purchase_at = f.last_purchase_at, lifecycle_stage = f.lifecycle_stage,
    rfm_recency = f.r, rfm_frequency = f.f, rfm_monetary = f.m, rfm_group = f.rfm_group,
    segments_updated_at = %(now)s, updated_at = %(now)s
FROM fresh f JOIN changed c ON c.id = f.id
WHERE m.id = f.id
"""


def _scores_build(cursor: Any, *, as_of: datetime, today: date, tz: str) -> int:
    """(Re)create the temporary table of RFM scores; returns members scored."""
    cursor.execute(_SCORES_DROP_SQL)
    cursor.execute(_SCORES_CREATE_SQL)
    group_case, group_params = _rfm_group_case()
    since = as_of - relativedelta(months=settings.LOYALTY_RFM_MONTHS)
    cursor.execute(
        # group_case is built from constants; every value is a bound parameter.
        _SCORES_INSERT_SQL.format(group_case=group_case),
        {"today": today, "tz": tz, "since": since, "as_of": as_of, **group_params},
    )
    scored = cursor.rowcount
    cursor.execute("ANALYZE segments_rfm_scores")
    return scored


def segments_compute(*, as_of: datetime | None = None, batch_size: int | None = None) -> SegmentsResult:
    """Recompute every member's last purchase, lifecycle stage, RFM scores and
    RFM group as of ``as_of`` (now by default), in SQL: one statement for the
    scores of the whole population, then id batches of ``batch_size``
    members, one transaction each, writing only the rows that changed.
    Closed members are skipped. Safe to re-run (the second run writes 0 rows);
    the task guards against two runs at once. Raises nothing of its own."""
    as_of = as_of or timezone.now()
    batch_size = batch_size or SEGMENTS_BATCH_SIZE
    tz = timezone.get_default_timezone_name()
    today = timezone.localdate(as_of, timezone.get_default_timezone())
    params = {
        "as_of": as_of,
        "today": today,
        "tz": tz,
        "new_days": settings.LOYALTY_LIFECYCLE_NEW_DAYS,
        "sleeping_days": settings.LOYALTY_LIFECYCLE_SLEEPING_DAYS,
        "churned_days": settings.LOYALTY_LIFECYCLE_CHURNED_DAYS,
    }
    result = SegmentsResult(as_of=as_of)
    try:
        with connection.cursor() as cursor:
            result.scored = _scores_build(cursor, as_of=as_of, today=today, tz=tz)
            cursor.execute("SELECT COALESCE(MIN(id), 0), COALESCE(MAX(id), -1) FROM members_member")
            low, high = cursor.fetchone()
        for lo in range(low, high + 1, batch_size):
            started = clock.monotonic()
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute(
                    _UPDATE_BATCH_SQL, {**params, "lo": lo, "hi": lo + batch_size - 1, "now": timezone.now()}
                )
                result.updated += cursor.rowcount
            result.batches += 1
            result.max_batch_seconds = max(result.max_batch_seconds, clock.monotonic() - started)
    finally:
        # After a failure inside an outer transaction the drop fails too; the
        # table then dies with the session, or the next run drops it first.
        with contextlib.suppress(DatabaseError), connection.cursor() as cursor:
            cursor.execute(_SCORES_DROP_SQL)
    Heartbeat.objects.update_or_create(
        name=HEARTBEAT_NAME,
        defaults={
            "at": timezone.now(),
            "detail": {
                "as_of": as_of.isoformat(),
                "updated": result.updated,
                "scored": result.scored,
                "batches": result.batches,
                "max_batch_seconds": round(result.max_batch_seconds, 3),
            },
        },
    )
    logger.info(
        "segments as of %s: %s members changed, %s with RFM scores, %s batches",
        as_of,
        result.updated,
        result.scored,
        result.batches,
    )
    return result


def segments_summary() -> dict[str, dict[str, int]]:
    """Members (not closed) by lifecycle stage and by RFM group ("" = none)."""
    members = Member.objects.exclude(status=Member.Status.CLOSED).order_by()
    return {
        "lifecycle_stage": dict(
            members.values_list("lifecycle_stage").annotate(n=Count("pk")).values_list("lifecycle_stage", "n")
        ),
        "rfm_group": dict(members.values_list("rfm_group").annotate(n=Count("pk")).values_list("rfm_group", "n")),
    }


def segments_last_run() -> Heartbeat | None:
    """The ``Heartbeat`` of the last ``segments_compute`` run, if any."""
    return Heartbeat.objects.filter(name=HEARTBEAT_NAME).first()


# -----------------------------------------------------------------------------
# Segments (selectors)
# -----------------------------------------------------------------------------
def _local_midnight(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=timezone.get_default_timezone())


def segment_members(segment: Segment, *, at: datetime | None = None) -> QuerySet[Member]:
    """The active members (not frozen, not closed) matching every criterion of
    ``segment``; an empty criterion does not filter. Within one criterion any
    value matches (tiers, stages, groups, stores, and tags: a member with any
    of the tags). ``birthday_month`` 0 is the local month of ``at`` (now by
    default); ``registered_from`` / ``registered_until`` are local dates,
    both included. An unsaved segment has no tiers, stores or tags yet."""
    at = at or timezone.now()
    members = Member.objects.filter(status=Member.Status.ACTIVE)
    if segment.pk is not None:
        tier_ids = list(segment.tiers.values_list("pk", flat=True))
        if tier_ids:
            members = members.filter(tier_id__in=tier_ids)
        store_ids = list(segment.stores.values_list("pk", flat=True))
        if store_ids:
            members = members.filter(registration_store_id__in=store_ids)
        tag_ids = list(segment.tags.values_list("pk", flat=True))
        if tag_ids:
            # EXISTS, not a join: a member with two of the tags is listed once.
            tagged = Member.tags.through.objects.filter(member_id=OuterRef("pk"), membertag_id__in=tag_ids)
            members = members.filter(Exists(tagged))
    if segment.lifecycle_stages:
        members = members.filter(lifecycle_stage__in=list(segment.lifecycle_stages))
    if segment.rfm_groups:
        members = members.filter(rfm_group__in=list(segment.rfm_groups))
    if segment.birthday_month is not None:
        month = segment.birthday_month or timezone.localtime(at, timezone.get_default_timezone()).month
        members = members.filter(birthday__month=month)
    if segment.registered_from is not None:
        members = members.filter(created_at__gte=_local_midnight(segment.registered_from))
    if segment.registered_until is not None:
        members = members.filter(created_at__lt=_local_midnight(segment.registered_until + timedelta(days=1)))
    if segment.marketing_consent_only:
        members = members.filter(marketing_consent=True)
    return members


def segment_size(segment: Segment, *, at: datetime | None = None) -> int:
    return segment_members(segment, at=at).count()


def segment_sample(segment: Segment, *, n: int = 20, at: datetime | None = None) -> list[Member]:
    """Up to ``n`` members of the segment drawn at random (a different draw each time)."""
    return list(segment_members(segment, at=at).select_related("tier", "registration_store").order_by("?")[: max(n, 0)])


# -----------------------------------------------------------------------------
# Member tags
# -----------------------------------------------------------------------------
TAG_NAME_MAX_LENGTH = MemberTag._meta.get_field("name").max_length or 50
_THROUGH = Member.tags.through
_THROUGH_TABLE = _THROUGH._meta.db_table
# Reasons of the audit events (fixed text: the audit trail is not translated).
_AUDIT_REASON_TAGS = "tags"
_AUDIT_REASON_IMPORT = "tags: CSV import"


def tag_name_normalise(name: str) -> str:
    """A tag name as stored: surrounding and repeated inner whitespace removed."""
    return " ".join((name or "").split())


def _user_or_none(by_user: AbstractBaseUser | None) -> AbstractBaseUser | None:
    return by_user if by_user is not None and by_user.is_authenticated else None


def _ids(items: Iterable[Any]) -> list[int]:
    if isinstance(items, QuerySet):
        return list(items.values_list("pk", flat=True))
    return [item.pk for item in items]


def _links_insert(pairs: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Insert (member id, tag id) links, skipping those that exist and members
    that are closed; returns the links inserted."""
    if not pairs:
        return []
    members, tags = zip(*pairs, strict=True)
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            INSERT INTO {_THROUGH_TABLE} (member_id, membertag_id)
            SELECT p.member_id, p.tag_id
            FROM unnest(%s::bigint[], %s::bigint[]) AS p(member_id, tag_id)
            JOIN members_member m ON m.id = p.member_id AND m.status <> 'closed'
            ON CONFLICT (member_id, membertag_id) DO NOTHING
            RETURNING member_id, membertag_id
            """,  # noqa: S608 - the table name is the model's, not input
            [list(members), list(tags)],
        )
        return [(row[0], row[1]) for row in cursor.fetchall()]


def _events_write(links: Sequence[tuple[int, int]], *, key: str, by_user: AbstractBaseUser | None, reason: str) -> None:
    """One ``profile_updated`` event per member whose tags changed, naming them."""
    if not links:
        return
    names = dict(MemberTag.objects.filter(pk__in={tag_id for _, tag_id in links}).values_list("pk", "name"))
    by_member: dict[int, list[str]] = {}
    for member_id, tag_id in links:
        by_member.setdefault(member_id, []).append(names.get(tag_id, str(tag_id)))
    MemberEvent.objects.bulk_create(
        [
            MemberEvent(
                member_id=member_id,
                kind=MemberEvent.Kind.PROFILE_UPDATED,
                reason=reason or _AUDIT_REASON_TAGS,
                data={key: sorted(tag_names)},
                by_user=by_user,
            )
            for member_id, tag_names in sorted(by_member.items())
        ],
        batch_size=2000,
    )


@transaction.atomic
def member_tags_set(
    *,
    members: Iterable[Member],
    tags: Iterable[MemberTag],
    by_user: AbstractBaseUser | None,
    reason: str = "",
) -> int:
    """Give every member of ``members`` every tag of ``tags`` (a queryset or a
    list of each). Idempotent: tags a member already has are left alone, and
    closed members are skipped. Each member whose tags changed gets a
    ``profile_updated`` event naming the tags added. Returns the number of
    (member, tag) links added."""
    member_ids = _ids(members)
    tag_ids = _ids(tags)
    pairs = [(member_id, tag_id) for member_id in member_ids for tag_id in tag_ids]
    added = _links_insert(pairs)
    _events_write(added, key="tags_added", by_user=_user_or_none(by_user), reason=reason)
    return len(added)


@transaction.atomic
def member_tags_remove(
    *,
    members: Iterable[Member],
    tags: Iterable[MemberTag],
    by_user: AbstractBaseUser | None,
    reason: str = "",
) -> int:
    """Take the tags of ``tags`` off every member of ``members``; idempotent.
    Each member whose tags changed gets a ``profile_updated`` event naming the
    tags removed. Returns the number of (member, tag) links removed."""
    member_ids = _ids(members)
    tag_ids = _ids(tags)
    if not member_ids or not tag_ids:
        return 0
    with connection.cursor() as cursor:
        cursor.execute(
            f"DELETE FROM {_THROUGH_TABLE} WHERE member_id = ANY(%s) AND membertag_id = ANY(%s) "  # noqa: S608
            "RETURNING member_id, membertag_id",
            [member_ids, tag_ids],
        )
        removed = [(row[0], row[1]) for row in cursor.fetchall()]
    _events_write(removed, key="tags_removed", by_user=_user_or_none(by_user), reason=reason)
    return len(removed)


def member_tags_get_or_create(*, names: Iterable[str]) -> dict[str, MemberTag]:
    """The tags named ``names`` (normalised), created when missing; safe
    against the same tag being created concurrently."""
    wanted = {tag_name_normalise(name) for name in names} - {""}
    if not wanted:
        return {}
    MemberTag.objects.bulk_create([MemberTag(name=name) for name in sorted(wanted)], ignore_conflicts=True)
    return {tag.name: tag for tag in MemberTag.objects.filter(name__in=wanted)}


# -----------------------------------------------------------------------------
# Member tags: CSV import
# -----------------------------------------------------------------------------
# The whole file is read into memory (a tag list is ~30 bytes a row).
MAX_TAG_IMPORT_BYTES = 20 * 1024 * 1024
# Rows applied per transaction; a crash keeps the chunks already committed and
# a second run of the same file finishes the job (the import is idempotent).
TAG_IMPORT_CHUNK = 2000
MEMBER_NO_COLUMN_NAMES = ("member_no", "member", "card_no", "会员号", "会员卡号", "卡号")
TAG_COLUMN_NAMES = ("tag", "tags", "标签")


class TagRowProblem:
    """Why a row of a tag import was rejected (``code`` is stable)."""

    MEMBER_NO_REQUIRED = "member_no_required"
    TAG_REQUIRED = "tag_required"
    TAG_TOO_LONG = "tag_too_long"
    TOO_MANY_COLUMNS = "too_many_columns"
    INVALID_ENCODING = "invalid_encoding"
    UNKNOWN_MEMBER = "unknown_member"
    MEMBER_CLOSED = "member_closed"
    UNKNOWN_TAG = "unknown_tag"

    MESSAGES: dict[str, Any] = {
        MEMBER_NO_REQUIRED: _("The member number is missing."),
        TAG_REQUIRED: _("The tag is missing."),
        TAG_TOO_LONG: _("The tag is longer than %(max)s characters."),
        TOO_MANY_COLUMNS: _("The row has more than two values; is a comma in the tag missing its quotes?"),
        INVALID_ENCODING: _("The row contains bytes that are neither UTF-8 nor GBK text."),
        UNKNOWN_MEMBER: _("No member with this number."),
        MEMBER_CLOSED: _("This member's account is closed."),
        UNKNOWN_TAG: _("No such tag, and you may not create tags."),
    }


@dataclass(frozen=True, slots=True)
class TagImportRow:
    line: int  # physical line of the file where the row starts
    member_no: str
    tag: str
    problem: str = ""
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def message(self) -> str:
        """Translated into the language active when shown."""
        text = str(TagRowProblem.MESSAGES.get(self.problem, ""))
        return text % self.params if self.params else text


@dataclass
class TagImportReport:
    encoding: str = ""
    header: bool = False
    total: int = 0  # data rows read (blank lines skipped)
    tagged: int = 0  # links added
    already: int = 0  # links that existed (or repeated in the file)
    created_tags: list[str] = field(default_factory=list)
    rejected_rows: list[TagImportRow] = field(default_factory=list)

    @property
    def rejected(self) -> int:
        return len(self.rejected_rows)

    @property
    def ok(self) -> bool:
        return not self.rejected_rows


def _tag_file_decode(file: IO[bytes]) -> tuple[str, str]:
    """Text and encoding label: UTF-8 (with or without BOM) or GBK, as Chinese Excel saves CSV."""
    data = file.read(MAX_TAG_IMPORT_BYTES + 1)
    if isinstance(data, str):
        raise TypeError("member_tags_import_csv needs a file opened in binary mode")
    if len(data) > MAX_TAG_IMPORT_BYTES:
        raise InvalidInput(
            _("The file is larger than %(size)s MB; split it."),
            size=MAX_TAG_IMPORT_BYTES // (1024 * 1024),
            detail={"max_bytes": MAX_TAG_IMPORT_BYTES},
        )
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise InvalidInput(_("The file is UTF-16 encoded. In Excel, save it as “CSV UTF-8” or “CSV”."))
    if data.startswith(codecs.BOM_UTF8):
        return data[len(codecs.BOM_UTF8) :].decode("utf-8", errors="replace"), "UTF-8 (BOM)"
    try:
        return data.decode("utf-8"), "UTF-8"
    except UnicodeDecodeError:
        return data.decode("gb18030", errors="replace"), "GBK"


def _tag_records(text: str) -> Iterator[tuple[int, list[str]]]:
    """CSV records with the physical line each starts on (the first line is 1)."""
    reader = csv.reader(io.StringIO(text, newline=""))
    next_line = 1
    try:
        for values in reader:
            line = next_line
            next_line = reader.line_num + 1
            yield line, values
    except csv.Error as error:
        raise InvalidInput(
            _("Line %(line)s is not valid CSV (%(reason)s); the rest of the file was not read."),
            line=next_line,
            reason=str(error),
            detail={"line": next_line},
        ) from None


def _tag_layout(values: list[str]) -> tuple[int, int] | None:
    """(member_no column, tag column) named by a header row, or None when the
    row is data (then the member number is the first column, the tag the second)."""
    names = [value.strip().lower() for value in values]
    member_col = next((i for i, name in enumerate(names) if name in MEMBER_NO_COLUMN_NAMES), None)
    tag_col = next((i for i, name in enumerate(names) if name in TAG_COLUMN_NAMES), None)
    if member_col is None or tag_col is None:
        return None
    return member_col, tag_col


def _tag_row_parse(line: int, values: list[str], layout: tuple[int, int]) -> TagImportRow:
    member_col, tag_col = layout
    member_no = values[member_col].strip() if member_col < len(values) else ""
    tag = tag_name_normalise(values[tag_col]) if tag_col < len(values) else ""
    extra = [value for index, value in enumerate(values) if index not in layout and value.strip()]
    problem, params = "", {}
    if any("\ufffd" in value for value in values):
        problem = TagRowProblem.INVALID_ENCODING
    elif extra:
        problem = TagRowProblem.TOO_MANY_COLUMNS
    elif not member_no:
        problem = TagRowProblem.MEMBER_NO_REQUIRED
    elif not tag:
        problem = TagRowProblem.TAG_REQUIRED
    elif len(tag) > TAG_NAME_MAX_LENGTH:
        problem, params = TagRowProblem.TAG_TOO_LONG, {"max": TAG_NAME_MAX_LENGTH}
    return TagImportRow(line=line, member_no=member_no, tag=tag, problem=problem, params=params)


def _reject(row: TagImportRow, problem: str) -> TagImportRow:
    return TagImportRow(line=row.line, member_no=row.member_no, tag=row.tag, problem=problem)


@transaction.atomic
def _tag_chunk_apply(
    rows: list[TagImportRow],
    report: TagImportReport,
    *,
    seen: set[tuple[int, int]],
    by_user: AbstractBaseUser | None,
    create_tags: bool,
) -> None:
    members = {
        member_no: (pk, status)
        for member_no, pk, status in Member.objects.filter(member_no__in={row.member_no for row in rows}).values_list(
            "member_no", "pk", "status"
        )
    }
    names = {row.tag for row in rows}
    tags = {tag.name: tag for tag in MemberTag.objects.filter(name__in=names)}
    if create_tags:
        missing = sorted(names - set(tags))
        if missing:
            tags.update(member_tags_get_or_create(names=missing))
            report.created_tags.extend(missing)
    pairs: dict[tuple[int, int], TagImportRow] = {}
    repeated: list[TagImportRow] = []
    for row in rows:
        found = members.get(row.member_no)
        if found is None:
            report.rejected_rows.append(_reject(row, TagRowProblem.UNKNOWN_MEMBER))
        elif found[1] == Member.Status.CLOSED:
            report.rejected_rows.append(_reject(row, TagRowProblem.MEMBER_CLOSED))
        elif row.tag not in tags:
            report.rejected_rows.append(_reject(row, TagRowProblem.UNKNOWN_TAG))
        else:
            pair = (found[0], tags[row.tag].pk)
            if pair in pairs or pair in seen:
                repeated.append(row)
            else:
                pairs[pair] = row
    added = _links_insert(list(pairs))
    seen.update(pairs)
    report.tagged += len(added)
    report.already += len(pairs) - len(added) + len(repeated)
    _events_write(added, key="tags_added", by_user=by_user, reason=_AUDIT_REASON_IMPORT)


def member_tags_import_csv(
    *, file: IO[bytes], by_user: AbstractBaseUser | None, create_tags: bool = True
) -> TagImportReport:
    """Tag members from a CSV of ``member_no,tag`` rows (an optional header
    row naming the columns; UTF-8 or GBK), in chunks of ``TAG_IMPORT_CHUNK``
    rows, one transaction each. Idempotent: a link that exists is counted as
    ``already`` and written again by no one, so the same file can be imported
    twice. Unknown tags are created unless ``create_tags`` is False (then the
    row is rejected). Rejected rows are reported with their line and a stable
    problem code; they do not stop the others. Raises ``InvalidInput`` when
    the file itself cannot be read (UTF-16, too large, broken CSV): rows
    before the broken line are then applied."""
    text, encoding = _tag_file_decode(file)
    report = TagImportReport(encoding=encoding)
    by_user = _user_or_none(by_user)
    seen: set[tuple[int, int]] = set()
    layout: tuple[int, int] | None = None
    chunk: list[TagImportRow] = []
    for line, values in _tag_records(text):
        if not any(value.strip() for value in values):
            continue
        if layout is None:
            layout = _tag_layout(values)
            if layout is not None:
                report.header = True
                continue
            layout = (0, 1)
        report.total += 1
        row = _tag_row_parse(line, values, layout)
        if row.problem:
            report.rejected_rows.append(row)
            continue
        chunk.append(row)
        if len(chunk) >= TAG_IMPORT_CHUNK:
            _tag_chunk_apply(chunk, report, seen=seen, by_user=by_user, create_tags=create_tags)
            chunk = []
    if chunk:
        _tag_chunk_apply(chunk, report, seen=seen, by_user=by_user, create_tags=create_tags)
    report.rejected_rows.sort(key=lambda row: row.line)
    return report
