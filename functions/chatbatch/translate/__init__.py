"""Which body goes on the wire for a job to a provider, and which body ends in its result:
the one place that chooses (``wire_body``, ``answer_body``).

One module per direction: ``messages_to_chat`` (Anthropic params -> chat request),
``completion_to_message`` (chat.completion -> Anthropic Message); ``batch_results``
writes a batch submitted in Anthropic's form as Anthropic's results lines.
"""

from __future__ import annotations

from typing import Any, Literal

from chatbatch.core.config import Model, Provider
from chatbatch.core.jobs import Job
from chatbatch.core.pricing import Usage
from chatbatch.translate.completion_to_message import completion_to_message

Form = Literal["openai", "anthropic"]


def provider_kind(provider: Provider) -> str:
    """The API a provider speaks (``openai`` until providers carry a ``kind``)."""
    return str(getattr(provider, "kind", "openai"))


def wire_body(job: Job, model: Model, provider: Provider) -> dict[str, Any]:
    """The request body sent for ``job`` to ``provider``: on an OpenAI-kind provider the
    chat body (an Anthropic-form job's params translated at submit, ``Job.request_body``)."""
    kind = provider_kind(provider)
    if kind == "openai":
        return job.request_body(model)
    raise NotImplementedError(f"{job.form}-form jobs on a {kind}-kind provider")


def answer_body(
    form: Form, body: dict[str, Any], custom_id: str = "", booked: Usage | None = None
) -> dict[str, Any]:
    """The answer a result of a batch of ``form`` carries: an OpenAI-form batch's as
    stored; an Anthropic-form batch's as an Anthropic Message (a chat.completion
    translated, a Message as it came). ``custom_id`` and ``booked``: see
    ``completion_to_message``."""
    if form == "openai" or body.get("type") == "message":
        return body
    return completion_to_message(body, custom_id, booked)
