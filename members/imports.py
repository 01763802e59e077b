"""CSV import of members from a chain's previous system.

``member_import_csv`` is the one entry point; ``manage.py import_members`` and
the admin upload (``members.admin_views``) only parse their input, call it and
render the ``ImportReport``.

The file is read as a stream of lines and applied in batches of
``BATCH_SIZE`` rows, each batch in its own transaction and each row in its own
savepoint, so that a bad row never stops the good ones, memory stays flat for
large files and a crash mid-file keeps the batches already committed (importing
is idempotent on the phone, so running the same file again finishes the job).
"""

from __future__ import annotations

import codecs
import csv
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import IO, Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from loyalty.errors import InvalidInput, LoyaltyError
from members.errors import UnknownStore
from members.models import Member, Store, mask_phone
from members.services import member_enrol, phone_normalise

# Rows applied per transaction: large enough that commits don't dominate,
# small enough that a batch's row locks are held for about a second.
BATCH_SIZE = 500
# Imported and existing rows listed one by one in the report (all are counted;
# every rejected row is always listed, since each needs fixing).
LISTED_ROWS_LIMIT = 1000
# Bytes read to tell UTF-8 from GBK: a chunk of Chinese GBK text is never mostly
# valid UTF-8 by accident, while a single short name might be.
_SNIFF_BYTES = 64 * 1024
_NAME_MAX_LENGTH = Member._meta.get_field("name").max_length or 50
_LEGACY_NO_MAX_LENGTH = 64


# -----------------------------------------------------------------------------
# Errors: every rejected row and every unreadable file has a stable code
# -----------------------------------------------------------------------------
class ImportFileError(InvalidInput):
    """The file as a whole cannot be read (further); the report carries it."""

    code = "invalid_import_file"
    message = _("The file could not be read as CSV.")


class MissingColumn(ImportFileError):
    code = "missing_column"
    message = _("The first row must name the columns and include “%(column)s”, e.g. phone,name,gender,birthday,store.")


class DuplicateColumn(ImportFileError):
    code = "duplicate_column"
    message = _("The column “%(column)s” appears more than once in the first row.")


class EmptyFile(ImportFileError):
    code = "empty_file"
    message = _("The file is empty.")


class UnsupportedEncoding(ImportFileError):
    code = "unsupported_encoding"
    message = _("The file is UTF-16 encoded. In Excel, save it as “CSV UTF-8” or “CSV”.")


class UnreadableCsv(ImportFileError):
    code = "unreadable_csv"
    message = _("Line %(line)s is not valid CSV (%(reason)s); the rest of the file was not read.")


class UnclosedQuote(ImportFileError):
    code = "unclosed_quote"
    message = _("A quoted value that starts on line %(line)s is never closed; the rest of the file was not read.")


class PhoneRequired(InvalidInput):
    code = "phone_required"
    message = _("The phone is missing.")


class InvalidGender(InvalidInput):
    code = "invalid_gender"
    message = _("“%(value)s” is not a gender: use male, female, 男 or 女, or leave it blank.")


class InvalidBirthday(InvalidInput):
    code = "invalid_birthday"
    message = _("“%(value)s” is not a valid birthday: use YYYY-MM-DD or YYYY/MM/DD, not in the future.")


class InvalidRegisteredAt(InvalidInput):
    code = "invalid_registered_at"
    message = _("“%(value)s” is not a valid registration date: use YYYY-MM-DD, not in the future.")


class InvalidMarketingConsent(InvalidInput):
    code = "invalid_marketing_consent"
    message = _("“%(value)s” is not a marketing consent: use 1/0, yes/no or 是/否.")


class NameTooLong(InvalidInput):
    code = "name_too_long"
    message = _("The name is longer than %(max)s characters.")


class DuplicateInFile(InvalidInput):
    code = "duplicate_in_file"
    message = _("This phone already appears on line %(line)s of the file.")


class TooManyColumns(InvalidInput):
    code = "too_many_columns"
    message = _("The row has more values than the first row has columns; is a comma missing its quotes?")


class InvalidEncoding(InvalidInput):
    code = "invalid_encoding"
    message = _("The row contains bytes that are neither UTF-8 nor GBK text.")


