"""Hot statements compiled once. Django builds a queryset's SQL anew on every evaluation;
for `job_locked` (a job with its subnet and user, row-locked: four times per job) that was
more than half of the call's CPU, 0.68 of 1.19 ms, and an UPDATE with a CASE expression
(`routing_index.speed_observe`, once per result) cost more to compile than to run
(docs/benchmarks.md, issue 13).

`PreparedQuery`, `PreparedRows` (a `values_list`) and `PreparedUpdate` compile their statement once per process and database,
with marker values where the arguments go, then run that SQL with the real arguments. Once
per process, not per thread: Django's ASGI handler runs each request's sync code on a thread
of its own, so a form kept per thread was compiled again on every request. A
query's instances are built the way Django's ModelIterable builds them (the same
converters, the same select_related population, annotations set as attributes).
tests/registry/test_prepared.py holds both to the ORM's own results.

A statement's `build` must take as an argument everything that varies between calls (a
setting read there would be frozen at the first call). Only what the hot path needs:
arguments that are UUIDs, ints, floats, datetimes, strings, bytes or JSON values (dicts,
lists), bound as parameters of the statement. `fields_save` is `Model.save(update_fields=...)`
on such a statement. Where the database adapts an argument so that its marker
cannot be found among the parameters (SQLite stores datetimes as text), the statement is
simply built by the ORM on every call, as before. A select_for_update query must run
inside a transaction, as the ORM requires.
"""

from __future__ import annotations

import copy
import functools
import random
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

from django.core.exceptions import ValidationError
from django.db import DatabaseError, connections, models
from django.db.models.query import ValuesListIterable, get_related_populators
from django.db.models.sql.subqueries import UpdateQuery
from django.db.transaction import TransactionManagementError

M = TypeVar("M", bound=models.Model)

Kind = type[uuid.UUID] | type[int] | type[float] | type[datetime] | type[str] | type[bytes] | type[dict] | type[list]
_random = random.SystemRandom()


def _marker(kind: Kind) -> object:
    """A value that no real argument or constant of the statement will equal."""
    if kind is uuid.UUID:
        return uuid.uuid4()
    if kind is int:
        return _random.getrandbits(52) + 2**52
    if kind is float:
        return _random.random() + 7_777_777.0
    if kind is datetime:
        return datetime(2999, 1, 1, tzinfo=UTC) + timedelta(microseconds=_random.getrandbits(40))
    if kind is str:
        return f"prepared-marker-{uuid.uuid4().hex}"
    if kind is bytes:
        return f"prepared-marker-{uuid.uuid4().hex}".encode()
    if kind is dict:
        return {"prepared-marker": uuid.uuid4().hex}
    if kind is list:
        return ["prepared-marker", uuid.uuid4().hex]
    raise TypeError(f"a prepared statement takes no {kind} argument")


def _argument(kind: Kind, value: object) -> object:
    """The value as the ORM would accept it, or TypeError / ValueError."""
    if kind is uuid.UUID:
        return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"{value!r} is not a number")
        return float(value)
    if isinstance(value, bool) or not isinstance(value, kind):
        raise TypeError(f"{value!r} is not a {kind.__name__}")
    if kind is str and "\x00" in value:
        raise ValueError("a string argument holds no NUL character")  # PostgreSQL's text cannot
    return value


def _form(param: object, marker: object) -> Callable[[Any], Any] | None:
    """How an argument becomes the parameter that `param` is, when `param` is `marker` as
    the backend adapted it: itself; a UUID's hex (databases without a uuid type); an int in
    the integer wrapper psycopg binds an integer column's value with (Int4 for an
    IntegerField), so the statement keeps the parameter types the ORM gives it. None when
    `param` is not that marker."""
    if type(param) is type(marker) and param == marker:
        return _as_is
    if isinstance(marker, uuid.UUID) and param == marker.hex:
        return _uuid_hex
    if type(marker) is int and isinstance(param, int) and not isinstance(param, bool) and int(param) == marker:
        return type(param)
    # psycopg's Jsonb (with the field's encoder) or Binary. Not SQLite's Binary, a memoryview,
    # whose `obj` cannot be replaced: a statement with one is built by the ORM every time.
    wrapped = getattr(param, "obj", None)
    if type(marker) in (bytes, dict, list) and type(wrapped) is type(marker) and wrapped == marker:
        return None if isinstance(param, memoryview) else _Rewrapped(param)
    return None


class _Rewrapped:
    """An argument in the wrapper the backend put the marker in."""

    def __init__(self, template: Any) -> None:
        self.template = template

    def __call__(self, value: Any) -> Any:
        wrapper = copy.copy(self.template)
        wrapper.obj = value
        return wrapper


