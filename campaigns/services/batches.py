"""Coupon batches: bearer coupons generated for print, and third-party codes imported.

A batch is one ``CouponBatch`` row whose unique ``reference`` makes it
idempotent: a generated batch is named by the operator (running the same
reference again returns the batch already made and creates nothing); an
imported batch is named by the SHA-256 of the file's bytes (importing the same
file again imports nothing).

Coupons of a batch are bearer coupons (``member`` NULL): whoever holds the
code may use it. Each takes one unit of the benefit's stock, like any issued
coupon, and gets its ``issued`` event in the same transaction. Both services
are all-or-nothing: a refusal (out of stock, unreadable file) writes nothing.

Imported codes are stored as the till reads them (``coupon_code_normalise``:
upper-case, spaces and dashes removed), so that a code typed or scanned at the
till finds its coupon; ``AB-12 cd`` and ``ab12CD`` are the same code.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from typing import IO, Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import formats, timezone
from django.utils.translation import gettext_lazy as _

from campaigns.errors import InvalidCouponFile, OutOfStock
from campaigns.models import Benefit, Coupon, CouponBatch, CouponEvent
from campaigns.services.coupons import _validity, coupon_code_new, coupon_code_normalise
from loyalty.errors import Conflict, InvalidInput

# Largest batch generated at once (a print run); larger runs are split by reference.
MAX_BATCH_QUANTITY = 100_000
# Rows inserted per statement.
INSERT_CHUNK = 2_000
# A generated chunk whose codes collide with existing ones is drawn again this
# many times (31^12 codes: a single collision is already very unlikely).
CODE_COLLISION_RETRIES = 5
# An imported file is read into memory (its SHA-256 is the batch reference).
MAX_IMPORT_BYTES = 20 * 1024 * 1024
MAX_CODE_LENGTH = Coupon._meta.get_field("code").max_length or 64
MAX_REFERENCE_LENGTH = CouponBatch._meta.get_field("reference").max_length or 100
# Third-party codes as given (before normalisation): letters, digits, dashes.
IMPORT_CODE_PATTERN = re.compile(r"[A-Za-z0-9-]+", re.ASCII)
# Columns of the CSV of a batch's codes, for print.
EXPORT_COLUMNS = ("code", "benefit", "valid_from", "valid_until")
# Header names accepted for the import columns (lower-cased).
CODE_COLUMN_NAMES = ("code", "coupon_code", "券码", "兑换码", "券号")
VALID_UNTIL_COLUMN_NAMES = ("valid_until", "expires", "expiry", "expiry_date", "有效期至", "到期日期", "到期时间")
_DATETIME_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M", "%Y/%m/%d %H:%M")
_DATE_FORMATS = ("%Y-%m-%d", "%Y/%m/%d")


# -----------------------------------------------------------------------------
# Errors (batch-specific; the coupon file error is campaigns.errors.InvalidCouponFile)
# -----------------------------------------------------------------------------
class InvalidBatchQuantity(InvalidInput):
    code = "invalid_batch_quantity"
    message = _("The quantity must be a whole number from 1 to %(max)s.")


class BatchReferenceRequired(InvalidInput):
    code = "batch_reference_required"
    message = _("A batch reference of 1 to %(max)s characters is required.")


class BatchReferenceTaken(Conflict):
    code = "batch_reference_taken"
    message = _(
        "The reference “%(reference)s” is already used by another batch (%(kind)s, %(quantity)s coupons of "
        "“%(benefit)s”). Choose another reference."
    )


class BatchBenefitEnded(Conflict):
    code = "batch_benefit_ended"
    message = _("Coupons of this benefit are valid only until %(valid_until)s, which is past.")


# -----------------------------------------------------------------------------
# Shared
# -----------------------------------------------------------------------------
def _user_or_none(by_user: AbstractBaseUser | None) -> AbstractBaseUser | None:
    return by_user if by_user is not None and by_user.is_authenticated else None


def _stock_take_many(benefit: Benefit, quantity: int) -> None:
    """Take ``quantity`` units of stock at once, or none (``OutOfStock``).

    The same conditional ``F()`` update as a single issue, so that batches and
    exchanges running together never oversell (the CHECK constraint is the backstop)."""
    updated = Benefit.objects.filter(
        Q(total_stock__isnull=True) | Q(issued_count__lte=F("total_stock") - quantity), pk=benefit.pk
    ).update(issued_count=F("issued_count") + quantity)
    if not updated:
        raise OutOfStock(detail={"requested": quantity})


def _stock_left(benefit: Benefit) -> int | None:
    fresh = Benefit.objects.filter(pk=benefit.pk).values("total_stock", "issued_count").get()
    if fresh["total_stock"] is None:
        return None
    return max(fresh["total_stock"] - fresh["issued_count"], 0)


def _events_issued(coupons: Sequence[Coupon], *, at: datetime, by_user: AbstractBaseUser | None, reason: str) -> None:
    CouponEvent.objects.bulk_create(
        [
            CouponEvent(coupon=coupon, kind=CouponEvent.Kind.ISSUED, created_at=at, by_user=by_user, reason=reason)
            for coupon in coupons
        ],
        batch_size=INSERT_CHUNK,
    )


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# -----------------------------------------------------------------------------
# Generated batches, for print
# -----------------------------------------------------------------------------
def _batch_existing(*, reference: str, benefit: Benefit, kind: str, quantity: int | None) -> CouponBatch | None:
    """The batch already made under ``reference``, if it is the same request;
    ``BatchReferenceTaken`` if the reference names a different one."""
    existing = CouponBatch.objects.select_related("benefit").filter(reference=reference).first()
    if existing is None:
        return None
    if (
        existing.benefit_id != benefit.pk
        or existing.kind != kind
        or (quantity is not None and existing.quantity != quantity)
    ):
        raise BatchReferenceTaken(
            reference=reference,
            kind=existing.get_kind_display(),
            quantity=existing.quantity,
            benefit=existing.benefit.name,
            detail={"batch": existing.pk},
        )
    return existing


def _generated_insert(coupons: list[Coupon]) -> list[Coupon]:
    """Insert one chunk of new coupons; on a code collision the chunk's codes
    are drawn again (a savepoint keeps the rest of the batch)."""
    for attempt in range(CODE_COLLISION_RETRIES + 1):
        try:
            with transaction.atomic():
                return Coupon.objects.bulk_create(coupons)
        except IntegrityError:
            if attempt == CODE_COLLISION_RETRIES:
                raise
            codes = _distinct_codes(len(coupons))
            for coupon, code in zip(coupons, codes, strict=True):
                coupon.code = code
    raise AssertionError("unreachable")  # pragma: no cover


def _distinct_codes(count: int) -> list[str]:
    codes: set[str] = set()
    while len(codes) < count:
        codes.add(coupon_code_new())
    return list(codes)


@transaction.atomic
def coupon_batch_generate(
    *,
    benefit: Benefit,
    quantity: int,
    reference: str,
    by_user: AbstractBaseUser | None,
    at: datetime | None = None,
) -> CouponBatch:
    """Generate ``quantity`` bearer coupons of ``benefit`` for print.

    Idempotent on ``reference``: the batch already made with it (same benefit
    and quantity) is returned and nothing is created. Each coupon takes one
    unit of stock and is valid per the benefit's validity from ``at``.
    Raises ``InvalidBatchQuantity``, ``BatchReferenceRequired``,
    ``BatchReferenceTaken`` (the reference names another batch),
    ``BatchBenefitEnded`` (fixed validity already past) and ``OutOfStock``
    (not enough stock for the whole batch: nothing is written)."""
    reference = (reference or "").strip()
    if not reference or len(reference) > MAX_REFERENCE_LENGTH:
        raise BatchReferenceRequired(max=MAX_REFERENCE_LENGTH)
    if isinstance(quantity, bool) or not isinstance(quantity, int) or not 1 <= quantity <= MAX_BATCH_QUANTITY:
        raise InvalidBatchQuantity(max=MAX_BATCH_QUANTITY)
    kind = CouponBatch.Kind.GENERATED
    existing = _batch_existing(reference=reference, benefit=benefit, kind=kind, quantity=quantity)
    if existing is not None:
        return existing
    at = at or timezone.now()
    valid_from, valid_until = _validity(benefit, at)
    if valid_until <= at:
        raise BatchBenefitEnded(
            valid_until=formats.date_format(timezone.localtime(valid_until), "Y-m-d H:i"),
            detail={"valid_until": valid_until.isoformat()},
        )
    left = _stock_left(benefit)
    if left is not None and left < quantity:
        # Checked first to refuse before any work; taken for real below.
        raise OutOfStock(detail={"requested": quantity, "left": left})
    by_user = _user_or_none(by_user)
    try:
        with transaction.atomic():
            batch = CouponBatch.objects.create(
                benefit=benefit, kind=kind, reference=reference, quantity=quantity, created_by=by_user
            )
    except IntegrityError:
        # The same reference committed concurrently: that batch is this request's result.
        existing = _batch_existing(reference=reference, benefit=benefit, kind=kind, quantity=quantity)
        if existing is None:
            raise
        return existing
    codes = _distinct_codes(quantity)
    for chunk in _chunks(codes, INSERT_CHUNK):
        coupons = _generated_insert(
            [
                Coupon(
                    code=code,
                    benefit=benefit,
                    member=None,
                    source=Coupon.Source.BATCH,
                    valid_from=valid_from,
                    valid_until=valid_until,
                    issued_at=at,
                    batch=batch,
                )
                for code in chunk
            ]
        )
        _events_issued(coupons, at=at, by_user=by_user, reason=f"batch:{reference}")
    # Taken last: the benefit's row lock is then held only until commit, not
    # while the coupons are inserted (exchanges of this benefit wait on it).
    _stock_take_many(benefit, quantity)
    return batch


# -----------------------------------------------------------------------------
# Export for print
# -----------------------------------------------------------------------------
def _local(value: datetime) -> str:
    return timezone.localtime(value).strftime("%Y-%m-%d %H:%M:%S")


def coupon_batch_csv_write(*, batches: Iterable[CouponBatch], out: IO[str]) -> int:
    """Write the codes of ``batches`` as CSV (``EXPORT_COLUMNS``, times in the
    local time zone) to the text stream ``out``; returns the number of codes."""
    writer = csv.writer(out)
    writer.writerow(EXPORT_COLUMNS)
    count = 0
    batch_ids = [batch.pk for batch in batches]
    rows = (
        Coupon.objects.filter(batch_id__in=batch_ids)
        .order_by("batch_id", "pk")
        .values_list("code", "benefit__name", "valid_from", "valid_until")
    )
    for code, benefit_name, valid_from, valid_until in rows.iterator(chunk_size=INSERT_CHUNK):
        writer.writerow([code, benefit_name, _local(valid_from), _local(valid_until)])
        count += 1
    return count


# -----------------------------------------------------------------------------
# Import of third-party codes
# -----------------------------------------------------------------------------
class RowProblem:
    """Why an imported row was not imported (``code`` is stable)."""

    DUPLICATE = "duplicate"  # the code already exists
    DUPLICATE_IN_FILE = "duplicate_in_file"
    EMPTY = "empty_code"
    TOO_LONG = "code_too_long"
    INVALID_CHARACTERS = "invalid_characters"
    INVALID_VALID_UNTIL = "invalid_valid_until"
    EXPIRED = "already_expired"

    MESSAGES: dict[str, Any] = {
        DUPLICATE: _("This code already exists."),
        DUPLICATE_IN_FILE: _("This code already appears on line %(line)s of the file."),
        EMPTY: _("The code is empty."),
        TOO_LONG: _("The code is longer than %(max)s characters."),
        INVALID_CHARACTERS: _("The code may contain only letters A–Z, digits and dashes."),
        INVALID_VALID_UNTIL: _(
            "“%(value)s” is not a valid end of validity: use YYYY-MM-DD (valid through that day) or "
            "YYYY-MM-DD HH:MM (local time)."
        ),
        EXPIRED: _("The code would already be expired (valid until %(valid_until)s)."),
    }


@dataclass(frozen=True, slots=True)
class ImportedRow:
    line: int  # physical line of the file where the row starts (the header is line 1)
    given: str  # the code as in the file
    code: str = ""  # normalised
    problem: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    valid_until: datetime | None = None  # of a good row

    @property
    def message(self) -> str:
        """Translated into the language active when shown."""
        text = str(RowProblem.MESSAGES.get(self.problem, ""))
        return text % self.params if self.params else text


@dataclass
class CouponImportReport:
    benefit: Benefit
    reference: str  # SHA-256 of the file
    batch: CouponBatch | None = None
    # The file was imported before (``batch`` is that import): nothing was read or written.
    already_imported: bool = False
    encoding: str = ""
    header: bool = False
    ignored_columns: list[str] = field(default_factory=list)
    total: int = 0  # data rows read (blank lines skipped)
    imported_rows: list[ImportedRow] = field(default_factory=list)
    duplicates: list[ImportedRow] = field(default_factory=list)
    invalid: list[ImportedRow] = field(default_factory=list)

    @property
    def imported(self) -> int:
        return len(self.imported_rows)

    @property
    def rejected(self) -> int:
        return len(self.duplicates) + len(self.invalid)

    @property
    def rejected_rows(self) -> list[ImportedRow]:
        return sorted(self.duplicates + self.invalid, key=lambda row: row.line)

    @property
    def ok(self) -> bool:
        return self.rejected == 0


def _read_limited(file: IO[bytes]) -> bytes:
    data = file.read(MAX_IMPORT_BYTES + 1)
    if isinstance(data, str):
        raise TypeError("coupon imports need a file opened in binary mode")
    if len(data) > MAX_IMPORT_BYTES:
        raise InvalidCouponFile(
            reason=_("the file is larger than %(size)s MB; split it") % {"size": MAX_IMPORT_BYTES // (1024 * 1024)},
            detail={"max_bytes": MAX_IMPORT_BYTES},
        )
    return data


def _decode(data: bytes) -> tuple[str, str]:
    """Text and encoding label: UTF-8 (with or without BOM) or GBK, as Chinese Excel saves CSV."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise InvalidCouponFile(reason=_("it is UTF-16 encoded; save it as “CSV UTF-8” or “CSV”"))
    if data.startswith(codecs.BOM_UTF8):
        return data[len(codecs.BOM_UTF8) :].decode("utf-8", errors="replace"), "UTF-8 (BOM)"
    try:
        return data.decode("utf-8"), "UTF-8"
    except UnicodeDecodeError:
        return data.decode("gb18030", errors="replace"), "GBK"


