"""Which body goes on the wire for a job to a provider, and which body ends in its result:
the one place that choice is made (``wire_body``, ``result_body``, and ``check_job`` /
``checked`` where a line becomes a job). A layer above ``core`` (whose line parser knows
nothing of providers' APIs) and below ``provider``, ``worker`` and ``client``.

A job in OpenAI's form to a kind ``openai`` provider goes as it is and its answer is kept
as it came; to a kind ``anthropic`` provider it goes translated (``chat_to_messages``)
and its Message comes back as a chat.completion (``message_to_completion``). Jobs in
Anthropic's form (``Job.form == "anthropic"``) are another helper's part: here they raise
``NotImplementedError``.
"""

from __future__ import annotations

import time
from typing import Any

from chatbatch.core.config import Config, Model, Provider
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


def result_body(
    job: Job, native: dict[str, Any], provider: Provider, created: int | None = None
) -> dict[str, Any]:
    """The body a job's result stores for ``native``, the provider's answer, in the
    worker (a Message from a kind anthropic provider becomes a chat.completion for an
    OpenAI-form job). Not the collect-time choice of the results file's shape."""
    if _form(job) != "openai":
        raise NotImplementedError(f"jobs in {_form(job)!r} form are not wired yet")
    if provider.kind == "anthropic":
        return message_to_completion(native, int(time.time()) if created is None else created)
    return native


def check_job(job: Job, config: Config) -> None:
    """Raise ``JobError`` naming the job and the field when ``job`` cannot be sent to its
    model's provider unchanged in meaning and cost. Called wherever a line becomes a job
    (submit's plan and send, the worker's intake), after ``core.job_lines`` parsed it."""
    model = config.models[job.model]
    try:
        wire_body(job, model, config.providers[model.provider])
    except Untranslatable as err:
        raise JobError(
            err.field,
            f"{err.message} (model {job.model} is served by Anthropic's API)",
            custom_id=job.custom_id,
        ) from None


def checked(parsed: Job | JobError, config: Config, line: int | None = None) -> Job | JobError:
    """A parsed line (``core.job_lines.parse_lines``) with ``check_job`` applied: the job,
    or the ``JobError`` it fails with (naming ``line``)."""
    if isinstance(parsed, JobError):
        return parsed
    try:
        check_job(parsed, config)
    except JobError as err:
        err.line = line
        return err
    return parsed