def _as_is(value: Any) -> Any:
    return value


def _uuid_hex(value: uuid.UUID) -> str:
    return value.hex


class _Slots:
    """Where each argument goes among a compiled statement's parameters, and in which form
    (`_form`). `found` is False when a marker is missing: the database adapted it in a way
    not known here, and the statement cannot be reused."""

    def __init__(self, params: Any, markers: tuple[object, ...]) -> None:
        self.params = list(params)
        self.slots: list[tuple[int, int, Callable[[Any], Any]]] = []
        for position, param in enumerate(self.params):
            for index, marker in enumerate(markers):
                form = _form(param, marker)
                if form is not None:
                    self.slots.append((position, index, form))
        self.found = sorted({index for _, index, _ in self.slots}) == list(range(len(markers)))

    def fill(self, arguments: list[Any]) -> list[Any]:
        params = list(self.params)
        for position, index, form in self.slots:
            params[position] = form(arguments[index])
        return params


class _Prepared:
    """What both kinds share: the arguments' kinds, and one compiled form per database alias,
    shared by every thread. A compiled form is read-only data (the SQL, where the arguments
    go, how rows become instances); what needs a thread's own connection (the cursor, the
    converters' connection argument) is taken at each run."""

    def __init__(self, kinds: tuple[Kind, ...]) -> None:
        self.kinds = kinds
        self._by_alias: dict[str, Any] = {}

    def _arguments(self, values: tuple[object, ...]) -> list[Any]:
        try:
            return [_argument(kind, value) for kind, value in zip(self.kinds, values, strict=True)]
        except (TypeError, ValueError) as exc:  # as the ORM refuses it
            raise ValidationError(f"not a valid argument: {exc}", code="invalid") from exc

    def _compiled(self, alias: str, compile: Callable[[str, tuple[object, ...]], Any]) -> Any:
        compiled = self._by_alias.get(alias)
        if compiled is None:
            # Two threads may both compile it first: the forms are equal, either one is kept.
            compiled = self._by_alias.setdefault(alias, compile(alias, tuple(_marker(kind) for kind in self.kinds)))
        return compiled


class _CompiledQuery:
    def __init__(self, queryset: models.QuerySet[Any], markers: tuple[object, ...]) -> None:
        compiler = queryset.query.get_compiler(using=queryset.db)
        self.sql, params = compiler.as_sql()
        self.slots = _Slots(params, markers)
        self.locks = bool(queryset.query.select_for_update) and compiler.connection.features.has_select_for_update
        select, klass_info = compiler.select, compiler.klass_info
        self.model = klass_info["model"]
        fields = klass_info["select_fields"]
        self.start, self.end = fields[0], fields[-1] + 1
        self.init_list = [column[0].target.attname for column in select[self.start : self.end]]
        self.populators = get_related_populators(klass_info, select, queryset.db)
        self.annotations = list(compiler.annotation_col_map.items())
        self.converters = list(compiler.get_converters([column[0] for column in select[: compiler.col_count]]).items())

    def convert(self, rows: list[Any], connection: Any) -> list[Any]:
        return _convert(rows, self.converters, connection)


def _convert(rows: list[Any], converters: list[Any], connection: Any) -> list[list[Any]]:
    """What SQLCompiler.apply_converters does, with the running thread's connection."""
    converted = []
    for row in rows:
        row = list(row)
        for position, (functions, expression) in converters:
            value = row[position]
            for function in functions:
                value = function(value, expression, connection)
            row[position] = value
        converted.append(row)
    return converted


class PreparedQuery(_Prepared, Generic[M]):
    """`PreparedQuery(build, (uuid.UUID,)).all(job_id)` is `list(build(job_id))`, compiled
    once; the tuple gives each argument's kind."""

    def __init__(self, build: Callable[..., models.QuerySet[M]], kinds: tuple[Kind, ...]) -> None:
        super().__init__(kinds)
        self.build = build

    def all(self, *values: object, using: str = "default") -> list[M]:
        if any(value is None for value in values):
            return []  # the ids of rows that exist are never null: as the ORM's filter(pk=None)
        arguments = self._arguments(values)
        compiled = self._compiled(using, lambda alias, markers: _CompiledQuery(self.build(*markers).using(alias), markers))
        if not compiled.slots.found:
            return list(self.build(*arguments).using(using))
        connection = connections[using]
        if compiled.locks and connection.get_autocommit():
            raise TransactionManagementError("select_for_update cannot be used outside of a transaction.")
        with connection.cursor() as cursor:
            cursor.execute(compiled.sql, compiled.slots.fill(arguments))
            rows = cursor.fetchall()
        if compiled.converters:
            rows = compiled.convert(rows, connection)
        objects = []
        for row in rows:
            instance = compiled.model.from_db(using, compiled.init_list, row[compiled.start : compiled.end])
            for populator in compiled.populators:
                populator.populate(row, instance)
            for name, position in compiled.annotations:
                setattr(instance, name, row[position])
            objects.append(instance)
        return objects

    def first(self, *values: object, using: str = "default") -> M | None:
        found = self.all(*values, using=using)
        return found[0] if found else None


