"""Which body goes on the wire for a job to a provider, and which body ends in its result:
the one place that chooses (``wire_body``; ``result_body`` in the worker, for the
provider's answer; ``answer_body`` at collect, for the batch's form), and ``check_job`` /
``checked`` where a line becomes a job. A layer above ``core`` (whose line parser knows
nothing of providers' APIs) and below ``provider``, ``worker`` and ``client``.

One module per direction: ``chat_to_messages`` (chat request -> Anthropic Messages
request), ``message_to_completion`` (Anthropic Message -> chat.completion),
``completion_to_message`` (chat.completion -> Anthropic Message); the fourth, Anthropic
params -> chat request, is ``core.anthropic_to_chat`` (a line becomes a job with it).
``batch_results`` writes a batch submitted in Anthropic's form as Anthropic's results
lines.

An OpenAI-form job to a kind ``openai`` provider goes as it is; to a kind ``anthropic``
provider it goes translated and its Message comes back as a chat.completion. An
Anthropic-form job goes to a kind ``openai`` provider as its params translated at
submit (``Job.request_body``), its chat.completion kept and written as a Message at
collect; to a kind ``anthropic`` provider its params go as given (``native_body``: only
the model id configured for the model and the output cap, which the line gave) and its
Message is kept as it came.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from chatbatch.core.config import Config, Model, Provider
from chatbatch.core.jobs import Job, JobError
from chatbatch.core.pricing import Usage
from chatbatch.core.untranslatable import Untranslatable
from chatbatch.translate.chat_to_messages import chat_to_messages, takes_sampling
from chatbatch.translate.completion_to_message import completion_to_message, message_usage
from chatbatch.translate.message_to_completion import message_to_completion
from chatbatch.translate.messages_rules import check_messages

Form = Literal["openai", "anthropic"]


def wire_body(job: Job, model: Model, provider: Provider) -> dict[str, Any]:
    """The request body sent for ``job`` to ``provider`` (at ``provider.url``). A body for
    a kind anthropic provider meets ``messages_rules`` (else ``Untranslatable``: the
    submit check refuses the line)."""
    if provider.kind == "openai":
        return job.request_body(model)
    sampling = takes_sampling(provider.anthropic_version)
    if job.native_params is not None:
        body = native_body(job.native_params, model, job.output_cap(model))
        check_messages(body, sampling=sampling, prefix="params.")
        return body
    body = chat_to_messages(job.request_body(model), sampling=sampling)
    check_messages(body, sampling=sampling, prefix="(as sent to Anthropic) ")
    return body


def native_body(params: dict[str, Any], model: Model, cap: int) -> dict[str, Any]:
    """An Anthropic-form job's params as given, to Anthropic's own API: the model named by
    its configured id, the output cap as given (``max_tokens`` is required in the form)."""
    return {**params, "model": model.model_id, "max_tokens": cap}


def result_body(
    job: Job, native: dict[str, Any], provider: Provider, created: int | None = None
) -> dict[str, Any]:
    """The body a job's result stores for ``native``, the provider's answer, in the
    worker (a Message from a kind anthropic provider becomes a chat.completion for an
    OpenAI-form job). Not the collect-time choice of the results file's shape
    (``answer_body``)."""
    if provider.kind == "openai" or job.native_params is not None:
        return native
    return message_to_completion(native, int(time.time()) if created is None else created)


def answer_body(
    form: Form, body: dict[str, Any], custom_id: str = "", booked: Usage | None = None
) -> dict[str, Any]:
    """The answer a result of a batch of ``form`` carries: an OpenAI-form batch's as
    stored; an Anthropic-form batch's as an Anthropic Message (a chat.completion
    translated, a Message as it came, but for its usage when it came without one:
    ``booked`` then, as for a translated one). ``custom_id`` and ``booked``: see
    ``completion_to_message``."""
    if form == "openai":
        return body
    if body.get("type") == "message":
        return body if booked is None else body | {"usage": message_usage(booked)}
    return completion_to_message(body, custom_id, booked)


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
            f"{err.why} (model {job.model} is served by Anthropic's API)",
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
