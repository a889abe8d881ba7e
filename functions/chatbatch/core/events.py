"""The events chatbatch puts on EventBridge: names and the detail of "Batch Completed".

Shared by the worker (which puts the event), the stack (whose rule matches it) and the
README's consumers. Money is a decimal string, as in every other output.
"""

from __future__ import annotations

from decimal import Decimal

from pydantic import BaseModel

SOURCE = "chatbatch"
BATCH_COMPLETED = "Batch Completed"


class BatchCompleted(BaseModel):
    """The detail of a "Batch Completed" event: every job of the batch is final.

    ``event_id`` (``<batch_id>#<completion>``) names this completion: a consumer that must
    act once dedupes on it (a crash right after the put can send the same event again).
    ``completion`` is the number of jobs ``chatbatch retry`` had sent again when the batch
    completed (0 the first time): a batch retried and completed again is a new event.
    """

    event_id: str
    batch_id: str
    completion: int
    total: int
    succeeded: int
    failed: int
    cancelled: int
    dead_lettered: int
    cost_usd: Decimal
    cost_nanos: int
    prompt_tokens: int
    completion_tokens: int
    provider_calls: int
    results: str  # s3://<bucket>/results/<batch_id>/
    errors: str  # s3://<bucket>/errors/<batch_id>/
    created: float | None
    completed_at: float
