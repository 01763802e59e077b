"""Rows of the till's hot paths, read and written with SQL built once per process.

Building a query with the ORM costs its CPU every time: measured on the bench
machine, a member by number with its tier took 0.87 ms of CPU through
``filter(...).first()`` and 0.07 ms as the same SQL through a cursor; a
``Model.objects.create`` about 0.35 ms. A till request makes several such
queries, so that was most of its time (docs/performance.md). These helpers build
the SQL from the models' metadata on first use and afterwards only execute it.
They return ordinary model instances, with the related objects of ``related``
cached as ``select_related`` would, so callers use them like any other.

Only what the hot paths need: equality filters (``None`` means IS NULL) on one
row, optionally locked; and a plain INSERT. Model signals are not sent (the
models written here have none; ``tests/test_sql.py`` checks that stays true).

``execute`` runs a statement as a server-side prepared statement of the
connection (SQL ``PREPARE`` on first use, then ``EXECUTE``), so PostgreSQL
plans it once per connection rather than on every request: the till summary
took 0.79 ms to plan and run each time and 0.13 ms prepared. psycopg2 has no
automatic preparing (psycopg 3 does). ``LOYALTY_SQL_PREPARE=0`` turns it off:
needed behind a pooler in transaction mode, where one client's statements may
run on another server session (docs/scaling.md).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, TypeVar

from django.conf import settings
from django.db import DatabaseError, connections
from django.db.backends.utils import CursorWrapper
from django.db.models import CharField, Field, Model, TextField

M = TypeVar("M", bound=Model)


@dataclass(frozen=True)
class _Part:
    model: type[Model]
    attnames: tuple[str, ...]
    start: int
    end: int
    parent: int | None  # index of the part it hangs from
    field: Any  # the ForeignKey of the parent that points here
    pk_index: int  # where its primary key is among its columns (NULL: no related row)
    converters: tuple[tuple[int, Any, tuple[Any, ...]], ...]  # (column, field, from_db_value…) as the ORM applies
    outer: bool  # reached through a LEFT JOIN: its row may be missing


@dataclass(frozen=True)
class _Select:
    sql: str
    parts: tuple[_Part, ...]
    filters: tuple[Any, ...]  # the filtered fields, in parameter order


_PLACEHOLDER = re.compile(r"%\((\w+)\)s|%s|%%")


@lru_cache(maxsize=512)
def _prepared_text(sql: str) -> tuple[str, str, tuple[str, ...] | int]:
    """The statement's name, its text with $n placeholders, and its parameters:
    the names in order (``%(name)s`` style) or their count (``%s`` style)."""
    names: list[str] = []
    count = 0

    def number(match: re.Match[str]) -> str:
        nonlocal count
        if match.group(0) == "%%":
            return "%"
        if match.group(1) is None:
            count += 1
            return f"${count}"
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    text = _PLACEHOLDER.sub(number, sql)
    if names and count:
        raise ValueError("a statement takes %s or %(name)s placeholders, not both")
    name = "loyalty_" + hashlib.sha256(sql.encode()).hexdigest()[:16]
    return name, text, tuple(names) if names else count


@dataclass
class _Prepared:
    raw: Any  # the driver's connection (a new one is a new server session)
    names: set[str]
    generation: int = 0  # bumped when the server refused a statement: prepare anew under new names


# A prepared statement the server no longer accepts: its plan's result type changed
# (a migration altered a column while this process ran), or it is gone (DEALLOCATE).
_STALE_SQLSTATES = frozenset({"0A000", "26000"})


def execute(cursor: Any, sql: str, params: list[Any] | tuple[Any, ...] | dict[str, Any] | None = None) -> None:
    """``cursor.execute(sql, params)``, as a prepared statement of the cursor's
    connection: prepared on first use there, executed by name afterwards.

    PostgreSQL fixes each parameter's type from the SQL when it prepares it (a
    plain execute sends psycopg2's typed literals instead): cast a parameter
    whose type the SQL leaves open (``%s::numeric``, ``%s::int``). If the server
    refuses a prepared statement as stale, this request fails (its transaction
    is aborted anyway) and the connection prepares afresh from the next one."""
    if not settings.LOYALTY_SQL_PREPARE:
        cursor.execute(sql, params)
        return
    base, text, spec = _prepared_text(sql)
    connection = cursor.db
    raw = connection.connection
    state = connection.__dict__.get("_loyalty_prepared")
    if state is None or state.raw is not raw:  # a new server session: nothing prepared there yet
        state = _Prepared(raw, set())
        connection._loyalty_prepared = state
    name = f"{base}_{state.generation}" if state.generation else base
    if name not in state.names:
        # Per-connection setup, not one of the request's queries: through the
        # driver's cursor, so query counts and logs show the EXECUTE only.
        with connection.wrap_database_errors:
            cursor.cursor.execute(f"PREPARE {name} AS {text}")
        state.names.add(name)
    if isinstance(spec, tuple):
        values = [params[key] for key in spec]  # type: ignore[index]
    else:
        values = list(params or ())
        if len(values) != spec:
            raise ValueError(f"{spec} parameters expected, {len(values)} given")
    statement = f"EXECUTE {name} ({', '.join(['%s'] * len(values))})" if values else f"EXECUTE {name}"
    try:
        if type(cursor) is CursorWrapper and not connection.execute_wrappers:
            # Straight to the driver's cursor, with what Django's wrapper adds
            # that matters (a broken transaction refused, errors as Django's):
            # 35 µs of CPU less per statement, 14 statements in a purchase. A
            # debug cursor (DEBUG, captured queries, tests counting them) and
            # execute wrappers still get every statement.
            connection.validate_no_broken_transaction()
            with connection.wrap_database_errors:
                cursor.cursor.execute(statement, values or None)
        else:
            cursor.execute(statement, values or None)
    except DatabaseError as exc:
        if getattr(exc.__cause__, "pgcode", None) in _STALE_SQLSTATES:
            state.names.clear()
            state.generation += 1
        raise


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@lru_cache(maxsize=256)
def _select_plan(
    model: type[Model], related: tuple[str, ...], filters: tuple[tuple[str, bool], ...], lock: str, extra: str = ""
) -> _Select:
    columns: list[str] = []
    joins: list[str] = []
    parts: list[_Part] = []
    aliases: dict[str, int] = {}

    connection = connections["default"]

    def add(part_model: type[Model], alias: str, parent: int | None, field: Any, outer: bool) -> int:
        fields = part_model._meta.concrete_fields
        start = len(columns)
        columns.extend(f"{alias}.{_quote(f.column)}" for f in fields)
        attnames = tuple(f.attname for f in fields)
        pk_index = attnames.index(part_model._meta.pk.attname)
        # Values as the ORM gives them (a JSONField's from_db_value parses its text).
        converters = tuple(
            (i, f, tuple(f.get_db_converters(connection)))
            for i, f in enumerate(fields)
            if f.get_db_converters(connection)
        )
        parts.append(_Part(part_model, attnames, start, len(columns), parent, field, pk_index, converters, outer))
        return len(parts) - 1

    add(model, "t0", None, None, False)
    aliases[""] = 0
    # "terminal__store" follows "terminal" first.
    paths = {"__".join(path.split("__")[: i + 1]) for path in related for i in range(path.count("__") + 1)}
    for path in sorted(paths, key=lambda p: (p.count("__"), p)):
        head, _sep, name = path.rpartition("__")
        parent_index = aliases[head]
        parent = parts[parent_index]
        field = parent.model._meta.get_field(name)
        if not (field.many_to_one or field.one_to_one) or field.auto_created:
            raise ValueError(f"{path}: only forward foreign keys can be followed")
        alias = f"t{len(parts)}"
        target = field.related_model
        # Below a LEFT JOIN every join is one too: a missing parent row must not drop the whole row.
        outer = field.null or parent.outer
        join = "LEFT JOIN" if outer else "JOIN"
        joins.append(
            f"{join} {_quote(target._meta.db_table)} {alias} ON {alias}.{_quote(field.target_field.column)} "
            f"= t{parent_index}.{_quote(field.column)}"
        )
        aliases[path] = add(target, alias, parent_index, field, outer)

    where: list[str] = []
    filter_fields = []
    for name, is_null in filters:
        field = model._meta.pk if name == "pk" else model._meta.get_field(name)
        if is_null:
            where.append(f"t0.{_quote(field.column)} IS NULL")
        else:
            where.append(f"t0.{_quote(field.column)} = %s")
            filter_fields.append(field)
    # Identifiers from the models' metadata, quoted; values are parameters.
    table = _quote(model._meta.db_table)
    selected = ", ".join(columns) + (f", {extra}" if extra else "")
    sql = f"SELECT {selected} FROM {table} t0 {' '.join(joins)} WHERE {' AND '.join(where) or 'TRUE'}"  # noqa: S608
    sql += f" LIMIT 1{lock}"
    return _Select(sql, tuple(parts), tuple(filter_fields))


def select_one(
    model: type[M],
    *,
    related: tuple[str, ...] = (),
    for_update: bool = False,
    using: str = "default",
    **filters: Any,
) -> M | None:
    """The row of ``model`` matching ``filters`` (equality; None is IS NULL), or None.

    ``related``: forward foreign keys to load in the same query (``"tier"``,
    ``"terminal__store"``). ``for_update`` locks the row (``FOR NO KEY UPDATE``
    of this table only), as ``select_for_update(of=("self",), no_key=True)``.
    Meant for lookups that match at most one row (a unique column)."""
    return select_one_with(model, related=related, for_update=for_update, using=using, **filters)[0]


def select_one_with(
    model: type[M],
    *,
    extra: str = "",
    extra_params: list[Any] | tuple[Any, ...] = (),
    related: tuple[str, ...] = (),
    for_update: bool = False,
    before: Write | None = None,
    using: str = "default",
    **filters: Any,
) -> tuple[M | None, tuple[Any, ...]]:
    """``select_one`` with more columns computed in the same statement: ``extra``
    is a constant SQL list of expressions that may refer to the row as ``t0``
    (say, scalar subqueries keyed on ``t0.id``), with ``%s`` placeholders for
    ``extra_params``. Returns the instance (or None) and the extra values: one
    round trip instead of two where a request needs a row and what hangs from it.

    ``before``: a write (``insert_write``, say) made in the same statement, once
    the row is read (and locked, with ``for_update``), as a statement of its own
    just after would; its ``done`` gets what it returned, whether the row was
    found or not (then the extra values are not read: ``()``)."""
    lock = " FOR NO KEY UPDATE OF t0" if for_update else ""
    plan = _select_plan(model, tuple(related), tuple((k, v is None) for k, v in filters.items()), lock, extra)
    connection = connections[using]
    params = [
        field.get_db_prep_value(value, connection)
        for field, value in zip(plan.filters, (v for v in filters.values() if v is not None), strict=True)
    ]
    # (With ``before`` the statement runs anyway: the write must be made; the
    # database then refuses an out-of-range value with its own error.)
    for field, value in zip(plan.filters, params, strict=True):
        if before is None and isinstance(value, int) and not _in_range(field, value, connection):
            return None, ()  # as the ORM: no row has it (rather than the database's out-of-range error)
    sql, statement_params = plan.sql, [*extra_params, *params]  # the extra columns come before WHERE
    if before is not None:
        # Always one row, so the write's RETURNING comes back with or without the
        # row; the row's subquery (and its lock) is evaluated before the write's.
        columns = ", ".join(["s.*", *_returning_columns("w", before)])
        # The caller's statement and the plan's SQL; values are parameters.
        sql = f"WITH w AS ({before.sql}) SELECT {columns} FROM (VALUES (1)) one LEFT JOIN ({plan.sql}) s ON TRUE"  # noqa: S608
        statement_params = [*before.params, *statement_params]
    with connection.cursor() as cursor:
        execute(cursor, sql, statement_params)
        row = cursor.fetchone()
    if before is not None:
        end = len(row) - len(_returning_columns("w", before))
        _write_done(before, row[end:])
        row = row[:end] if row[plan.parts[0].pk_index] is not None else None
    if row is None:
        return None, ()
    instances: list[Model | None] = []
    for part in plan.parts:
        values = row[part.start : part.end]
        if part.converters and values[part.pk_index] is not None:
            values = list(values)
            for i, field, converters in part.converters:
                for converter in converters:
                    values[i] = converter(values[i], field, connection)
        if part.parent is None:
            instances.append(part.model.from_db(using, part.attnames, values))
            continue
        parent = instances[part.parent]
        instance = None
        if parent is not None and values[part.pk_index] is not None:
            instance = part.model.from_db(using, part.attnames, values)
        if parent is not None:
            part.field.set_cached_value(parent, instance)
        instances.append(instance)
    return instances[0], tuple(row[plan.parts[-1].end :])  # type: ignore[return-value]


def _in_range(field: Any, value: int, connection: Any) -> bool:
    target = getattr(field, "target_field", field)  # a foreign key holds its target's type
    bounds = connection.ops.integer_field_ranges.get(target.get_internal_type())
    if bounds is None:  # not an integer column
        return True
    low, high = bounds
    return (low is None or value >= low) and (high is None or value <= high)


@lru_cache(maxsize=128)
def _insert_plan(model: type[Model], with_pk: bool = False) -> tuple[str, tuple[Any, ...]]:
    auto = model._meta.auto_field
    fields = tuple(f for f in model._meta.local_concrete_fields if not f.generated and (with_pk or f is not auto))
    columns = ", ".join(_quote(f.column) for f in fields)
    pk = model._meta.pk
    returning = f" RETURNING {_quote(pk.column)}" if auto is not None else ""
    placeholders = ", ".join(["%s"] * len(fields))
    # Identifiers from the model's metadata, quoted; values are parameters.
    sql = f"INSERT INTO {_quote(model._meta.db_table)} ({columns}) VALUES ({placeholders}){returning}"  # noqa: S608
    return sql, fields


def _inserted(instance: Model, pk: Any, using: str) -> None:
    if pk is not None:
        instance.pk = pk
    instance._state.adding = False
    instance._state.db = using


def insert(model: type[M], *, on_conflict_do_nothing: bool = False, using: str = "default", **values: Any) -> M | None:
    """INSERT one row of ``model`` (as ``Model.objects.create``: defaults,
    ``auto_now``/``auto_now_add`` and field preparation are the fields' own) and
    return the instance with its primary key. With ``on_conflict_do_nothing``
    a row that breaks a unique constraint is not written and None is returned."""
    write, instance = insert_write(model, on_conflict_do_nothing=on_conflict_do_nothing, using=using, **values)
    with connections[using].cursor() as cursor:
        execute(cursor, write.sql, write.params)
        row = cursor.fetchone() if write.returning else ()
    if row is None:
        return None
    _inserted(instance, row[0] if row else None, using)
    return instance


@dataclass
class Write:
    """One data-modifying statement of ``together``: its SQL (``%s``
    placeholders), its parameters, the columns of its ``RETURNING`` to read
    back (one row at most), and what to do with them once run (their values,
    or None when it returned no row)."""

    sql: str
    params: list[Any]
    returning: tuple[str, ...] = ()
    done: Any = None  # Callable[[tuple | None], None]


_INTEGER_TYPES = frozenset(
    {"AutoField", "BigAutoField", "SmallAutoField", "IntegerField", "BigIntegerField", "SmallIntegerField",
     "PositiveIntegerField", "PositiveBigIntegerField", "PositiveSmallIntegerField"}
)


@lru_cache(maxsize=128)
def _plain_types(model: type[Model], fields: tuple[Any, ...]) -> tuple[tuple[type, ...], ...]:
    """Per field, the Python types its database preparation passes through
    unchanged: ``int`` for an integer column (a foreign key to one too), ``str``
    for ``CharField``/``TextField``; none for every other field."""
    kinds = []
    for f in fields:
        target = f.target_field if f.is_relation else f
        internal = target.get_internal_type()
        if internal in _INTEGER_TYPES:
            kinds.append((int,))
        elif (
            internal in ("CharField", "TextField")
            and type(target).get_db_prep_value is Field.get_db_prep_value
            and type(target).get_prep_value in (CharField.get_prep_value, TextField.get_prep_value)
        ):
            kinds.append((str,))
        else:
            kinds.append(())
    return tuple(kinds)


@lru_cache(maxsize=128)
def _init_plan(model: type[Model]) -> tuple[dict[str, tuple[int, Any]], tuple[Any, ...]]:
    """How ``_new_instance`` places a keyword: its field's position among the
    model's concrete fields, and the field when the keyword is a foreign key's
    name (a related object) rather than its column's attribute (an id)."""
    fields = tuple(model._meta.concrete_fields)
    places: dict[str, tuple[int, Any]] = {}
    for i, f in enumerate(fields):
        places[f.attname] = (i, None)
        if f.is_relation and f.name != f.attname:
            places[f.name] = (i, f)
        if f is model._meta.pk:
            places["pk"] = (i, None)
    return places, fields


def _new_instance(model: type[M], values: dict[str, Any]) -> M:
    """``model(**values)`` for concrete fields and ``pk``, with the same
    defaults and related-object caching, built through the positional
    constructor (the path ``from_db`` takes): 14 µs → about 5 µs for an entry,
    three or four times per purchase. Any other keyword goes to the ordinary
    constructor."""
    places, fields = _init_plan(model)
    if not all(key in places for key in values):
        return model(**values)
    args: list[Any] = [_MISSING] * len(fields)
    related: list[tuple[Any, Any]] = []
    for key, value in values.items():
        index, relation = places[key]
        if relation is not None and value is not None:
            if not isinstance(value, relation.remote_field.model):
                raise ValueError(f'"{relation.name}" must be a {relation.remote_field.model.__name__} instance.')
            related.append((relation, value))
            value = getattr(value, relation.target_field.attname)
            if value is None:
                raise ValueError(f"{relation.name}: an unsaved related object cannot be written")
        args[index] = value
    for i, f in enumerate(fields):
        if args[i] is _MISSING:
            args[i] = f.get_default()
    instance = model(*args)
    for relation, value in related:
        relation.set_cached_value(instance, value)
    return instance


_MISSING = object()


@lru_cache(maxsize=32)
def _insert_select_plan(model: type[Model], source: str, with_pk: bool = False) -> str:
    """``_insert_plan``'s statement as INSERT … SELECT from ``source`` (one row
    or none), each value cast to its column's type."""
    sql, fields = _insert_plan(model, with_pk)
    connection = connections["default"]
    values = ", ".join(f"%s::{f.cast_db_type(connection)}" for f in fields)
    head, returning = sql.partition(" VALUES (")[0], sql.rpartition(")")[2]  # INSERT INTO t (…) | RETURNING …
    # The model's own statement; the source is the caller's constant name.
    return f"{head} SELECT {values} FROM {source}{returning}"  # noqa: S608


def insert_write(
    model: type[M],
    *,
    on_conflict_do_nothing: bool = False,
    using: str = "default",
    select_from: str = "",
    **values: Any,
) -> tuple[Write, M]:
    """``insert`` as a ``Write`` for ``together``: the instance gets its primary
    key (given in ``values``, or the one the row receives) when the statement
    has run. Returns the write and the instance. ``select_from``: the name of
    a CTE of the caller's statement; the row is written once per row it has
    (INSERT … SELECT: written only when the CTE has its one row)."""
    pk = model._meta.pk
    sql, fields = _insert_plan(model, with_pk=pk.attname in values or "pk" in values)
    if select_from:
        sql = _insert_select_plan(model, select_from, pk.attname in values or "pk" in values)
    if on_conflict_do_nothing:
        if model._meta.auto_field is None:
            raise ValueError("on_conflict_do_nothing needs an auto primary key to tell a conflict")
        sql = sql.replace(" RETURNING ", " ON CONFLICT DO NOTHING RETURNING ", 1)
    connection = connections[using]
    instance = _new_instance(model, values)
    plain = _plain_types(model, fields)
    params = []
    for field, kinds in zip(fields, plain, strict=True):
        value = field.pre_save(instance, True)
        # An int for an integer column, a str for a text one: what the field's
        # preparation would return unchanged (2–3 µs each, 14 per entry).
        params.append(value if type(value) in kinds else field.get_db_prep_save(value, connection))
    returning = (_quote(pk.column),) if model._meta.auto_field is not None else ()

    def done(row: tuple | None) -> None:
        if row is not None or not returning:
            _inserted(instance, row[0] if row else None, using)

    return Write(sql, params, returning, done), instance


def together(writes: list[Write], select: str = "", select_params: list[Any] | None = None, *, using: str = "default") -> tuple:
    """Run ``writes`` and then read ``select`` in ONE statement (data-modifying
    CTEs): one round trip instead of one per statement. Each write's ``done``
    gets its ``RETURNING`` values; returns the row of ``select`` (empty without).

    The parts share one snapshot, as CTEs do: ``select`` sees the database as
    before the statement (not what ``writes`` change), and a write cannot read
    another's row, so each must have all its values (a primary key taken
    beforehand, ``next_id_column``). A row may point to another row of the
    same statement: foreign keys are checked after it (Django's at commit)."""
    if not writes:
        raise ValueError("together needs at least one write")
    # The callers' own statements and column names; values are parameters.
    ctes = ", ".join(f"w{i} AS ({write.sql})" for i, write in enumerate(writes))
    returned = [_returning_columns(f"w{i}", write) for i, write in enumerate(writes)]
    columns = ", ".join([*(column for part in returned for column in part), "q.*" if select else "1"])
    sql = f"WITH {ctes} SELECT {columns}" + (f" FROM ({select}) q" if select else "")  # noqa: S608
    params = [value for write in writes for value in write.params] + list(select_params or ())
    with connections[using].cursor() as cursor:
        execute(cursor, sql, params)
        row = cursor.fetchone()
    position = 0
    for write, part in zip(writes, returned, strict=True):
        _write_done(write, row[position : position + len(part)])
        position += len(part)
    return tuple(row[position:]) if select else ()


def _returning_columns(alias: str, write: Write) -> list[str]:
    """Columns of a statement that read ``write``'s ``RETURNING`` from its CTE
    ``alias``: the values, then whether it returned a row (none without RETURNING)."""
    if not write.returning:
        return []
    # The caller's column names; no values interpolated.
    return [*(f"(SELECT {column} FROM {alias})" for column in write.returning), f"EXISTS (SELECT FROM {alias})"]  # noqa: S608


def _write_done(write: Write, values: tuple) -> None:
    """Give ``write.done`` what ``_returning_columns`` read: its values, None
    when it returned no row, ``()`` when it has no RETURNING."""
    if write.done is None:
        return
    if not write.returning:
        write.done(())
    else:
        write.done(tuple(values[:-1]) if values[-1] else None)


def next_id_column(model: type[Model]) -> str:
    """A column for ``select_one_with``'s ``extra``: the next value of
    ``model``'s primary key sequence, taken in a statement the caller makes
    anyway, for a row ``together`` writes later (a primary key unused when the
    row is not written is a gap, as a rolled-back insert leaves)."""
    pk = model._meta.pk
    # Identifiers from the model's metadata; no values interpolated.
    return f"nextval(pg_get_serial_sequence('{_quote(model._meta.db_table)}', '{pk.column}'))"


@lru_cache(maxsize=32)
def _insert_pair_plan(model: type[Model], child: type[Model], link: str) -> tuple[str, tuple[Any, ...], tuple[Any, ...]]:
    fields = _insert_plan(model)[1]  # the parent's columns as a plain insert writes them
    link_field = child._meta.get_field(link)
    if not link_field.many_to_one or link_field.related_model is not model:
        raise ValueError(f"{child.__name__}.{link} is not a foreign key to {model.__name__}")
    child_fields = tuple(
        f for f in child._meta.local_concrete_fields
        if not f.generated and f is not child._meta.auto_field and f is not link_field
    )
    n = len(fields)
    # Identifiers from the models' metadata, quoted; values are parameters.
    sql = (
        f"WITH p AS (INSERT INTO {_quote(model._meta.db_table)} ({', '.join(_quote(f.column) for f in fields)}) "  # noqa: S608
        f"VALUES ({', '.join(['%s'] * n)}) RETURNING {_quote(model._meta.pk.column)} AS id) "
        f"INSERT INTO {_quote(child._meta.db_table)} "
        f"({', '.join(_quote(f.column) for f in child_fields)}, {_quote(link_field.column)}) "
        f"SELECT {', '.join(['%s'] * len(child_fields))}, p.id FROM p "
        f"RETURNING {_quote(child._meta.pk.column)}, {_quote(link_field.column)}"
    )
    return sql, fields, child_fields


def insert_pair(
    model: type[M], values: dict[str, Any], child: type[Model], link: str, child_values: dict[str, Any],
    *, using: str = "default",
) -> tuple[M, Model]:
    """INSERT a row of ``model`` and a row of ``child`` that points to it by the
    foreign key ``link``, in one statement (as two ``insert`` calls, one round
    trip fewer): a ledger entry and the lot it opens. Both models need an auto
    primary key. Returns both instances, the child's ``link`` set to the parent."""
    if model._meta.auto_field is None or child._meta.auto_field is None:
        raise ValueError("insert_pair needs auto primary keys")
    sql, fields, child_fields = _insert_pair_plan(model, child, link)
    connection = connections[using]
    instance = model(**values)
    child_instance = child(**child_values)
    plain = _plain_types(model, fields)
    params = []
    for field, kinds in zip(fields, plain, strict=True):
        value = field.pre_save(instance, True)
        # An int for an integer column, a str for a text one: what the field's
        # preparation would return unchanged (2–3 µs each, 14 per entry).
        params.append(value if type(value) in kinds else field.get_db_prep_save(value, connection))
    params += [field.get_db_prep_save(field.pre_save(child_instance, True), connection) for field in child_fields]
    with connection.cursor() as cursor:
        execute(cursor, sql, params)
        child_pk, pk = cursor.fetchone()
    for obj, key in ((instance, pk), (child_instance, child_pk)):
        obj.pk = key
        obj._state.adding = False
        obj._state.db = using
    setattr(child_instance, link, instance)
    return instance, child_instance


def in_durable_transaction(using: str = "default") -> bool:
    """Inside ``transaction.atomic(durable=True)``: the request's own transaction,
    which an error rolls back whole (the services that make no savepoint need it)."""
    return any(getattr(block, "durable", False) for block in connections[using].atomic_blocks)
