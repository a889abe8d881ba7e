"""A local stand-in for Athena: the cost records as JSON, loaded into SQLite under the same
database and table names, so the SQL ``costs --athena`` sends can be run for real.

Each record's JSON becomes one row: a key the record lacks (an older record) is NULL, as
the JSON SerDe reads it; ``metadata`` is kept as JSON text, and ``element_at`` (Trino's map
lookup, NULL for a missing key) is registered to read it.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from typing import Any

from chatbatch.core.output_lines import CostRecord

COLUMNS = list(CostRecord.model_fields)


def _element_at(doc: str | None, key: str) -> str | None:
    return json.loads(doc).get(key) if doc else None


def run(
    sql: str, database: str, table: str, records: Iterable[dict[str, Any]]
) -> list[dict[str, Any]]:
    """``sql``'s rows over ``records`` (each a cost record's JSON object), as dicts."""
    db = sqlite3.connect(":memory:")
    db.create_function("element_at", 2, _element_at, deterministic=True)
    db.execute(f"ATTACH DATABASE ':memory:' AS \"{database}\"")
    db.execute(f'CREATE TABLE "{database}"."{table}" ({", ".join(COLUMNS)})')
    rows = [
        [json.dumps(r[c]) if c == "metadata" and c in r else r.get(c) for c in COLUMNS]
        for r in records
    ]
    marks = ", ".join("?" for _ in COLUMNS)
    db.executemany(f'INSERT INTO "{database}"."{table}" VALUES ({marks})', rows)
    cursor = db.execute(sql)
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
