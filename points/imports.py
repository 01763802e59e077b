"""CSV imports into the points ledger: operators' bulk credits, and the
history of a chain moving over from its previous system.

The entry points below are the services; ``manage.py bulk_credit``,
``manage.py import_history`` and the admin upload page only parse their
input, call one of them and render the ``ImportReport``:

* ``bulk_credit_csv``: rows ``member_no,points``, one reason for the whole
  file. Each row goes through ``points.services.adjustment_request`` with
  ``batch`` = SHA-256 of the file's bytes; the unique (batch, member)
  constraint makes a file apply once however often it is uploaded. Rows above
  ``LOYALTY_ADJUST_APPROVAL_THRESHOLD`` wait for a second operator like any
  adjustment.
* ``history_balances_csv``: opening balances, credited through
  ``points.services.points_credit`` as ``adjust`` entries of source ``import``
  with reference ``opening:<member_no>``; a member who already has that entry
  is skipped, so the file can be run again.
* ``history_purchases_csv``: past purchases, inserted as ``Purchase`` rows
  that earn nothing (the opening balance carries the points) and count for
  tier qualification and reports; idempotent on (store, receipt number).

Rows are applied in batches of ``BATCH_SIZE``: one durable transaction per
batch and a savepoint per row, so a refused row leaves nothing behind and does
not stop the others, the account row locks a batch takes are held briefly, and
a crash keeps the batches already committed (running the file again finishes
the job). A dry run applies each batch and rolls it back, so its report is
exactly what a real run would do.

Files are UTF-8 (with or without BOM) or GBK, as Chinese Excel saves "CSV";
the header row is optional (without one, columns are taken in the documented
order).
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import re
import time as clock
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from typing import IO, Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from loyalty.errors import InvalidInput, LoyaltyError, NotFound
from members import codes
from members.errors import InvalidPhone, MemberClosed, MemberFrozen, UnknownStore
from members.models import Member, Store
from members.services import phone_normalise
from points.locks import account_lock
from points.models import PointsAdjustment, PointsEntry, Purchase
from points.services import Refs, adjustment_request, points_credit

# Rows applied per transaction: large enough that commits don't dominate,
# small enough that a batch's account locks are held for about a second.
BATCH_SIZE = 500
# Applied rows listed one by one in a report (all are counted; every rejected
# row is always listed, since each needs fixing).
LISTED_ROWS_LIMIT = 1000
# Largest number of points one row may credit (the operator API's bound too).
MAX_POINTS = 10**8
# Bytes read to tell UTF-8 from GBK.
_SNIFF_BYTES = 64 * 1024
# Written in the ledger itself (not shown translated): the spec's wording.
OPENING_BALANCE_REASON = "opening balance"
OPENING_REFERENCE_PREFIX = "opening:"
_RECEIPT_MAX_LENGTH = Purchase._meta.get_field("receipt_no").max_length or 64


# -----------------------------------------------------------------------------
# Errors: every rejected row and every unreadable file has a stable code
# -----------------------------------------------------------------------------
class ImportFileError(InvalidInput):
    """The file as a whole cannot be read (further); the report carries it."""

    code = "invalid_import_file"
    message = _("The file could not be read as CSV.")


class EmptyFile(ImportFileError):
    code = "empty_file"
    message = _("The file is empty.")


class UnsupportedEncoding(ImportFileError):
    code = "unsupported_encoding"
    message = _("The file is UTF-16 encoded. In Excel, save it as “CSV UTF-8” or “CSV”.")


class UnreadableCsv(ImportFileError):
    code = "unreadable_csv"
    message = _("Line %(line)s is not valid CSV (%(reason)s); the rest of the file was not read.")


class MissingColumn(ImportFileError):
    code = "missing_column"
    message = _("The header row must include the column “%(column)s” (columns: %(columns)s).")


class DuplicateColumn(ImportFileError):
    code = "duplicate_column"
    message = _("The column “%(column)s” appears more than once in the header row.")


class UnknownMember(NotFound):
    code = "unknown_member"
    message = _("No member with the number or phone “%(value)s”.")


class MemberRequired(InvalidInput):
    code = "member_required"
    message = _("The member (member number or phone) is missing.")


class InvalidPointsValue(InvalidInput):
    code = "invalid_points"
    message = _("“%(value)s” is not a whole number of points from %(min)s to %(max)s.")


class InvalidExpiresOn(InvalidInput):
    code = "invalid_expires_on"
    message = _("“%(value)s” is not a valid expiry date: use YYYY-MM-DD or YYYY/MM/DD, today or later.")


class StoreRequired(InvalidInput):
    code = "store_required"
    message = _("The store code is missing.")


class ReceiptRequired(InvalidInput):
    code = "receipt_no_required"
    message = _("The receipt number is missing or longer than %(max)s characters.")


class InvalidAmount(InvalidInput):
    code = "invalid_amount"
    message = _("“%(value)s” is not a valid amount: use a number above 0 with at most 2 decimals, up to %(max)s.")


class InvalidPaidAtValue(InvalidInput):
    code = "invalid_paid_at"
    message = _(
        "“%(value)s” is not a valid payment time: use YYYY-MM-DD HH:MM[:SS] (local time) or YYYY-MM-DD, "
        "not in the future."
    )


class DuplicateMemberInFile(InvalidInput):
    code = "duplicate_in_file"
    message = _("This member already appears on line %(line)s of the file.")


class DuplicateReceiptInFile(InvalidInput):
    code = "duplicate_in_file"
    message = _("This receipt of this store already appears on line %(line)s of the file.")


class WrongValueCount(InvalidInput):
    code = "wrong_value_count"
    message = _("The row has %(given)s values where %(expected)s are expected (%(columns)s).")


class InvalidEncoding(InvalidInput):
    code = "invalid_encoding"
    message = _("The row contains bytes that are neither UTF-8 nor GBK text.")


# -----------------------------------------------------------------------------
# The report
# -----------------------------------------------------------------------------
class Outcome:
    APPLIED = "applied"
    PENDING = "pending"  # bulk credit: an adjustment waiting for approval
    ALREADY = "already_applied"  # by an earlier run of this file (or another run of it)
    SKIPPED = "skipped"  # opening balance of 0: nothing to credit
    REJECTED = "rejected"


class Kind:
    BULK_CREDIT = "bulk_credit"
    BALANCES = "balances"
    PURCHASES = "purchases"


@dataclass(frozen=True, slots=True)
class ImportProblem:
    """A rejection or file error, kept as code + message template + params so
    that the message is translated into the language active when it is shown."""

    code: str
    template: Any
    params: dict[str, Any]

    @classmethod
    def from_error(cls, error: LoyaltyError) -> ImportProblem:
        return cls(code=error.code, template=error.message, params=dict(error.params))

    @property
    def message(self) -> str:
        text = str(self.template)
        return text % self.params if self.params else text


@dataclass(frozen=True, slots=True)
class RowResult:
    line: int  # physical line of the file where the row starts (a header is line 1)
    outcome: str
    key: str  # the member (bulk credit, balances) or receipt number (purchases) as given
    member_no: str = ""
    points: int = 0
    amount: Decimal | None = None
    store: str = ""
    problem: ImportProblem | None = None
    note: Any = ""  # e.g. the earlier adjustment's status when already applied

    @property
    def code(self) -> str:
        return self.problem.code if self.problem else ""

    @property
    def message(self) -> str:
        return self.problem.message if self.problem else str(self.note or "")


@dataclass
class ImportReport:
    kind: str
    dry_run: bool = False
    batch: str = ""  # bulk credit: the SHA-256 of the file
    encoding: str = ""
    header: bool = False
    ignored_columns: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    points: dict[str, int] = field(default_factory=dict)
    rows: dict[str, list[RowResult]] = field(default_factory=dict)
    # Set when the file (or its rest) could not be read; rows before it were applied.
    error: ImportProblem | None = None
    error_line: int | None = None
    seconds: float = 0.0

    def add(self, result: RowResult) -> None:
        outcome = result.outcome
        self.counts[outcome] = self.counts.get(outcome, 0) + 1
        self.points[outcome] = self.points.get(outcome, 0) + result.points
        listed = self.rows.setdefault(outcome, [])
        if outcome == Outcome.REJECTED or len(listed) < LISTED_ROWS_LIMIT:
            listed.append(result)

    def count(self, outcome: str) -> int:
        return self.counts.get(outcome, 0)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def applied(self) -> int:
        return self.count(Outcome.APPLIED)

    @property
    def pending(self) -> int:
        return self.count(Outcome.PENDING)

    @property
    def already_applied(self) -> int:
        return self.count(Outcome.ALREADY)

    @property
    def skipped(self) -> int:
        return self.count(Outcome.SKIPPED)

    @property
    def rejected(self) -> int:
        return self.count(Outcome.REJECTED)

    @property
    def points_applied(self) -> int:
        return self.points.get(Outcome.APPLIED, 0)

    @property
    def points_pending(self) -> int:
        return self.points.get(Outcome.PENDING, 0)

    @property
    def rejected_rows(self) -> list[RowResult]:
        return self.rows.get(Outcome.REJECTED, [])

    @property
    def applied_rows(self) -> list[RowResult]:
        return self.rows.get(Outcome.APPLIED, [])

    @property
    def pending_rows(self) -> list[RowResult]:
        return self.rows.get(Outcome.PENDING, [])

    @property
    def already_rows(self) -> list[RowResult]:
        return self.rows.get(Outcome.ALREADY, [])

    @property
    def ok(self) -> bool:
        return self.rejected == 0 and self.error is None


# -----------------------------------------------------------------------------
# Reading: bytes → decoded lines → CSV records with their line numbers
# -----------------------------------------------------------------------------
def _encoding_sniff(head: bytes) -> str:
    """``utf-8-sig``, ``utf-8`` or ``gb18030`` (the superset of GBK) from the
    first bytes of a file. Raises ``UnsupportedEncoding`` for UTF-16."""
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise UnsupportedEncoding()
    if head.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    # Only whole lines: the sample may end inside a multi-byte character.
    sample = head[: head.rfind(b"\n") + 1] or head
    text = sample.decode("utf-8", errors="replace")
    bad = text.count("\ufffd")
    good = sum(1 for char in text if char > "\x7f") - bad
    # Mostly valid UTF-8 is UTF-8 with a few damaged rows (rejected one by one);
    # GBK text is almost never valid UTF-8 beyond a stray character.
    return "utf-8" if bad == 0 or good > bad else "gb18030"


def _encoding_label(encoding: str) -> str:
    return {"utf-8-sig": "UTF-8 (BOM)", "utf-8": "UTF-8", "gb18030": "GBK"}.get(encoding, encoding)


def _decoded_lines(file: IO[bytes], encoding: str, chunk_size: int = _SNIFF_BYTES) -> Iterator[str]:
    """Text lines (with their line ends) of a binary file read in chunks; a
    line that does not decode keeps U+FFFD in place of the bad bytes."""
    pending = b""
    while True:
        chunk = file.read(chunk_size)
        if not chunk:
            break
        if isinstance(chunk, str):
            raise TypeError("CSV imports need a file opened in binary mode")
        lines = (pending + chunk).splitlines(keepends=True)
        # The last piece may be cut short (or be a "\r" whose "\n" is in the next chunk).
        pending = lines.pop() if lines else b""
        for raw in lines:
            yield raw.decode(encoding, errors="replace")
    if pending:
        yield pending.decode(encoding, errors="replace")


class _Records:
    """CSV records with the line each starts on; ``next_line`` is where the
    record being read starts (the line to name when it cannot be read)."""

    def __init__(self, lines: Iterable[str]) -> None:
        self._reader = csv.reader(lines)
        self.next_line = 1

    def __iter__(self) -> Iterator[tuple[int, list[str]]]:
        for values in self._reader:
            line = self.next_line
            self.next_line = self._reader.line_num + 1
            yield line, values


@dataclass(frozen=True)
class _Column:
    name: str
    aliases: tuple[str, ...]
    required: bool = True


BULK_CREDIT_COLUMNS = (
    _Column("member_no", ("member", "card_no", "phone", "会员卡号", "卡号", "会员号", "手机号")),
    _Column("points", ("积分",)),
)
BALANCE_COLUMNS = (
    _Column(
        "phone_or_member_no",
        ("member", "member_no", "phone", "mobile", "card_no", "会员", "会员卡号", "卡号", "手机", "手机号"),
    ),
    _Column("points", ("balance", "积分", "积分余额")),
    _Column("expires_on", ("expires", "expiry", "expiry_date", "过期日期", "到期日期", "有效期至"), required=False),
)
PURCHASE_COLUMNS = (
    _Column("store", ("store_code", "门店", "门店编码")),
    _Column("receipt_no", ("receipt", "小票号", "单号", "流水号")),
    _Column("member", ("member_no", "phone", "phone_or_member_no", "会员", "会员卡号", "手机号")),
    _Column("amount", ("金额", "实付金额")),
    _Column("paid_at", ("time", "date", "支付时间", "交易时间")),
)


@dataclass
class _Layout:
    """Where each column is in a record; ``header`` tells whether the first
    record named the columns."""

    columns: tuple[_Column, ...]
    positions: dict[str, int]
    header: bool
    width: int

    def values(self, raw: list[str]) -> dict[str, str]:
        return {name: raw[index].strip() if index < len(raw) else "" for name, index in self.positions.items()}

    def check_width(self, raw: list[str]) -> None:
        """Without a header the values must be the documented columns, in order."""
        given = len(raw)
        while given and not raw[given - 1].strip():
            given -= 1
        required = sum(1 for column in self.columns if column.required)
        if (not self.header and given > self.width) or given < (required if not self.header else 1):
            raise WrongValueCount(
                given=given, expected=self.width, columns=",".join(column.name for column in self.columns)
            )


def _layout(first: list[str], columns: tuple[_Column, ...], report: ImportReport) -> _Layout:
    """The first record is a header when one of its values names a column."""
    aliases = {alias.lower(): column.name for column in columns for alias in (column.name, *column.aliases)}
    names = [value.strip().lower() for value in first]
    if not any(name in aliases for name in names):
        return _Layout(columns, {column.name: index for index, column in enumerate(columns)}, False, len(columns))
    positions: dict[str, int] = {}
    for index, (name, value) in enumerate(zip(names, first, strict=True)):
        key = aliases.get(name)
        if key is None:
            if value.strip():
                report.ignored_columns.append(value.strip())
            continue
        if key in positions:
            raise DuplicateColumn(column=value.strip())
        positions[key] = index
    for column in columns:
        if column.required and column.name not in positions:
            raise MissingColumn(column=column.name, columns=",".join(c.name for c in columns))
    report.header = True
    return _Layout(columns, positions, True, len(first))


@dataclass(slots=True)
class _Row:
    line: int
    values: dict[str, str]
    error: LoyaltyError | None = None
    points: int = 0
    expires_on: date | None = None
    amount: Decimal | None = None
    paid_at: datetime | None = None


RowParser = Callable[[_Row], None]
BatchApplier = Callable[[list[_Row]], list[RowResult]]


def _csv_run(
    *,
    file: IO[bytes],
    columns: tuple[_Column, ...],
    report: ImportReport,
    parse: RowParser,
    apply: BatchApplier,
    batch_size: int,
    on_batch: Callable[[ImportReport], None] | None,
) -> ImportReport:
    """Read ``file`` and hand its parsed rows to ``apply`` batch by batch."""
    started = clock.monotonic()
    head = file.read(_SNIFF_BYTES)
    if isinstance(head, str):
        raise TypeError("CSV imports need a file opened in binary mode")
    batch: list[_Row] = []

    def flush() -> None:
        # One durable transaction per batch; a dry run rolls each one back.
        with transaction.atomic(durable=True):
            results = apply(batch)
            if report.dry_run:
                transaction.set_rollback(True)
        for result in sorted(results, key=lambda result: result.line):
            report.add(result)
        batch.clear()
        if on_batch is not None:
            on_batch(report)

    records: _Records | None = None
    try:
        encoding = _encoding_sniff(head)
        report.encoding = _encoding_label(encoding)
        file.seek(0)
        records = _Records(_decoded_lines(file, encoding))
        layout: _Layout | None = None
        for line, raw in records:
            if not any(value.strip() for value in raw):
                continue
            if layout is None:
                layout = _layout(raw, columns, report)
                if layout.header:
                    continue
            row = _Row(line=line, values=layout.values(raw))
            try:
                layout.check_width(raw)
                if any("\ufffd" in value for value in raw):
                    raise InvalidEncoding()
                parse(row)
            except LoyaltyError as error:
                row.error = error
            batch.append(row)
            if len(batch) >= batch_size:
                flush()
        if layout is None:
            raise EmptyFile()
    except ImportFileError as error:
        report.error, report.error_line = ImportProblem.from_error(error), error.params.get("line")
    except csv.Error as error:
        line = records.next_line if records is not None else 1
        problem = UnreadableCsv(line=line, reason=str(error))
        report.error, report.error_line = ImportProblem.from_error(problem), line
    if batch:
        flush()
    report.seconds = clock.monotonic() - started
    return report


# -----------------------------------------------------------------------------
# Values
# -----------------------------------------------------------------------------
# 1200, +1200, 1,200 or 1200.0 (as Excel may write a whole number).
_POINTS = re.compile(r"^\+?(\d{1,3}(?:,\d{3})+|\d+)(?:\.0+)?$")
# YYYY-MM-DD or YYYY/MM/DD (Excel drops leading zeros: 2025/1/5), with an
# optional time HH:MM[:SS] (Excel writes "2025/3/1 14:05").
_DATETIME = re.compile(r"^(\d{4})([-/])(\d{1,2})\2(\d{1,2})(?:[ T](\d{1,2}):(\d{2})(?::(\d{2})(?:\.\d+)?)?)?$")
_AMOUNT = re.compile(r"^(\d{1,3}(?:,\d{3})+|\d+)(\.\d{1,2})?$")
_CURRENCY_SIGNS = ("¥", "￥", "CNY", "RMB")


def _points_parse(value: str, *, minimum: int) -> int:
    match = _POINTS.match(value.replace(" ", ""))
    points = int(match[1].replace(",", "")) if match else None
    if points is None or points < minimum or points > MAX_POINTS:
        raise InvalidPointsValue(value=value, min=minimum, max=MAX_POINTS)
    return points


def _local_datetime(match: re.Match[str]) -> datetime | None:
    try:
        return datetime(
            int(match[1]),
            int(match[3]),
            int(match[4]),
            int(match[5] or 0),
            int(match[6] or 0),
            int(match[7] or 0),
            tzinfo=timezone.get_current_timezone(),
        )
    except ValueError:
        return None


def _expires_on_parse(value: str) -> date | None:
    if not value:
        return None
    match = _DATETIME.match(value)
    parsed = _local_datetime(match) if match else None
    if parsed is None or parsed.date() < timezone.localdate():
        raise InvalidExpiresOn(value=value)
    return parsed.date()


def _amount_parse(value: str) -> Decimal:
    text = value.replace(" ", "")
    for sign in _CURRENCY_SIGNS:
        text = text.removeprefix(sign)
    match = _AMOUNT.match(text)
    maximum = settings.LOYALTY_PURCHASE_MAX_AMOUNT
    try:
        amount = Decimal(text.replace(",", "")) if match else None
    except InvalidOperation:
        amount = None
    if amount is None or amount <= 0 or amount > maximum:
        raise InvalidAmount(value=value, max=maximum)
    return amount.quantize(Decimal("0.01"))


def _paid_at_parse(value: str, *, now: datetime) -> datetime:
    match = _DATETIME.match(value)
    parsed = _local_datetime(match) if match else None
    if parsed is None and not match:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            parsed = None
        if parsed is not None and parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=timezone.get_current_timezone())
    # A few minutes of clock difference with the old system are tolerated.
    if parsed is None or parsed.year < 1990 or parsed > now + timedelta(minutes=5):
        raise InvalidPaidAtValue(value=value)
    return parsed


def _looks_like_member_no(value: str) -> bool:
    return value.isascii() and value.isdigit() and len(value) == codes.MEMBER_NO_LENGTH


def _members_find(identifiers: Iterable[str]) -> dict[str, Member]:
    """Members by the identifiers given (member number or phone), in two
    queries; identifiers matching nobody are absent from the result."""
    wanted = {value for value in identifiers if value}
    numbers = {value for value in wanted if _looks_like_member_no(value)}
    phones: dict[str, str] = {}
    for value in wanted - numbers:
        try:
            phones[value] = phone_normalise(value)
        except InvalidPhone:
            continue
    found: dict[str, Member] = {}
    if numbers:
        for member in Member.objects.filter(member_no__in=numbers):
            found[member.member_no] = member
    if phones:
        by_phone = {member.phone: member for member in Member.objects.filter(phone__in=set(phones.values()))}
        for value, phone in phones.items():
            if phone in by_phone:
                found[value] = by_phone[phone]
    return found


def _constraint_name(error: IntegrityError) -> str:
    return getattr(getattr(error.__cause__, "diag", None), "constraint_name", "") or ""


def _rejected(row: _Row, error: LoyaltyError, **fields: Any) -> RowResult:
    return RowResult(line=row.line, outcome=Outcome.REJECTED, problem=ImportProblem.from_error(error), **fields)


# -----------------------------------------------------------------------------
# Bulk credit
# -----------------------------------------------------------------------------
def file_sha256(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


class _BulkCredit:
    def __init__(self, *, reason: str, by_user: AbstractBaseUser, batch: str) -> None:
        self.reason = reason
        self.by_user = by_user
        self.batch = batch
        self.seen: dict[int, int] = {}  # member pk → line of its first row

    @staticmethod
    def parse(row: _Row) -> None:
        if not row.values["member_no"]:
            raise MemberRequired()
        row.points = _points_parse(row.values["points"], minimum=1)

    def apply(self, rows: list[_Row]) -> list[RowResult]:
        members = _members_find(row.values["member_no"] for row in rows if row.error is None)
        return [self._apply_row(row, members.get(row.values["member_no"])) for row in rows]

    def _apply_row(self, row: _Row, member: Member | None) -> RowResult:
        given = row.values["member_no"]
        if row.error is not None:
            return _rejected(row, row.error, key=given)
        if member is None:
            return _rejected(row, UnknownMember(value=given), key=given)
        fields = {"key": given, "member_no": member.member_no}
        if member.pk in self.seen:
            return _rejected(row, DuplicateMemberInFile(line=self.seen[member.pk]), **fields)
        self.seen[member.pk] = row.line
        # The adjustment service applies to frozen members (an operator's
        # correction); a bulk credit is a goodwill credit, which a frozen
        # member must not receive.
        if member.status == Member.Status.FROZEN:
            return _rejected(row, MemberFrozen(), **fields)
        try:
            # A savepoint per row: a refused row leaves nothing behind.
            with transaction.atomic():
                adjustment = adjustment_request(
                    member=member, points=row.points, reason=self.reason, by_user=self.by_user, batch=self.batch
                )
        except IntegrityError as error:
            if _constraint_name(error) != "adjustment_once_per_batch_member":
                raise
            earlier = PointsAdjustment.objects.filter(batch=self.batch, member=member).first()
            note = earlier.get_status_display() if earlier is not None else ""
            return RowResult(line=row.line, outcome=Outcome.ALREADY, note=note, **fields)
        except LoyaltyError as error:
            return _rejected(row, error, **fields)
        outcome = Outcome.APPLIED if adjustment.status == PointsAdjustment.Status.APPLIED else Outcome.PENDING
        return RowResult(line=row.line, outcome=outcome, points=row.points, **fields)


def bulk_credit_csv(
    *,
    file: IO[bytes],
    reason: str,
    by_user: AbstractBaseUser,
    dry_run: bool = False,
    batch_size: int = BATCH_SIZE,
    on_batch: Callable[[ImportReport], None] | None = None,
) -> ImportReport:
    """Credit the points of a CSV file (``member_no,points``; member number or
    phone; header optional) to each member, with one ``reason`` for the file.

    Each row becomes a ``PointsAdjustment`` requested by ``by_user`` through
    ``adjustment_request``, with ``batch`` = SHA-256 of the file's bytes: the
    database's unique (batch, member) constraint makes every row apply once
    however often the same file is uploaded (rows of an earlier upload are
    reported as ``already_applied``). Rows above the approval threshold wait
    for a second operator (``pending``). Rejected, with their line, nothing
    written: ``unknown_member``, ``invalid_points`` (points must be 1 to
    ``MAX_POINTS``), ``duplicate_in_file``, ``member_frozen``,
    ``member_closed``. Raises ``ReasonRequired`` for a blank reason, before
    reading the file.

    Must be called outside a transaction (one durable transaction per batch).
    """
    from members.errors import ReasonRequired

    reason = (reason or "").strip()
    if not reason:
        raise ReasonRequired()
    content = file.read()
    if isinstance(content, str):
        raise TypeError("CSV imports need a file opened in binary mode")
    batch = file_sha256(content)
    report = ImportReport(kind=Kind.BULK_CREDIT, dry_run=dry_run, batch=batch)
    importer = _BulkCredit(reason=reason, by_user=by_user, batch=batch)
    return _csv_run(
        file=io.BytesIO(content),
        columns=BULK_CREDIT_COLUMNS,
        report=report,
        parse=importer.parse,
        apply=importer.apply,
        batch_size=batch_size,
        on_batch=on_batch,
    )


# -----------------------------------------------------------------------------
# History: opening balances
# -----------------------------------------------------------------------------
def opening_reference(member: Member) -> str:
    return OPENING_REFERENCE_PREFIX + member.member_no


def opening_expires_at(expires_on: date) -> datetime:
    """Points valid through ``expires_on`` expire at the local midnight after it."""
    return datetime.combine(expires_on + timedelta(days=1), time.min, tzinfo=timezone.get_current_timezone())


class _Balances:
    def __init__(self, *, by_user: AbstractBaseUser | None) -> None:
        self.by_user = by_user
        self.seen: dict[int, int] = {}

    @staticmethod
    def parse(row: _Row) -> None:
        if not row.values["phone_or_member_no"]:
            raise MemberRequired()
        row.points = _points_parse(row.values["points"], minimum=0)
        row.expires_on = _expires_on_parse(row.values.get("expires_on", ""))

    def apply(self, rows: list[_Row]) -> list[RowResult]:
        members = _members_find(row.values["phone_or_member_no"] for row in rows if row.error is None)
        references = {opening_reference(member) for member in members.values()}
        # Re-runs skip imported members without taking their locks; the check
        # is repeated under the lock for a concurrent run.
        done = set(
            PointsEntry.objects.filter(
                member_id__in={member.pk for member in members.values()}, reference__in=references
            ).values_list("reference", flat=True)
        )
        return [self._apply_row(row, members.get(row.values["phone_or_member_no"]), done) for row in rows]

    def _apply_row(self, row: _Row, member: Member | None, done: set[str]) -> RowResult:
        given = row.values["phone_or_member_no"]
        if row.error is not None:
            return _rejected(row, row.error, key=given)
        if member is None:
            return _rejected(row, UnknownMember(value=given), key=given)
        fields = {"key": given, "member_no": member.member_no}
        if member.pk in self.seen:
            return _rejected(row, DuplicateMemberInFile(line=self.seen[member.pk]), **fields)
        self.seen[member.pk] = row.line
        reference = opening_reference(member)
        if reference in done:
            return RowResult(line=row.line, outcome=Outcome.ALREADY, **fields)
        if row.points == 0:
            return RowResult(line=row.line, outcome=Outcome.SKIPPED, note=_("nothing to credit"), **fields)
        if member.status == Member.Status.CLOSED:
            return _rejected(row, MemberClosed(), **fields)
        if member.status == Member.Status.FROZEN:
            return _rejected(row, MemberFrozen(), **fields)
        expires_at = opening_expires_at(row.expires_on) if row.expires_on else None
        try:
            with transaction.atomic():
                # Under the account lock, so two runs of the file cannot both credit.
                account_lock(member)
                if PointsEntry.objects.filter(member=member, reference=reference).exists():
                    return RowResult(line=row.line, outcome=Outcome.ALREADY, **fields)
                points_credit(
                    member=member,
                    points=row.points,
                    kind=PointsEntry.Kind.ADJUST,
                    refs=Refs(
                        source=PointsEntry.Source.IMPORT,
                        by_user=self.by_user,
                        reason=OPENING_BALANCE_REASON,
                        reference=reference,
                    ),
                    expires_at=expires_at,
                )
        except LoyaltyError as error:
            return _rejected(row, error, **fields)
        return RowResult(line=row.line, outcome=Outcome.APPLIED, points=row.points, **fields)


def history_balances_csv(
    *,
    file: IO[bytes],
    by_user: AbstractBaseUser | None = None,
    dry_run: bool = False,
    batch_size: int = BATCH_SIZE,
    on_batch: Callable[[ImportReport], None] | None = None,
) -> ImportReport:
    """Credit opening balances from the previous system
    (``phone_or_member_no,points,expires_on``; header optional).

    Each member is credited once through ``points_credit`` (kind ``adjust``,
    source ``import``, reason "opening balance", reference
    ``opening:<member_no>``), into a lot expiring at the local midnight after
    ``expires_on`` (blank: the programme's expiry policy from today). A member
    who already has that entry is ``already_applied``; a balance of 0 is
    ``skipped``. Rejected, with their line, nothing written:
    ``unknown_member`` (import members first), ``invalid_points``,
    ``invalid_expires_on`` (unreadable, or already past), ``duplicate_in_file``,
    ``member_frozen``, ``member_closed``.

    Must be called outside a transaction (one durable transaction per batch).
    """
    report = ImportReport(kind=Kind.BALANCES, dry_run=dry_run)
    importer = _Balances(by_user=by_user)
    return _csv_run(
        file=file,
        columns=BALANCE_COLUMNS,
        report=report,
        parse=importer.parse,
        apply=importer.apply,
        batch_size=batch_size,
        on_batch=on_batch,
    )


# -----------------------------------------------------------------------------
# History: purchases
# -----------------------------------------------------------------------------
class _Purchases:
    def __init__(self) -> None:
        self.now = timezone.now()
        self.seen: dict[tuple[str, str], int] = {}  # (store code, receipt) → line
        self._stores: dict[str, Store | None] = {}

    def parse(self, row: _Row) -> None:
        if not row.values["store"]:
            raise StoreRequired()
        receipt_no = row.values["receipt_no"]
        if not receipt_no or len(receipt_no) > _RECEIPT_MAX_LENGTH:
            raise ReceiptRequired(max=_RECEIPT_MAX_LENGTH)
        if not row.values["member"]:
            # A purchase without a member could later be claimed for points.
            raise MemberRequired()
        row.amount = _amount_parse(row.values["amount"])
        row.paid_at = _paid_at_parse(row.values["paid_at"], now=self.now)
        key = (row.values["store"], receipt_no)
        if key in self.seen:
            raise DuplicateReceiptInFile(line=self.seen[key])
        self.seen[key] = row.line

    def _store(self, code: str) -> Store | None:
        """A store by its code (exact, else case-insensitive). Inactive stores
        are accepted: history holds stores closed since."""
        if code not in self._stores:
            store = Store.objects.filter(code=code).first()
            if store is None:
                matches = list(Store.objects.filter(code__iexact=code)[:2])
                store = matches[0] if len(matches) == 1 else None
            self._stores[code] = store
        return self._stores[code]

    def apply(self, rows: list[_Row]) -> list[RowResult]:
        results: list[RowResult] = []
        members = _members_find(row.values["member"] for row in rows if row.error is None)
        ready: list[tuple[_Row, Purchase]] = []
        for row in rows:
            fields = {"key": row.values["receipt_no"], "store": row.values["store"], "amount": row.amount}
            if row.error is not None:
                results.append(_rejected(row, row.error, **fields))
                continue
            store = self._store(row.values["store"])
            if store is None:
                results.append(_rejected(row, UnknownStore(store=row.values["store"]), **fields))
                continue
            member = members.get(row.values["member"])
            if member is None:
                results.append(_rejected(row, UnknownMember(value=row.values["member"]), **fields))
                continue
            purchase = Purchase(
                store=store,
                terminal=None,
                receipt_no=row.values["receipt_no"],
                member=member,
                # The tier at the time is unknown; reports count these under no tier.
                tier=None,
                amount=row.amount,
                paid_at=row.paid_at,
                lines=[],
            )
            ready.append((row, purchase))
        existing = set(
            Purchase.objects.filter(
                store_id__in={purchase.store_id for _row, purchase in ready},
                receipt_no__in={purchase.receipt_no for _row, purchase in ready},
            ).values_list("store_id", "receipt_no")
        )
        new: list[tuple[_Row, Purchase]] = []
        for row, purchase in ready:
            if (purchase.store_id, purchase.receipt_no) in existing:
                results.append(self._result(row, purchase, Outcome.ALREADY))
            else:
                new.append((row, purchase))
        results.extend(self._insert(new))
        return results

    def _insert(self, new: list[tuple[_Row, Purchase]]) -> list[RowResult]:
        try:
            with transaction.atomic():
                Purchase.objects.bulk_create([purchase for _row, purchase in new])
        except IntegrityError:
            # Recorded concurrently since the check: row by row to tell which.
            return [self._insert_one(row, purchase) for row, purchase in new]
        return [self._result(row, purchase, Outcome.APPLIED) for row, purchase in new]

    def _insert_one(self, row: _Row, purchase: Purchase) -> RowResult:
        try:
            with transaction.atomic():
                purchase.pk = None
                purchase.save(force_insert=True)
        except IntegrityError as error:
            if _constraint_name(error) != "purchase_unique_receipt_per_store":
                raise
            return self._result(row, purchase, Outcome.ALREADY)
        return self._result(row, purchase, Outcome.APPLIED)

    @staticmethod
    def _result(row: _Row, purchase: Purchase, outcome: str) -> RowResult:
        assert purchase.member is not None
        return RowResult(
            line=row.line,
            outcome=outcome,
            key=purchase.receipt_no,
            store=purchase.store.code,
            member_no=purchase.member.member_no,
            amount=purchase.amount,
        )


def history_purchases_csv(
    *,
    file: IO[bytes],
    dry_run: bool = False,
    batch_size: int = BATCH_SIZE,
    on_batch: Callable[[ImportReport], None] | None = None,
) -> ImportReport:
    """Record past purchases from the previous system
    (``store,receipt_no,member,amount,paid_at``; member by number or phone;
    ``paid_at`` local time unless it has an offset; header optional).

    The purchases earn no points (the opening balance carries them) and have
    no terminal and no tier; they count for tier qualification (run
    ``tiers_evaluate`` / ``manage.py evaluate_tiers`` afterwards) and for
    reports. A receipt already recorded at its store is ``already_applied``
    and left unchanged. Rejected, with their line, nothing written:
    ``store_required``, ``unknown_store``, ``receipt_no_required``,
    ``member_required``, ``unknown_member``, ``invalid_amount``,
    ``invalid_paid_at``, ``duplicate_in_file``.

    Must be called outside a transaction (one durable transaction per batch).
    """
    report = ImportReport(kind=Kind.PURCHASES, dry_run=dry_run)
    importer = _Purchases()
    return _csv_run(
        file=file,
        columns=PURCHASE_COLUMNS,
        report=report,
        parse=importer.parse,
        apply=importer.apply,
        batch_size=batch_size,
        on_batch=on_batch,
    )
