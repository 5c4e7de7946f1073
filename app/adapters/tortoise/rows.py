"""Model instances from rows, and a query's SQL compiled once: tortoise's own work, without its per-call cost.

Relied on (pinned by tests/adapters/test_tortoise_contract.py, and tests/jobs/test_list_rows.py compares every
value and the instance state with tortoise's `Model._init_from_db`):
- `Model._meta`: `db`, `db_native_fields`, `db_default_fields`, `db_complex_fields`, `db_pk_column`,
  `generated_db_fields`: how `_init_from_db` splits the columns;
- the instance state `_init_from_db` sets: `_partial`, `_saved_in_db`, `_custom_generated_pk`, `_await_when_save`;
- a queryset's `query` (pypika) after `.sql()`, whose `get_parameterized_sql()` gives the parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

from tortoise import fields
from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.fields import Field
from tortoise.models import Model
from tortoise.queryset import QuerySet
from tortoise.timezone import get_default_timezone, get_use_tz

M = TypeVar("M", bound=Model)
Converter = Callable[[Any], Any]


def client_of(model: type[Model]) -> BaseDBAsyncClient:
    """The database client the model's queries use."""
    client: BaseDBAsyncClient = model._meta.db
    return client


def parameterized(query: QuerySet[Any]) -> tuple[str, list[Any]]:
    """The SQL text of a queryset and its parameters, as tortoise would execute it."""
    sql = query.sql()  # builds `query.query`, whose parameters come with it
    _, params = query.query.get_parameterized_sql()
    return sql, list(params)


def _datetime_converter(field: Field[Any]) -> Converter:
    """tortoise's conversion of a stored timestamp, minus its per-value overhead, for aware values.

    tortoise spends about 1.5 µs a value checking awareness through helper calls; the common case here is
    SQLite's ISO text or PostgreSQL's aware datetime, both converted to the configured zone exactly as tortoise
    does. Anything else (naive values, odd text) takes tortoise's path.
    """
    if not get_use_tz():
        return field.to_python_value
    zone = get_default_timezone()
    slow = field.to_python_value

    def convert(value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, str):
            try:
                value = datetime.fromisoformat(value)
            except ValueError:
                return slow(value)
        if isinstance(value, datetime) and value.tzinfo is not None:
            return value.astimezone(zone)
        return slow(value)

    return convert


def _or_none(field_type: Callable[[Any], Any]) -> Converter:
    """tortoise's conversion for a field without its own: the field's type, None kept."""

    def convert(value: Any) -> Any:
        return None if value is None else field_type(value)

    return convert


def _row_plan(model: type[Model]) -> tuple[bool, list[tuple[str, str, Converter | None]]]:
    """How to turn a row into attributes, as `Model._init_from_db` does: whether the row can be copied whole
    (every column named as its attribute), and (column, attribute, converter or None) for the columns still to
    set or convert.

    Built from the model's metadata for the backend in use at each call (a few microseconds): the same
    native / default / custom split tortoise makes, with a faster converter for timestamps.
    """
    meta = model._meta
    native: list[tuple[str, str, Converter | None]] = [(key, attr, None) for key, attr, _ in meta.db_native_fields]
    converted: list[tuple[str, str, Converter | None]] = []
    for key, attr, field in meta.db_default_fields:
        converted.append((key, attr, _or_none(field.field_type)))
    for key, attr, field in meta.db_complex_fields:
        converter = _datetime_converter(field) if isinstance(field, fields.DatetimeField) else field.to_python_value
        converted.append((key, attr, converter))
    if all(key == attr for key, attr, _ in native + converted):
        return True, converted
    return False, native + converted


def instances(model: type[M], rows: Sequence[dict[str, Any]]) -> list[M]:
    """Instances from full rows, as `model.raw` builds them, at a fraction of its cost (each row's values are
    copied: the rows stay untouched)."""
    copy_row, plan = _row_plan(model)
    generated_pk = model._meta.db_pk_column not in model._meta.generated_db_fields
    built = []
    for row in rows:
        instance = model.__new__(model)
        values = instance.__dict__
        if copy_row:
            values.update(row)
        _mark_loaded(values, generated_pk)
        for key, attr, convert in plan:
            value = row[key]
            values[attr] = value if convert is None else convert(value)
        built.append(instance)
    return built


def loaded(model: type[M], **values: Any) -> M:
    """An instance of values that are already stored (written by the caller's own SQL), in the state tortoise
    gives what it reads: a later `save()` updates the row instead of inserting it again."""
    instance = model(**values)
    _mark_loaded(instance.__dict__, model._meta.db_pk_column not in model._meta.generated_db_fields)
    return instance


def _mark_loaded(state: dict[str, Any], generated_pk: bool) -> None:
    state["_partial"] = False
    state["_saved_in_db"] = True
    state["_custom_generated_pk"] = generated_pk
    state["_await_when_save"] = {}
