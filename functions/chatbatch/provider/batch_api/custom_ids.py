"""The ``custom_id`` a job carries inside a provider batch, and the way back to the job.

A job is named by its chatbatch batch and its own custom_id (up to 512 characters, any
text). Anthropic's Message Batches allow only ``^[a-zA-Z0-9_-]{1,64}$``, and one provider
batch may hold jobs of several chatbatch batches, so the id sent is derived, the same for
both providers: ``cb-`` and 48 hex digits of the SHA-256 of the batch id and the custom_id
(``provider_custom_id``; 51 characters). It is stable (the scheduled function can derive it
again from the job after a crash) and ``CustomIds`` keeps the way back, refusing two jobs
that would share an id (a collision of 192 bits: never in practice, but never silent).
"""

from __future__ import annotations

import hashlib
import re

PREFIX = "cb-"
DIGITS = 48
PATTERN = re.compile(r"[a-zA-Z0-9_-]{1,64}")  # Anthropic's rule (OpenAI's is looser)


def provider_custom_id(batch_id: str, custom_id: str) -> str:
    """The custom_id a job goes under in a provider batch (see the module docstring)."""
    digest = hashlib.sha256(f"{batch_id}\x00{custom_id}".encode()).hexdigest()
    return PREFIX + digest[:DIGITS]


class CustomIds:
    """Provider custom_ids of one provider batch -> (chatbatch batch id, custom_id)."""

    def __init__(self) -> None:
        self._jobs: dict[str, tuple[str, str]] = {}

    def add(self, batch_id: str, custom_id: str) -> str:
        """The job's provider custom_id, recorded; ValueError for a job added twice or
        two jobs under one id."""
        key = provider_custom_id(batch_id, custom_id)
        known = self._jobs.get(key)
        if known is not None:
            what = (
                "is already"
                if known == (batch_id, custom_id)
                else f"collides with job {known[1]!r} of batch {known[0]!r}"
            )
            raise ValueError(
                f"job {custom_id!r} of batch {batch_id!r} (provider custom_id {key}) {what} "
                "in this provider batch: a job goes into a provider batch once"
            )
        self._jobs[key] = (batch_id, custom_id)
        return key

    def job_of(self, key: str) -> tuple[str, str] | None:
        """(batch id, custom_id) of a provider custom_id; None when not in this batch."""
        return self._jobs.get(key)

    def __len__(self) -> int:
        return len(self._jobs)

    def __contains__(self, key: object) -> bool:
        return key in self._jobs

    def as_dict(self) -> dict[str, tuple[str, str]]:
        """The mapping, to store beside the provider batch."""
        return dict(self._jobs)