class _CompiledRows:
    def __init__(self, queryset: models.QuerySet[Any], markers: tuple[object, ...]) -> None:
        if queryset._iterable_class is not ValuesListIterable:
            raise TypeError("PreparedRows takes a values_list queryset (tuples: not flat, not named)")
        compiler = queryset.query.get_compiler(using=queryset.db)
        self.sql, params = compiler.as_sql()
        self.slots = _Slots(params, markers)
        self.width = compiler.col_count  # extra columns (an ordering's) are cut off, as results_iter does
        self.converters = list(compiler.get_converters([column[0] for column in compiler.select[: self.width]]).items())


class PreparedRows(_Prepared):
    """`PreparedRows(build, kinds).all(*args)` is `list(build(*args))` for a `values_list`
    queryset (tuples, not flat), compiled once."""

    def __init__(self, build: Callable[..., models.QuerySet[Any]], kinds: tuple[Kind, ...]) -> None:
        super().__init__(kinds)
        self.build = build

    def all(self, *values: object, using: str = "default") -> list[tuple[Any, ...]]:
        arguments = self._arguments(values)
        compiled = self._compiled(using, lambda alias, markers: _CompiledRows(self.build(*markers).using(alias), markers))
        if not compiled.slots.found:
            return list(self.build(*arguments).using(using))
        connection = connections[using]
        with connection.cursor() as cursor:
            cursor.execute(compiled.sql, compiled.slots.fill(arguments))
            rows = [row[: compiled.width] for row in cursor.fetchall()]
        if compiled.converters:
            rows = _convert(rows, compiled.converters, connection)
        return [tuple(row) for row in rows]


class PreparedUpdate(_Prepared):
    """`PreparedUpdate(build, kinds).run(*args)` is `queryset.update(**changes)` for
    `queryset, changes = build(*args)`, compiled once; returns the rows changed."""

    def __init__(self, build: Callable[..., tuple[models.QuerySet[Any], dict[str, Any]]], kinds: tuple[Kind, ...]) -> None:
        super().__init__(kinds)
        self.build = build

    def _compile(self, alias: str, markers: tuple[object, ...]) -> tuple[str, _Slots]:
        queryset, changes = self.build(*markers)
        # What QuerySet.update does before it runs the statement.
        query = queryset.query.chain(UpdateQuery)
        query.add_update_values(changes)
        sql, params = query.get_compiler(alias).as_sql()
        return sql, _Slots(params, markers)

    def run(self, *values: object, using: str = "default") -> int:
        arguments = self._arguments(values)
        sql, slots = self._compiled(using, self._compile)
        if not slots.found:
            queryset, changes = self.build(*arguments)
            return queryset.using(using).update(**changes)
        with connections[using].cursor() as cursor:
            cursor.execute(sql, slots.fill(arguments))
            return cursor.rowcount


def fields_save(instance: models.Model, names: tuple[str, ...]) -> None:
    """`instance.save(update_fields=names)` through a statement compiled once per model, set
    of fields and kinds of their values: a job's transitions and an assignment's result are
    the hottest writes. A value of no kind here (None, a related row) goes through the ORM.
    Unlike Model.save it sends no pre_save or post_save signal: no model written so has a
    receiver."""
    values = [getattr(instance, name) for name in names]
    kinds = tuple(_kind_of(value) for value in values)
    if None in kinds:
        instance.save(update_fields=list(names))
    elif not _fields_update(type(instance), names, kinds).run(instance.pk, *values, using=instance._state.db or "default"):
        raise DatabaseError("Save with update_fields did not affect any rows.")  # as Model.save says it


def _kind_of(value: object) -> Kind | None:
    if isinstance(value, bool):
        return None
    return next((kind for kind in (str, int, float, datetime, bytes, dict, list) if isinstance(value, kind)), None)


@functools.cache
def _fields_update(model: type[models.Model], names: tuple[str, ...], kinds: tuple[Kind, ...]) -> PreparedUpdate:
    pk_kind = _kind_of_field(model._meta.pk)
    return PreparedUpdate(
        lambda pk, *values: (model._default_manager.filter(pk=pk), dict(zip(names, values, strict=True))), (pk_kind, *kinds)
    )


def _kind_of_field(field: models.Field) -> Kind:
    return uuid.UUID if isinstance(field, models.UUIDField) else int
