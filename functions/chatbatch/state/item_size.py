"""DynamoDB's size of an item and the capacity units it costs, from its wire form.

DynamoDB bills (and throttles) by size: an item's size is its attribute names plus its
values; a write costs 1 write unit per started KB of the larger of the item before and
after it (at least 1), twice that in a transaction; a strongly consistent read 1 read unit
per started 4 KB. Numbers are sized as DynamoDB stores them (about one byte per two
significant digits, plus one). The benchmarks' capacity meter (``bench/_capacity.py``) and
the local runtime's throttle (``chatbatch.local.throttle``) both size items here, so what
the one measures is what the other refuses.
"""

from __future__ import annotations

import base64
import math
from typing import Any

WRITE_UNIT_BYTES = 1024
READ_UNIT_BYTES = 4096


def _number_size(text: str) -> int:
    digits = text.lstrip("-").replace(".", "").split("e")[0].split("E")[0].strip("0")
    return 1 + math.ceil(len(digits) / 2)


def value_size(value: dict[str, Any]) -> int:
    """The size of one AttributeValue (``{"S": ...}``, ``{"N": ...}``, ``{"M": {...}}``)."""
    ((kind, inner),) = value.items()
    if kind == "S":
        return len(str(inner).encode())
    if kind == "N":
        return _number_size(str(inner))
    if kind == "B":
        return len(inner) if isinstance(inner, bytes) else len(base64.b64decode(inner))
    if kind in ("BOOL", "NULL"):
        return 1
    if kind in ("SS", "NS", "BS"):
        return sum(value_size({kind[0]: v}) for v in inner)
    if kind == "L":
        return 3 + sum(1 + value_size(v) for v in inner)
    if kind == "M":
        return 3 + sum(1 + len(k.encode()) + value_size(v) for k, v in inner.items())
    raise ValueError(f"not a DynamoDB AttributeValue: {kind!r}")


def item_size(item: dict[str, Any] | None) -> int:
    """DynamoDB's size of an item: each attribute's name plus its value, in bytes."""
    return sum(len(name.encode()) + value_size(v) for name, v in (item or {}).items())


def units(size: int, per: int) -> int:
    """Capacity units of ``size`` bytes at ``per`` bytes a unit: started units, at least 1."""
    return max(1, math.ceil(size / per))


def write_units(before: int, after: int, *, transactional: bool) -> int:
    """The write units of one item's write: the larger of its size before and after, by
    started KB (at least 1), doubled in a transaction."""
    return units(max(before, after), WRITE_UNIT_BYTES) * (2 if transactional else 1)
