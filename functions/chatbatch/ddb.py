"""DynamoDB attribute values, written and read the same way by every module."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def s(value: str) -> dict[str, Any]:
    """A string attribute value."""
    return {"S": value}


def n(value: int | float) -> dict[str, Any]:
    """A number attribute value."""
    return {"N": str(value)}


def int_of(item: Mapping[str, Any] | None, name: str) -> int:
    """A number attribute of an item as an int (0 when absent)."""
    return int((item or {}).get(name, {}).get("N", 0))