def _records(text: str) -> Iterable[tuple[int, list[str]]]:
    """CSV records with the physical line each starts on."""
    reader = csv.reader(io.StringIO(text, newline=""))
    next_line = 1
    try:
        for values in reader:
            line = next_line
            next_line = reader.line_num + 1
            yield line, values
    except csv.Error as error:
        raise InvalidCouponFile(
            reason=_("line %(line)s is not valid CSV (%(error)s)") % {"line": next_line, "error": error},
            detail={"line": next_line},
        ) from None


def _layout(first: list[str], report: CouponImportReport) -> dict[str, int] | None:
    """Column positions from a header row, or None when the first row is data
    (then the code is the first column and valid_until the second)."""
    names = [value.strip().lower() for value in first]
    known = dict.fromkeys(CODE_COLUMN_NAMES, "code") | dict.fromkeys(VALID_UNTIL_COLUMN_NAMES, "valid_until")
    if not any(name in known for name in names):
        return None
    positions: dict[str, int] = {}
    for index, (name, value) in enumerate(zip(names, first, strict=True)):
        column = known.get(name)
        if column is None:
            if value.strip():
                report.ignored_columns.append(value.strip())
            continue
        if column in positions:
            raise InvalidCouponFile(reason=_("the column “%(column)s” appears twice") % {"column": value.strip()})
        positions[column] = index
    if "code" not in positions:
        raise InvalidCouponFile(reason=_("the header row has no column “code”"), detail={"columns": first})
    report.header = True
    return positions