# -----------------------------------------------------------------------------
# The report
# -----------------------------------------------------------------------------
class Outcome:
    IMPORTED = "imported"
    EXISTING = "existing"
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class ImportProblem:
    """A rejection or file error, kept as code + message template + params (not
    the exception, whose traceback would pin every frame) so that the message
    is translated into the language active when it is shown."""

    code: str
    template: Any
    params: dict[str, Any]
    detail: dict[str, Any]

    @classmethod
    def from_error(cls, error: LoyaltyError) -> ImportProblem:
        return cls(code=error.code, template=error.message, params=dict(error.params), detail=dict(error.detail))

    @property
    def message(self) -> str:
        text = str(self.template)
        return text % self.params if self.params else text


@dataclass(frozen=True, slots=True)
class RowResult:
    line: int  # physical line of the file where the row starts; the header is line 1
    outcome: str
    phone: str  # as given in the file
    legacy_member_no: str = ""
    member_no: str = ""  # ours; blank for a dry run's would-be imports
    problem: ImportProblem | None = None
    values: dict[str, str] = field(default_factory=dict)  # the row as given, for rejected rows

    @property
    def masked_phone(self) -> str:
        return mask_phone(self.phone)

    @property
    def code(self) -> str:
        return self.problem.code if self.problem else ""

    @property
    def message(self) -> str:
        return self.problem.message if self.problem else ""


@dataclass
class ImportReport:
    dry_run: bool = False
    encoding: str = ""
    columns: list[str] = field(default_factory=list)
    ignored_columns: list[str] = field(default_factory=list)
    imported: int = 0
    existing: int = 0
    rejected: int = 0
    imported_rows: list[RowResult] = field(default_factory=list)
    existing_rows: list[RowResult] = field(default_factory=list)
    rejected_rows: list[RowResult] = field(default_factory=list)
    # Set when the file (or its rest) could not be read; rows before it were applied.
    error: ImportProblem | None = None
    error_line: int | None = None
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return self.imported + self.existing + self.rejected

    @property
    def ok(self) -> bool:
        return self.rejected == 0 and self.error is None

    @property
    def rows_per_second(self) -> float:
        return self.total / self.seconds if self.seconds > 0 else 0.0

    @property
    def imported_unlisted(self) -> int:
        return self.imported - len(self.imported_rows)

    @property
    def existing_unlisted(self) -> int:
        return self.existing - len(self.existing_rows)

    def add(self, result: RowResult) -> None:
        if result.outcome == Outcome.IMPORTED:
            self.imported += 1
            if len(self.imported_rows) < LISTED_ROWS_LIMIT:
                self.imported_rows.append(result)
        elif result.outcome == Outcome.EXISTING:
            self.existing += 1
            if len(self.existing_rows) < LISTED_ROWS_LIMIT:
                self.existing_rows.append(result)
        else:
            self.rejected += 1
            self.rejected_rows.append(result)


# -----------------------------------------------------------------------------
# Reading: bytes → decoded lines → CSV records
# -----------------------------------------------------------------------------
class _DecodedLines:
    """Text lines of a binary file, read in chunks: UTF-8 (with or without BOM)
    or GBK, as Chinese Excel saves "CSV". GB18030 is used to decode GBK since it
    is its superset. A line that does not decode keeps U+FFFD in place of the
    bad bytes, and its row is rejected as ``invalid_encoding``."""

    def __init__(self, file: IO[bytes], chunk_size: int = _SNIFF_BYTES) -> None:
        self._file = file
        self._chunk_size = chunk_size
        self.encoding: str | None = None  # "utf-8" or "gb18030" once known
        self.bom = False

    @property
    def label(self) -> str:
        if self.encoding == "gb18030":
            return "GBK"
        if self.encoding == "utf-8":
            return "UTF-8 (BOM)" if self.bom else "UTF-8"
        return "ASCII"

    def _chunks(self) -> Iterator[bytes]:
        while True:
            chunk = self._file.read(self._chunk_size)
            if not chunk:
                return
            if isinstance(chunk, str):
                raise TypeError("member_import_csv needs a file opened in binary mode")
            yield chunk

    def _sniff(self, chunk: bytes) -> None:
        if chunk.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            raise UnsupportedEncoding()
        if chunk.startswith(codecs.BOM_UTF8):
            self.encoding, self.bom = "utf-8", True
            return
        # Only whole lines: the chunk may end inside a multi-byte character.
        sample = chunk[: chunk.rfind(b"\n") + 1] or chunk
        if not sample.isascii():
            self._settle(sample)

    def _settle(self, sample: bytes) -> None:
        # Mostly valid UTF-8 is UTF-8 with a few damaged rows (rejected one by one);
        # GBK text is almost never valid UTF-8 beyond a stray character.
        text = sample.decode("utf-8", errors="replace")
        bad = text.count("\ufffd")
        good = sum(1 for char in text if char > "\x7f") - bad
        self.encoding = "utf-8" if good > bad else "gb18030"

    def _decode(self, raw: bytes) -> str:
        if self.encoding is None:
            if raw.isascii():
                return raw.decode("ascii")
            # The first chunk was all ASCII: this line decides.
            self._settle(raw)
        assert self.encoding is not None
        return raw.decode(self.encoding, errors="replace")

    def __iter__(self) -> Iterator[str]:
        pending = b""
        first = True
        for chunk in self._chunks():
            if first:
                self._sniff(chunk)
                if self.bom:
                    chunk = chunk[len(codecs.BOM_UTF8) :]
                first = False
            lines = (pending + chunk).splitlines(keepends=True)
            # The last piece may be cut short (or be a "\r" whose "\n" is in the next chunk).
            pending = lines.pop() if lines else b""
            for raw in lines:
                yield self._decode(raw)
        if pending:
            yield self._decode(pending)


