"""An OpenAI-compatible chat API on loopback that answers deterministically and misbehaves
on purpose.

It is the embedded default's provider (no key, no network) and the adversary of the tests,
demo and benchmarks. Endpoints (``/v1`` is optional):

- ``POST /v1/chat/completions``, streamed or not, validated like the real API: 400 with
  ``{"error": {"message", "type", "param", "code"}}`` for a bad body, 401 for a missing or
  wrong key (when ``api_key`` is set), 404 for an unknown model; ``account_errors`` (model
  id or ``*`` -> ``invalid_api_key`` | ``insufficient_quota`` | ``model_not_found``)
  answers that model's requests with OpenAI's 401, 429 ``insufficient_quota`` or 404 body
  until switched off.
- ``GET /v1/models``, ``GET /health``, ``GET /stats`` (``Stats`` as JSON).
- The providers' batch APIs, in memory: OpenAI's Files (``POST /v1/files`` multipart
  ``purpose`` + ``file``, ``GET /v1/files/{id}``, ``GET /v1/files/{id}/content``,
  ``DELETE /v1/files/{id}``) and Batches (``POST /v1/batches``, ``GET /v1/batches/{id}``,
  ``GET /v1/batches``, ``POST /v1/batches/{id}/cancel``); Anthropic's Message Batches
  (``POST /v1/messages/batches``, ``GET /v1/messages/batches/{id}``, ``GET
  /v1/messages/batches``, ``POST .../{id}/cancel``, ``GET .../{id}/results``, ``DELETE
  .../{id}``). Each line is answered exactly as the synchronous endpoint answers the same
  body (the same generation, usage and refusals), progressively over
  ``batch_turnaround_s``; ``batch_finalize_s``, ``batch_cancel_s`` and
  ``batch_expire_after_s`` time the rest (``batch_progress``). Batches move lazily, on
  every request, on the engine's one clock. Batch lines use the providers' separate batch
  queue, so they take nothing from the rate-limit windows (no batch queue limit is
  simulated). The providers bill batch work at 50%: ``Stats.batch_billed_by_model``
  counts the answered (succeeded) lines' tokens apart from the synchronous bill, for the
  caller to price with the batch prices; a cancelled, expired or refused line is not
  billed.
- ``POST /admin/faults`` ``{"faults": ["503", {"kind": "429", "retry_after_s": 2}]}``
  (applied to the next chat requests, in order), ``POST /admin/batch_faults`` (the same,
  for the next batch lines answered, of either API: ``400``, ``500``, ``503``, ``429``
  answer the line with that error, unbilled; ``no_usage`` answers it without usage,
  billed), ``POST /admin/outage`` ``{"seconds": N}``,
  ``POST /admin/settings`` (any ``SimulatorSettings`` keys), ``POST /admin/reset`` (files
  and batches too), ``POST /admin/batches/{id}/expire`` and ``.../fail`` (either
  provider's batch, still running: the lines due so far stay answered, the rest expire /
  never run).

Answers are derived from the messages (``answer_for``): ``sim:<sha256 of the messages>``,
the first words of the last user message, then filler up to ``answer_tokens``, cut at the
request's cap (``max_completion_tokens`` or ``max_tokens``). A request sent no cap gets the
model's own limit, as from a real provider: it is answered at length
(``open_answer_tokens``, default 8,192). A model of a family in ``completion_tokens_only``
(OpenAI's reasoning models: o1, o3, o4-mini, gpt-5), or marked ``reasoning = true`` in
chatbatch.toml, refuses ``max_tokens`` with OpenAI's 400 (``unsupported_parameter``).
Messages are checked as OpenAI checks them: content parts of a type the role may send
(``text``, ``image_url``, ... with their required fields), an assistant turn with
``content: null`` only when it calls tools, a ``tool`` message answering an earlier
``tool_calls`` id. ``keep_bodies`` keeps every chat request body received
(``Stats.bodies``), so a test can see what the client really sent. ``n`` > 1 returns n
choices, each its own text, and bills each one's output (the prompt once). Tokens are
counted by ``count_tokens`` (``\\w+|[^\\w\\s]``), each message adding 4
(its content, ``name`` and tool calls counted) and each request 3; ``tools``,
``functions``, ``tool_choice``, ``function_call`` and ``response_format`` are billed as
prompt tokens (their JSON text, plus 12 + 8 per tool for tools, 3 for the others). A
prompt prefix (leading messages) seen before for the model is cached, reported the OpenAI
way (``prompt_tokens_details.cached_tokens``) and the DeepSeek way
(``prompt_cache_hit_tokens`` / ``prompt_cache_miss_tokens``). A model listed in
``reasoning`` thinks first: its reasoning tokens (per choice) come out of the output cap,
are billed as output and reported in ``completion_tokens_details.reasoning_tokens``,
inside ``completion_tokens`` (OpenAI, DeepSeek) or outside it, in ``total_tokens`` only
(some gateways).

Requests and tokens per minute are limited per model over a rolling 60 s window (429 with
``retry-after``, ``retry-after-ms``); every chat response carries ``x-ratelimit-*``, and
every response an ``x-request-id`` (``req_`` and 32 hex digits), as OpenAI's do.
A timed outage answers every request 503. Faults (seeded probabilities or injected) come
before generation, nothing billed: 500, 503, 429, 400 (OpenAI's ``invalid_request_error``
body, ``param`` and ``code`` set), connection ``reset``, ``hang`` past the
client's timeout (the request counts in the requests window, its tokens in none); or
after it, billed in full as a real provider bills a generation it finished: a body or
stream cut short (``truncate``: no ``[DONE]``, no usage chunk), a ``corrupt`` body or SSE
chunk, ``reset_after`` (the connection reset before the answer's first byte), ``slow``
(the first byte after ``hang_s``: a client with a shorter timeout is gone) and
``no_usage`` (a whole, valid answer without usage, streamed or not:
``fault_rates={"no_usage": 1.0}`` is a gateway that always drops it).

Stats count what was billed (``billed_calls``, the token totals, ``billed_by_model``:
every generation, read or not) and what was *delivered whole* (``completions``, per
distinct request body; ``duplicates`` are completions beyond the first of the same body:
work paid for twice); ``billed_unread`` is the difference. A reply whose client left
before its first byte (or between two stream frames) is not written and not delivered.

The server is the standard library's asyncio streams with a small HTTP/1.1 keep-alive
parser: run it in-process with ``Simulator`` (a background thread) or in the foreground
with ``serve`` / ``python -m chatbatch.local.simulator``.

The package, one idea a module: ``settings`` (how it behaves, the fault kinds), ``api``
(what the chat API accepts and refuses: bodies, keys, account errors), ``answers`` (tokens,
answers, usage, the body and SSE shapes), ``windows`` (rolling 60 s windows, the rate
limits on them, header forms of a wait), ``stats`` (what it counts), ``replies`` (what
goes over the wire: an answer whole or damaged, a fault), ``engine`` (requests in, replies
out, no I/O), ``server`` (HTTP/1.1 over asyncio), ``background`` (``Simulator`` on a
thread), ``command`` (``parse_args``, ``serve``); the batch APIs: ``batch_progress`` (a
batch's run on the clock), ``batch_files`` (the file store, multipart uploads),
``openai_batch_lines`` (an input file's checks), ``openai_batches``,
``anthropic_batches``, ``batch_routes`` (their HTTP routes and admin actions).
The names importers use are re-exported here.
"""

from chatbatch.local.simulator.answers import answer_for, count_tokens
from chatbatch.local.simulator.background import Simulator
from chatbatch.local.simulator.batch_routes import BatchApis
from chatbatch.local.simulator.command import parse_args, serve
from chatbatch.local.simulator.engine import Engine
from chatbatch.local.simulator.settings import (
    AccountErrorKind,
    Fault,
    FaultKind,
    Reasoning,
    ReasoningUsage,
    SimulatorSettings,
)
from chatbatch.local.simulator.stats import ModelBill, Stats

__all__ = [
    "AccountErrorKind",
    "BatchApis",
    "Engine",
    "Fault",
    "FaultKind",
    "ModelBill",
    "Reasoning",
    "ReasoningUsage",
    "Simulator",
    "SimulatorSettings",
    "Stats",
    "answer_for",
    "count_tokens",
    "parse_args",
    "serve",
]