def _valid_until_parse(value: str) -> datetime | None:
    """End of validity in the local time zone: a date means through that day."""
    value = value.strip()
    for pattern in _DATE_FORMATS:
        try:
            day = datetime.strptime(value, pattern).date()  # noqa: DTZ007 - made aware below
        except ValueError:
            continue
        return timezone.make_aware(datetime.combine(day + timedelta(days=1), time.min))
    for pattern in _DATETIME_FORMATS:
        try:
            moment = datetime.strptime(value, pattern)  # noqa: DTZ007 - made aware below
        except ValueError:
            continue
        return timezone.make_aware(moment)
    return None


def _row_check(line: int, given: str, valid_until_text: str, *, default_until: datetime, at: datetime) -> ImportedRow:
    """One row, normalised and checked against itself (not yet against other rows or the database)."""
    compact = "".join(given.split())  # every kind of space, full-width included
    problem, params = "", {}
    code = ""
    if not compact or not compact.strip("-"):
        problem = RowProblem.EMPTY
    elif len(compact) > MAX_CODE_LENGTH:
        problem, params = RowProblem.TOO_LONG, {"max": MAX_CODE_LENGTH}
    elif not IMPORT_CODE_PATTERN.fullmatch(compact):
        problem = RowProblem.INVALID_CHARACTERS
    else:
        code = coupon_code_normalise(compact)
    if problem:
        return ImportedRow(line=line, given=given, problem=problem, params=params)
    valid_until = default_until
    if valid_until_text.strip():
        parsed = _valid_until_parse(valid_until_text)
        if parsed is None:
            return ImportedRow(
                line=line,
                given=given,
                code=code,
                problem=RowProblem.INVALID_VALID_UNTIL,
                params={"value": valid_until_text.strip()},
            )
        valid_until = parsed
    if valid_until <= at:
        return ImportedRow(
            line=line,
            given=given,
            code=code,
            problem=RowProblem.EXPIRED,
            params={"valid_until": formats.date_format(timezone.localtime(valid_until), "Y-m-d H:i")},
        )
    return ImportedRow(line=line, given=given, code=code, valid_until=valid_until)