# Column names as written in the header (lower-cased), English or Chinese.
COLUMN_ALIASES: dict[str, str] = {
    "phone": "phone",
    "mobile": "phone",
    "手机": "phone",
    "手机号": "phone",
    "手机号码": "phone",
    "name": "name",
    "姓名": "name",
    "gender": "gender",
    "sex": "gender",
    "性别": "gender",
    "birthday": "birthday",
    "生日": "birthday",
    "出生日期": "birthday",
    "store": "store",
    "store_code": "store",
    "门店": "store",
    "门店编码": "store",
    "marketing_consent": "marketing_consent",
    "营销同意": "marketing_consent",
    "member_no": "member_no",
    "card_no": "member_no",
    "会员卡号": "member_no",
    "卡号": "member_no",
    "registered_at": "registered_at",
    "注册日期": "registered_at",
    "入会日期": "registered_at",
}
COLUMNS = ("phone", "name", "gender", "birthday", "store", "marketing_consent", "member_no", "registered_at")


def _header_read(records: Iterator[tuple[int, list[str]]], report: ImportReport) -> list[str | None]:
    """Column of each position of the header row (None for columns not imported)."""
    for _line, values in records:
        if not any(value.strip() for value in values):
            continue
        positions: list[str | None] = []
        for value in values:
            key = COLUMN_ALIASES.get(value.strip().lower())
            if key is not None and key in positions:
                raise DuplicateColumn(column=value.strip())
            if key is None and value.strip():
                report.ignored_columns.append(value.strip())
            positions.append(key)
        report.columns = [key for key in positions if key]
        if "phone" not in positions:
            raise MissingColumn(column="phone")
        return positions
    raise EmptyFile()


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


# -----------------------------------------------------------------------------
# Values
# -----------------------------------------------------------------------------
GENDERS = {
    "male": Member.Gender.MALE,
    "m": Member.Gender.MALE,
    "男": Member.Gender.MALE,
    "female": Member.Gender.FEMALE,
    "f": Member.Gender.FEMALE,
    "女": Member.Gender.FEMALE,
    "unknown": Member.Gender.UNKNOWN,
    "未知": Member.Gender.UNKNOWN,
    "": Member.Gender.UNKNOWN,
}
CONSENTS = {
    "1": True,
    "yes": True,
    "y": True,
    "true": True,
    "是": True,
    "0": False,
    "no": False,
    "n": False,
    "false": False,
    "否": False,
    "": False,
}
# YYYY-MM-DD or YYYY/MM/DD (Excel drops leading zeros: 1990/1/5), optionally
# followed by a time, which is ignored (Excel writes "2019/3/1 0:00").
_DATE = re.compile(r"^(\d{4})([-/])(\d{1,2})\2(\d{1,2})(?:[ T]\d{1,2}:\d{2}(?::\d{2})?)?$")


def _date_parse(value: str) -> date | None:
    match = _DATE.match(value)
    if match is None:
        return None
    try:
        parsed = date(int(match[1]), int(match[3]), int(match[4]))
    except ValueError:
        return None
    if parsed.year < 1900 or parsed > timezone.localdate():
        return None
    return parsed


