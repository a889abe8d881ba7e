"""What ``chatbatch costs --by`` groups the cost records by.

A grouping is one or more keys (``--by`` repeated): a field of the cost record (``model``,
``priority``, ``role``, ``day``, ``batch``, ``route``) or a key of the job's own metadata
(``metadata.KEY``). A group is keyed by the tuple of its values (``GroupKey``), one per
key, ``None`` where the record has no value (no role, no such metadata key): distinct from
any string, even a value literally ``(none)``, and never merged with another group whose
values only look the same once joined. Its name (``name``) is the values joined with
`` / ``, a missing one shown as ``(none)``: for display only. Each key is also a SQL
expression over the Athena table of the cost records (``sql``, NULL where missing), so
``costs --athena`` groups exactly as the S3 reader does. A field the record model gives a
default (``route``: ``sync``, for records written before it existed) reads as that default
in SQL too, where the older rows hold NULL.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

from pydantic import BaseModel, ConfigDict

from chatbatch.core.job_lines import METADATA_KEY_MAX_CHARS
from chatbatch.core.output_lines import CostRecord

METADATA = "metadata."
NONE = "(none)"  # a missing value, as a group's name shows it
SEPARATOR = " / "  # between the values of a combined grouping, in a group's name

# a group: its value of each --by key, in order; None where the record has none
GroupKey = tuple[str | None, ...]


class GroupBy(StrEnum):
    model = "model"
    priority = "priority"
    role = "role"
    day = "day"
    batch = "batch"
    route = "route"


# each field's column in the cost records (and the Athena table: ``dt`` is its partition)
COLUMNS = {
    GroupBy.model: "model",
    GroupBy.priority: "priority",
    GroupBy.role: "role",
    GroupBy.day: "dt",
    GroupBy.batch: "batch_id",
    GroupBy.route: "route",
}


class BadGrouping(ValueError):
    """A ``--by`` that names neither a field nor a metadata key; the message says which."""


def sql_string(text: str) -> str:
    """A SQL string literal (Trino and SQLite): single quotes, doubled inside."""
    return "'" + text.replace("'", "''") + "'"


class Grouping(BaseModel):
    """The keys a report groups by, in order (the default: the model)."""

    model_config = ConfigDict(frozen=True)

    keys: tuple[str, ...] = (GroupBy.model.value,)

    @classmethod
    def parse(cls, specs: Iterable[str]) -> Grouping:
        """``--by`` values -> a grouping, or ``BadGrouping`` naming the bad one."""
        keys = tuple(specs)
        for key in keys:
            if key.startswith(METADATA):
                name = key.removeprefix(METADATA)
                if not 1 <= len(name) <= METADATA_KEY_MAX_CHARS:
                    raise BadGrouping(
                        f"--by {key!r}: a metadata key has 1 to {METADATA_KEY_MAX_CHARS} "
                        "characters (e.g. --by metadata.tenant)"
                    )
            elif key not in GroupBy.__members__:
                raise BadGrouping(
                    f"--by {key!r}: not a field; use one of {', '.join(GroupBy)} "
                    "or metadata.KEY (repeat --by to combine)"
                )
        if len(set(keys)) != len(keys):
            raise BadGrouping(f"--by {', '.join(keys)}: a key is given twice")
        return cls(keys=keys) if keys else cls()

    @property
    def label(self) -> str:
        """The grouping as the user wrote it: ``model`` or ``model,metadata.tenant``."""
        return ",".join(self.keys)

    def group_of(self, record: CostRecord) -> GroupKey:
        """The key of the group ``record`` falls in."""
        return tuple(_value(record, key) for key in self.keys)

    def sql(self) -> list[str]:
        """Each key as a SQL expression over the cost-record table, NULL when absent (an
        empty value too, as ``group_of``)."""
        return [f"nullif({_column(key)}, '')" for key in self.keys]


def group_name(key: GroupKey) -> str:
    """A group's name, for display: its values joined, ``(none)`` for a missing one."""
    return SEPARATOR.join(NONE if value is None else value for value in key)


def group_order(key: GroupKey) -> tuple[tuple[bool, str], ...]:
    """A sort key for groups: by each value in turn, a missing one before any other."""
    return tuple((value is not None, value or "") for value in key)


def _value(record: CostRecord, key: str) -> str | None:
    """The record's value of ``key``; None when it has none (an empty value too)."""
    if key.startswith(METADATA):
        return record.metadata.get(key.removeprefix(METADATA)) or None
    value = getattr(record, COLUMNS[GroupBy(key)])
    return str(value) if value else None


def _column(key: str) -> str:
    if key.startswith(METADATA):
        # element_at: NULL for a missing key (a subscript would fail the query)
        return f"element_at(metadata, {sql_string(key.removeprefix(METADATA))})"
    return column_sql(COLUMNS[GroupBy(key)])


def column_sql(column: str) -> str:
    """A cost-record column as SQL: a field the record model defaults to a string reads as
    that default where an older record lacks it (NULL in the table), as the model reads it."""
    default = CostRecord.model_fields[column].default
    if isinstance(default, str):
        return f"coalesce({column}, {sql_string(default)})"
    return column