def _existing_codes(codes: Sequence[str]) -> set[str]:
    found: set[str] = set()
    for chunk in _chunks(codes, INSERT_CHUNK):
        found.update(Coupon.objects.filter(code__in=list(chunk)).values_list("code", flat=True))
    return found


def _as_duplicate(row: ImportedRow) -> ImportedRow:
    return ImportedRow(line=row.line, given=row.given, code=row.code, problem=RowProblem.DUPLICATE)


def coupon_batch_import(
    *,
    benefit: Benefit,
    file: IO[bytes],
    by_user: AbstractBaseUser | None,
    at: datetime | None = None,
) -> CouponImportReport:
    """Import a third party's codes of ``benefit`` from a CSV file as bearer coupons.

    Columns ``code`` and optionally ``valid_until`` (YYYY-MM-DD: through that
    local day; or YYYY-MM-DD HH:MM), with a header row (or, without one, in
    that order); UTF-8 or GBK. Without ``valid_until`` a code is valid per the
    benefit's validity from ``at``. Codes are stored normalised
    (``coupon_code_normalise``). A code that already exists (or appears earlier
    in the file) is reported as a duplicate; an empty code, one longer than 64
    characters or with characters outside ``[A-Za-z0-9-]``, and an unreadable
    or past ``valid_until`` are reported as invalid, each with its line. The
    other rows are imported together, in one transaction, as one batch whose
    reference is the file's SHA-256: the same file again imports nothing
    (``already_imported``). A file whose rows are all rejected creates no batch.

    Raises ``InvalidCouponFile`` (unreadable, too large, no ``code`` column)
    and ``OutOfStock`` (not enough stock for every good row); then nothing is
    written. ``BatchReferenceTaken`` if the file was imported for another benefit."""
    at = at or timezone.now()
    data = _read_limited(file)
    reference = hashlib.sha256(data).hexdigest()
    report = CouponImportReport(benefit=benefit, reference=reference)
    existing = _batch_existing(reference=reference, benefit=benefit, kind=CouponBatch.Kind.IMPORTED, quantity=None)
    if existing is not None:
        report.batch, report.already_imported = existing, True
        return report
    if not data.strip():
        raise InvalidCouponFile(reason=_("the file is empty"))
    text, report.encoding = _decode(data)
    _default_from, default_until = _validity(benefit, at)

    candidates: list[ImportedRow] = []
    first_line: dict[str, int] = {}
    positions: dict[str, int] | None = None
    layout_known = False
    for line, values in _records(text):
        if not any(value.strip() for value in values):
            continue
        if not layout_known:
            layout_known = True
            positions = _layout(values, report)
            if positions is not None:
                continue
        columns = positions or {"code": 0, "valid_until": 1}
        given = values[columns["code"]] if columns["code"] < len(values) else ""
        until_index = columns.get("valid_until")
        until_text = values[until_index] if until_index is not None and until_index < len(values) else ""
        report.total += 1
        row = _row_check(line, given.strip(), until_text, default_until=default_until, at=at)
        if row.problem:
            report.invalid.append(row)
        elif row.code in first_line:
            report.duplicates.append(
                ImportedRow(
                    line=line,
                    given=row.given,
                    code=row.code,
                    problem=RowProblem.DUPLICATE_IN_FILE,
                    params={"line": first_line[row.code]},
                )
            )
        else:
            first_line[row.code] = line
            candidates.append(row)
    if not layout_known:
        raise InvalidCouponFile(reason=_("the file is empty"))

    taken = _existing_codes([row.code for row in candidates])
    report.duplicates.extend(_as_duplicate(row) for row in candidates if row.code in taken)
    candidates = [row for row in candidates if row.code not in taken]
    if not candidates:
        return report
    left = _stock_left(benefit)
    if left is not None and left < len(candidates):
        # Checked first to refuse before any work; taken for real when the rows are in.
        raise OutOfStock(detail={"requested": len(candidates), "left": left})
    with transaction.atomic():
        return _import_apply(report, candidates, by_user=_user_or_none(by_user), at=at)


