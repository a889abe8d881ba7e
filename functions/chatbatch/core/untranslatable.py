"""The error of a request field the target API has no equivalent for (both directions of
translation between OpenAI's chat request and Anthropic's Messages request raise it)."""

from __future__ import annotations


class Untranslatable(ValueError):
    """A request field that cannot be sent to the target API unchanged in meaning and
    cost: ``field`` (its path in the request) and ``why``."""

    def __init__(self, field: str, why: str) -> None:
        super().__init__(f"{field}: {why}")
        self.field = field
        self.why = why