@dataclass(slots=True)
class _Row:
    line: int
    values: dict[str, str]
    phone: str = ""  # normalised
    name: str = ""
    gender: str = Member.Gender.UNKNOWN
    birthday: date | None = None
    store_code: str = ""
    marketing_consent: bool = False
    registered_at: datetime | None = None
    error: LoyaltyError | None = None

    @property
    def legacy_member_no(self) -> str:
        return self.values.get("member_no", "")[:_LEGACY_NO_MAX_LENGTH]


def _row_parse(line: int, positions: list[str | None], raw: list[str], seen: dict[str, int]) -> _Row | None:
    """Validate a record without touching the database; None for a blank line.
    ``seen`` maps each valid phone met so far to its line."""
    values = {key: value.strip() for key, value in zip(positions, raw, strict=False) if key}
    if not any(value.strip() for value in raw):
        return None
    row = _Row(line=line, values=values)
    try:
        if any(value.strip() for value in raw[len(positions) :]):
            raise TooManyColumns()
        if any("\ufffd" in value for value in values.values()):
            raise InvalidEncoding()
        if any("\n" in value or "\r" in value for value in values.values()):
            # A newline inside an imported column means a quote was never closed and
            # the rest of the file was swallowed into this value.
            raise UnclosedQuote(line=line)
        if not values.get("phone"):
            raise PhoneRequired()
        row.phone = phone_normalise(values["phone"])
        if row.phone in seen:
            raise DuplicateInFile(line=seen[row.phone])
        seen[row.phone] = line
        row.name = values.get("name", "")
        if len(row.name) > _NAME_MAX_LENGTH:
            raise NameTooLong(max=_NAME_MAX_LENGTH)
        gender = values.get("gender", "")
        if gender.lower() not in GENDERS:
            raise InvalidGender(value=gender)
        row.gender = GENDERS[gender.lower()]
        birthday = values.get("birthday", "")
        if birthday:
            row.birthday = _date_parse(birthday)
            if row.birthday is None:
                raise InvalidBirthday(value=birthday)
        consent = values.get("marketing_consent", "")
        if consent.lower() not in CONSENTS:
            raise InvalidMarketingConsent(value=consent)
        row.marketing_consent = CONSENTS[consent.lower()]
        registered = values.get("registered_at", "")
        if registered:
            registered_on = _date_parse(registered)
            if registered_on is None:
                raise InvalidRegisteredAt(value=registered)
            # Midnight of that day in the chain's time zone, so reports count the
            # member as new in the month it registered.
            row.registered_at = timezone.make_aware(
                datetime.combine(registered_on, datetime.min.time()), timezone.get_default_timezone()
            )
        row.store_code = values.get("store", "")
    except ImportFileError:
        raise
    except LoyaltyError as error:
        row.error = error
    return row


# -----------------------------------------------------------------------------
# Applying
# -----------------------------------------------------------------------------
class _Importer:
    def __init__(self, *, report: ImportReport, default_store: Store | None, by_user: AbstractBaseUser | None) -> None:
        self.report = report
        self.default_store = default_store
        self.by_user = by_user
        self._stores: dict[str, Store | None] = {}
        self._registered: list[Member] = []  # created in this batch with a registration date

    def _store(self, code: str) -> Store | None:
        """The store of a row: its code (exact, else case-insensitive), else the
        default store. Raises ``UnknownStore``. Inactive stores are accepted:
        a legacy file may hold members of stores closed since."""
        if not code:
            return self.default_store
        if code not in self._stores:
            store = Store.objects.filter(code=code).first()
            if store is None:
                matches = list(Store.objects.filter(code__iexact=code)[:2])
                store = matches[0] if len(matches) == 1 else None
            self._stores[code] = store
        store = self._stores[code]
        if store is None:
            raise UnknownStore(store=code)
        return store

    def apply(self, batch: list[_Row]) -> None:
        # The outermost transaction: one per batch, so the caller must not hold one.
        self._registered = []
        with transaction.atomic(durable=True):
            for row in batch:
                self.report.add(self._apply_row(row))
            if self._registered:
                # The members' original registration dates, for lifecycle stages and the
                # "new members" KPI (enrolment set created_at to now): one UPDATE per batch.
                Member.objects.bulk_update(self._registered, ["created_at"])
            if self.report.dry_run:
                transaction.set_rollback(True)

    def _apply_row(self, row: _Row) -> RowResult:
        result = {"line": row.line, "phone": row.values.get("phone", ""), "legacy_member_no": row.legacy_member_no}
        if row.error is not None:
            return self._rejected(row, row.error)
        try:
            store = self._store(row.store_code)
            # A savepoint per row: a refused row leaves nothing behind, and the
            # batch goes on.
            with transaction.atomic():
                member, created = member_enrol(
                    phone=row.phone,
                    name=row.name,
                    birthday=row.birthday,
                    gender=row.gender,
                    store=store,
                    channel=Member.Channel.IMPORT,
                    marketing_consent=row.marketing_consent,
                    by_user=self.by_user,
                )
        except LoyaltyError as error:
            return self._rejected(row, error)
        if created:
            if row.registered_at is not None:
                member.created_at = row.registered_at
                self._registered.append(member)
            member_no = "" if self.report.dry_run else member.member_no
            return RowResult(outcome=Outcome.IMPORTED, member_no=member_no, **result)
        return RowResult(outcome=Outcome.EXISTING, member_no=member.member_no, **result)

    @staticmethod
    def _rejected(row: _Row, error: LoyaltyError) -> RowResult:
        return RowResult(
            line=row.line,
            outcome=Outcome.REJECTED,
            phone=row.values.get("phone", ""),
            legacy_member_no=row.legacy_member_no,
            problem=ImportProblem.from_error(error),
            values=row.values,
        )