def _imported_coupon(
    row: ImportedRow, *, benefit: Benefit, batch: CouponBatch, valid_from: datetime, at: datetime
) -> Coupon:
    valid_until = row.valid_until
    if valid_until is None:  # pragma: no cover - good rows always have one
        raise ValueError(row)
    return Coupon(
        code=row.code,
        benefit=benefit,
        member=None,
        source=Coupon.Source.IMPORT,
        # A code may end before a fixed benefit's start: then it is valid until its end.
        valid_from=min(valid_from, valid_until - timedelta(seconds=1)),
        valid_until=valid_until,
        issued_at=at,
        batch=batch,
    )


def _import_apply(
    report: CouponImportReport, rows: list[ImportedRow], *, by_user: AbstractBaseUser | None, at: datetime
) -> CouponImportReport:
    benefit = report.benefit
    kind = CouponBatch.Kind.IMPORTED
    try:
        with transaction.atomic():
            batch = CouponBatch.objects.create(
                benefit=benefit, kind=kind, reference=report.reference, quantity=0, created_by=by_user
            )
    except IntegrityError:
        # The same file imported concurrently: that import is this one's result.
        existing = _batch_existing(reference=report.reference, benefit=benefit, kind=kind, quantity=None)
        if existing is None:
            raise
        return CouponImportReport(benefit=benefit, reference=report.reference, batch=existing, already_imported=True)
    valid_from, _valid_until = _validity(benefit, at)
    imported: list[ImportedRow] = []
    for chunk in _chunks(rows, INSERT_CHUNK):
        pending = list(chunk)
        while pending:
            coupons = [
                _imported_coupon(row, benefit=benefit, batch=batch, valid_from=valid_from, at=at) for row in pending
            ]
            try:
                with transaction.atomic():
                    saved = Coupon.objects.bulk_create(coupons)
            except IntegrityError:
                # A code created meanwhile (by another import): report it and insert the rest.
                taken = _existing_codes([row.code for row in pending])
                if not taken:
                    raise
                report.duplicates.extend(_as_duplicate(row) for row in pending if row.code in taken)
                pending = [row for row in pending if row.code not in taken]
                continue
            _events_issued(saved, at=at, by_user=by_user, reason=f"import:{report.reference[:16]}")
            imported.extend(pending)
            pending = []
    if not imported:
        transaction.set_rollback(True)
        return report
    _stock_take_many(benefit, len(imported))
    batch.quantity = len(imported)
    batch.save(update_fields=["quantity"])
    report.batch = batch
    report.imported_rows = imported
    return report
