"""The providers' own batch APIs, for jobs that can wait (issue 17): what the scheduled
function stands on (``worker.batch_jobs`` gives it each job's request body exactly as
the synchronous worker sends it, and stores each answer as the worker does).
``requests`` builds each job's line around its body and splits jobs into provider batches
within each API's limits; ``custom_ids`` names each job inside a provider batch and maps it back;
``openai`` (Files + Batches) and ``anthropic`` (Message Batches) create, poll, cancel
and read the results of a provider batch, each line becoming a job's outcome
(``common.JobOutcome``: succeeded, failed for good, or back to the synchronous path);
``http`` is the one HTTP client they share; ``results`` reads result lines.
"""

from chatbatch.provider.batch_api.anthropic import AnthropicBatchClient
from chatbatch.provider.batch_api.common import (
    BatchApi,
    BatchApiError,
    BatchPart,
    BatchRequest,
    BatchState,
    JobOutcome,
    MalformedResult,
)
from chatbatch.provider.batch_api.custom_ids import CustomIds, provider_custom_id
from chatbatch.provider.batch_api.openai import OpenAIBatchClient
from chatbatch.provider.batch_api.requests import LIMITS, Limits, TooLarge, request_of, split

__all__ = [
    "LIMITS",
    "AnthropicBatchClient",
    "BatchApi",
    "BatchApiError",
    "BatchPart",
    "BatchRequest",
    "BatchState",
    "CustomIds",
    "JobOutcome",
    "Limits",
    "MalformedResult",
    "OpenAIBatchClient",
    "TooLarge",
    "provider_custom_id",
    "request_of",
    "split",
]
