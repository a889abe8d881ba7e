"""Which body goes on the wire for a job to a provider, and which body ends in its result:
the one place that choice is made (``wire_body``, ``answer_body``, and ``check_job`` at
submit).

A job in OpenAI's form to a kind ``openai`` provider goes as it is and its answer is kept
as it came; to a kind ``anthropic`` provider it goes translated (``chat_to_messages``)
and its Message comes back as a chat.completion (``message_to_completion``). Jobs in
Anthropic's form (``Job.form == "anthropic"``) are another helper's part: here they raise
``NotImplementedError``.
"""

from __future__ import annotations

import time
from typing import Any

from chatbatch.core.config import Model, Provider
from chatbatch.core.jobs import Job, JobError
from chatbatch.translate.chat_to_messages import (
    Untranslatable,
    chat_to_messages,
    takes_sampling,
)
from chatbatch.translate.message_to_completion import message_to_completion


def _form(job: Job) -> str:
    return str(getattr(job, "form", "openai"))


def wire_body(job: Job, model: Model, provider: Provider) -> dict[str, Any]:
    """The request body sent for ``job`` to ``provider`` (at ``provider.url``)."""
    if _form(job) != "openai":
        raise NotImplementedError(f"jobs in {_form(job)!r} form are not wired yet")
    body = job.request_body(model)
    if provider.kind == "anthropic":
        return chat_to_messages(body, sampling=takes_sampling(provider.anthropic_version))
    return body


def answer_body(
    job: Job, native: dict[str, Any], provider: Provider, created: int | None = None
) -> dict[str, Any]:
    """The body a job's result carries for ``native``, the provider's answer."""
    if _form(job) != "openai":
        raise NotImplementedError(f"jobs in {_form(job)!r} form are not wired yet")
    if provider.kind == "anthropic":
        return message_to_completion(native, int(time.time()) if created is None else created)
    return native


def check_job(job: Job, model: Model, provider: Provider) -> None:
    """Raise ``JobError`` naming the field when ``job`` cannot be sent to ``provider``
    unchanged in meaning and cost (called at submit)."""
    try:
        wire_body(job, model, provider)
    except Untranslatable as err:
        raise JobError(
            err.field, f"{err.message} (model {job.model} is served by Anthropic's API)"
        ) from None