def member_import_csv(
    *,
    file: IO[bytes],
    default_store: Store | None = None,
    by_user: AbstractBaseUser | None = None,
    dry_run: bool = False,
    batch_size: int = BATCH_SIZE,
    on_batch: Callable[[ImportReport], None] | None = None,
) -> ImportReport:
    """Import members from a CSV file opened in binary mode.

    Columns (header row, English or Chinese names, any order, others ignored):
    phone (required), name, gender, birthday, store (store code; blank uses
    ``default_store``), marketing_consent, member_no (the legacy card number:
    reported only, since members get numbers of this programme) and
    registered_at (the original registration date, which becomes ``created_at``).

    Each row enrols a member through ``member_enrol`` with channel ``import``
    (so the audit event and the tier history are written) or, when a member
    with the phone exists with the same or fewer details, is reported as
    ``existing`` and changes nothing; re-importing a file imports nothing twice.
    Rows refused with a ``LoyaltyError`` (``invalid_phone``,
    ``phone_registered_to_other``, ``unknown_store``, ``duplicate_in_file``...)
    are reported with their line and write nothing; any other exception
    propagates, with the batches before it committed.

    Must be called outside a transaction: each batch of ``batch_size`` rows
    commits on its own (``durable``). A dry run applies each batch and rolls it
    back, so its report is exactly what a real run would do (it consumes member
    number sequence values, leaving harmless gaps).

    A file that cannot be read (no phone column, UTF-16, broken quoting) is
    reported as ``report.error`` rather than raised; rows before a mid-file
    error are applied.
    """
    report = ImportReport(dry_run=dry_run)
    started = time.monotonic()
    lines = _DecodedLines(file)
    records = _Records(lines)
    rows = iter(records)
    importer = _Importer(report=report, default_store=default_store, by_user=by_user)
    seen: dict[str, int] = {}
    batch: list[_Row] = []
    try:
        positions = _header_read(rows, report)
        for line, raw in rows:
            row = _row_parse(line, positions, raw, seen)
            if row is None:
                continue
            batch.append(row)
            if len(batch) >= batch_size:
                importer.apply(batch)
                batch = []
                if on_batch is not None:
                    on_batch(report)
    except ImportFileError as error:
        report.error, report.error_line = ImportProblem.from_error(error), error.params.get("line")
    except csv.Error as error:
        problem = UnreadableCsv(line=records.next_line, reason=str(error))
        report.error, report.error_line = ImportProblem.from_error(problem), records.next_line
    if batch:
        importer.apply(batch)
    report.encoding = lines.label
    report.seconds = time.monotonic() - started
    return report


def rejected_rows_csv(report: ImportReport) -> Iterable[list[str]]:
    """The rejected rows as CSV records (line, code, message, then the columns
    as given) to fix and import again."""
    yield ["line", "code", "message", *COLUMNS]
    for row in report.rejected_rows:
        yield [str(row.line), row.code, row.message, *(row.values.get(column, "") for column in COLUMNS)]
