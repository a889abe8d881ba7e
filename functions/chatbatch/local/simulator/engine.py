"""The engine: requests in, replies out (no I/O). Routing, faults and outages, answers and
their billing, the batch APIs (``batch_routes``, their lines answered by the same
generation); the HTTP server only carries its ``Reply`` (shaped in ``replies``)."""

from __future__ import annotations

import random
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import parse_qsl

from pydantic import ValidationError

from chatbatch.local.simulator import messages as anthropic
from chatbatch.local.simulator.answers import (
    REQUEST_OVERHEAD_TOKENS,
    Answer,
    Choice,
    answer_for,
    field_tokens,
    message_tokens,
    prefix_digests,
    request_key,
    usage_fields,
)
from chatbatch.local.simulator.api import (
    ApiError,
    account_error,
    authorize,
    invalid,
    load_body,
    validate_request,
)
from chatbatch.local.simulator.batch_routes import BatchApis, admin_target
from chatbatch.local.simulator.messages import AnthropicError
from chatbatch.local.simulator.replies import (
    Reply,
    answer_reply,
    anthropic_fault_reply,
    fault_reply,
    json_reply,
    message_reply,
)
from chatbatch.local.simulator.settings import (
    BATCH_LINE,
    GENERATED,
    WHOLE,
    Fault,
    FaultKind,
    ReasoningUsage,
    SimulatorSettings,
    as_fault,
    config_reasoning_models,
    known_models,
    takes_only_completion_tokens,
)
from chatbatch.local.simulator.stats import Counters, Stats
from chatbatch.local.simulator.windows import Limits, RateLimited


class Engine:
    """The simulator's state and logic, driven by one event loop (not thread-safe)."""

    def __init__(
        self, settings: SimulatorSettings, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._clock = clock
        self._started = clock()
        self._epoch = time.time()  # the wall time of _started: batch timestamps
        self._script: deque[Fault] = deque()
        self._batch_script: deque[Fault] = deque()  # for batch lines, apart from the chat path's
        self._outage: tuple[float, float] | None = None
        self._serial = 0
        self.apply(settings)
        self.reset()

    # -- admin ------------------------------------------------------------------------

    def apply(self, settings: SimulatorSettings) -> None:
        self.settings = settings
        self._rng = random.Random(settings.seed)
        self._models = known_models(settings)
        self._reasoning_ids = config_reasoning_models(settings)

    def configure(self, changes: dict[str, Any]) -> SimulatorSettings:
        data = self.settings.model_dump() | changes
        self.apply(SimulatorSettings.model_validate(data))
        return self.settings

    def reset(self) -> None:
        """Forget stats, rate-limit windows, cached prefixes, injected faults and outages,
        files and batches."""
        self._outage = None
        self._batches = BatchApis(
            self._chat_line,
            self._message_line,
            lambda: self.settings,
            lambda now: self._epoch + now - self._started,
        )
        self._counters = Counters(started=self._started)
        self._limits: dict[str, Limits] = {}
        self._seen: dict[str, set[bytes]] = {}
        self._script.clear()
        self._batch_script.clear()

    def inject(self, faults: Sequence[Fault]) -> None:
        self._script.extend(faults)

    def inject_batch(self, faults: Sequence[Fault]) -> None:
        """Faults for the next batch lines answered (either API), in order: one of
        ``BATCH_LINE`` each (a batch line has no connection to reset or cut)."""
        wrong = [f.kind.value for f in faults if f.kind not in BATCH_LINE]
        if wrong:
            raise ValueError(f"not a batch line's fault: {', '.join(wrong)}")
        self._batch_script.extend(faults)

    def start_outage(self, seconds: float) -> None:
        now = self._clock()
        self._outage = (now, now + seconds)

    def stats(self) -> Stats:
        self._batches.advance(self._clock())
        return self._counters.stats(uptime_s=round(self._clock() - self._started, 3))

    # -- HTTP entry point -------------------------------------------------------------

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Reply:
        target, _, query = path.partition("?")
        route = target.rstrip("/").removeprefix("/v1") or "/"
        chat = route in ("/chat/completions", "/messages")
        claude = route == "/messages" or route.startswith("/messages/")
        try:
            now = self._clock()
            self._batches.advance(now)  # batches move lazily, on every request
            batch = self._batches.route(method, route, dict(parse_qsl(query)), headers, body, now)
            reply = batch or self._route(method, route, headers, body)
        except ApiError as err:
            if claude and not isinstance(err, AnthropicError):
                err = AnthropicError(err.status, err.message, err.headers)
            reply = json_reply(err.status, err.body(), err.headers)
        if claude:
            reply.headers.setdefault("request-id", "req_" + uuid.uuid4().hex[:24])
        else:
            reply.headers.setdefault("x-request-id", "req_" + uuid.uuid4().hex)
        if chat:
            self._counters.count_status(
                "reset" if reply.reset else "hang" if reply.drop else reply.status
            )
        return reply

    def _route(self, method: str, route: str, headers: dict[str, str], body: bytes) -> Reply:
        if route == "/chat/completions" and method == "POST":
            return self._chat(headers, body)
        if route == "/messages" and method == "POST":
            return self._messages(headers, body)
        if route == "/models" and method == "GET":
            return json_reply(200, self._model_list())
        if route == "/health" and method == "GET":
            return json_reply(200, {"status": "ok"})
        if route == "/stats" and method == "GET":
            return json_reply(200, self.stats().model_dump())
        if route.startswith("/admin/") and method == "POST":
            authorize(self.settings.api_key, headers)
            action = route.removeprefix("/admin/")
            target = admin_target(action)
            if target is not None:
                host = headers.get("host", "127.0.0.1")
                return json_reply(200, self._batches.force(*target, self._clock(), host))
            return json_reply(200, self._admin(action, load_body(body)))
        raise ApiError(404, f"Unknown request URL: {method} {route}.", code="unknown_url")

    def _admin(self, action: str, payload: Any) -> dict[str, Any]:
        payload = payload if isinstance(payload, dict) else {}
        try:
            if action == "faults":
                faults = [as_fault(f) for f in payload.get("faults") or []]
                self.inject(faults)
                return {"queued": len(self._script)}
            if action == "batch_faults":
                self.inject_batch([as_fault(f) for f in payload.get("faults") or []])
                return {"queued": len(self._batch_script)}
            if action == "outage":
                self.start_outage(float(payload.get("seconds", 0)))
                return {"outage_s": float(payload.get("seconds", 0))}
            if action == "settings":
                return self.configure(payload).model_dump(mode="json", exclude={"api_key"})
            if action == "reset":
                self.reset()
                return {"reset": True}
        except (ValidationError, ValueError, TypeError) as err:
            raise invalid(str(err), None) from None
        raise ApiError(404, f"Unknown admin action: {action}.", code="unknown_url")

    def _model_list(self) -> dict[str, Any]:
        data = [
            {"id": m, "object": "model", "created": 0, "owned_by": "chatbatch-simulator"}
            for m in sorted(self._models)
        ]
        return {"object": "list", "data": data}

    # -- chat completions -------------------------------------------------------------

    def _chat(self, headers: dict[str, str], raw: bytes) -> Reply:
        now = self._clock()
        self._counters.count_request(now)
        authorize(self.settings.api_key, headers)
        body = load_body(raw)
        if self.settings.keep_bodies:
            self._counters.bodies.append(body)
        model = self._check_chat(body)
        try:
            reply = self._complete(body, model, now)
        except ApiError as err:
            err.headers = self._limits_of(model).headers(now, self.settings) | err.headers
            raise
        reply.headers |= self._limits_of(model).headers(now, self.settings)
        return reply

    def _check_chat(self, body: Any) -> str:
        """The chat API's refusals of a body (``ApiError``); its model when accepted."""
        validate_request(body)
        model = body["model"]
        if self._models and model not in self._models:
            raise ApiError(
                404,
                f"The model `{model}` does not exist or you do not have access to it.",
                code="model_not_found",
            )
        kinds = self.settings.account_errors
        kind = kinds.get(model) or kinds.get("*")
        if kind is not None:
            self._counters.count_fault(f"account_{kind.value}")
            raise account_error(kind, model)
        if body.get("max_tokens") is not None and takes_only_completion_tokens(
            self.settings, model, self._reasoning_ids
        ):
            raise invalid(
                "Unsupported parameter: 'max_tokens' is not supported with this model. "
                "Use 'max_completion_tokens' instead.",
                "max_tokens",
                "unsupported_parameter",
            )
        return str(model)

    def _chat_line(self, body: Any) -> tuple[int, dict[str, Any]]:
        """A batch line for ``/v1/chat/completions``: the synchronous answer to ``body``
        (or its refusal, unbilled), billed as batch work, outside the rate limits."""
        try:
            model = self._check_chat(body)
            fault = self._next_batch_fault()
            if fault is not None and fault.kind is not FaultKind.no_usage:
                fault_reply(fault, self.settings)  # raises its error, nothing generated
        except ApiError as err:
            return err.status, err.body()
        answer, (prompt, cached, output) = self._generate(body, model)
        self._seen.setdefault(model, set()).update(prefix_digests(body["messages"]))
        self._counters.bill_batch(model, prompt, cached, output)
        payload = answer.body()
        if fault is not None:  # no_usage: generated and billed, its usage dropped
            del payload["usage"]
        return 200, payload

    def _generate(self, body: dict[str, Any], model: str) -> tuple[Answer, tuple[int, int, int]]:
        """The answer to ``body`` and its (prompt, cached, output) tokens; nothing billed."""
        messages = body["messages"]
        prompt, cached = self._prompt_usage(model, messages)
        prompt += field_tokens(body)
        cap = body.get("max_completion_tokens") or body.get("max_tokens")
        # a request without a cap gets the model's own limit: an open question, answered at length
        length = self.settings.answer_tokens if cap else self.settings.open_answer_tokens
        n = body.get("n") or 1
        thought, outside = self._reasoning(model, cap)  # per choice, within its cap
        visible_cap = cap - thought if cap is not None else None
        choices = []
        for index in range(n):
            content, tokens, finish = answer_for(messages, visible_cap, length, index)
            choices.append((Choice(content, finish), tokens))
        completion = sum(tokens for _, tokens in choices)
        reasoning = thought * n
        self._serial += 1
        answer = Answer(
            id=f"chatcmpl-{request_key(body)[:20]}{self._serial:08x}",
            created=int(time.time()),
            model=model,
            choices=[choice for choice, _ in choices],
            usage=usage_fields(prompt, cached, completion, reasoning, outside),
        )
        return answer, (prompt, cached, completion + reasoning)

    def _complete(self, body: dict[str, Any], model: str, now: float) -> Reply:
        if self._in_outage(now):
            self._counters.count_fault("outage")
            raise ApiError(503, "Service unavailable (simulated outage).", type="server_error")
        answer, (prompt, cached, output) = self._generate(body, model)
        tokens = prompt + output
        limits = self._limits_of(model)
        try:
            limits.check(model, now, self.settings, tokens)
        except RateLimited as err:
            self._counters.count_rate_limited(err.cause)
            raise
        fault = self._next_fault()
        if fault is not None and fault.kind not in GENERATED:
            limits.record(now, 0)  # a request received, nothing generated: no tokens
            return fault_reply(fault, self.settings)
        limits.record(now, tokens)
        self._seen.setdefault(model, set()).update(prefix_digests(body["messages"]))
        # generated: billed now, read or not (a real provider bills what it finished)
        self._counters.bill(now, model, prompt, cached, output)
        key = request_key(body)
        kind = fault.kind if fault else None
        reply = answer_reply(
            answer,
            self.settings,
            stream=bool(body.get("stream")),
            include_usage=bool((body.get("stream_options") or {}).get("include_usage")),
            fault=kind,
        )
        if kind is None or kind in WHOLE:
            reply.on_delivered = lambda: self._counters.deliver(key)
        return reply

    # -- Anthropic messages -----------------------------------------------------------

    def _messages(self, headers: dict[str, str], raw: bytes) -> Reply:
        """``POST /v1/messages``: Anthropic's rules (``simulator.messages``), the same
        limits, faults and billing as the chat path, cache writes and reads billed."""
        now = self._clock()
        self._counters.count_request(now)
        anthropic.authorize(self.settings.api_key, headers)
        body = load_body(raw)
        if self.settings.keep_bodies:
            self._counters.bodies.append(body)
        model = self._check_message(body)
        limits = self._limits_of(model)
        try:
            reply = self._message(body, model, now, limits)
        except ApiError as err:
            err.headers = limits.anthropic_headers(now, self.settings) | err.headers
            raise
        reply.headers |= limits.anthropic_headers(now, self.settings)
        return reply

    def _check_message(self, body: Any) -> str:
        """The Messages API's refusals of a body (``AnthropicError``); its model if accepted."""
        anthropic.validate_messages(body)
        model = body["model"]
        kinds = self.settings.account_errors
        kind = kinds.get(model) or kinds.get("*")
        if (self._models and model not in self._models) or kind is not None:
            if kind is not None:
                self._counters.count_fault(f"account_{kind.value}")
            status = {"insufficient_quota": 400, "invalid_api_key": 401}.get(
                kind.value if kind else "", 404
            )
            message = "invalid x-api-key" if status == 401 else f"model: {model}"
            if status == 400:  # Anthropic's out-of-credit answer: a 400, not a 402
                message = anthropic.NO_CREDIT
            raise anthropic.AnthropicError(status, message)
        return str(model)

    def _message_line(self, params: Any) -> tuple[int, dict[str, Any]]:
        """A Message Batches request: the synchronous answer to ``params`` (or its refusal,
        unbilled), billed as batch work, outside the rate limits."""
        try:
            model = self._check_message(params)
            fault = self._next_batch_fault()
            if fault is not None and fault.kind is not FaultKind.no_usage:
                anthropic_fault_reply(fault, self.settings)  # raises, nothing generated
        except ApiError as err:
            return err.status, err.body()
        answer, cache = self._generate_message(params, model)
        self._seen.setdefault("anthropic:" + model, set()).update(cache.breakpoints)
        self._counters.bill_batch(
            model,
            cache.prompt,
            cache.cache_read_input_tokens,
            answer.usage["output_tokens"],
            cache_write=cache.cache_creation_input_tokens,
            cache_write_1h=cache.cache_write_1h_tokens,
        )
        payload = answer.body()
        if fault is not None:  # no_usage
            del payload["usage"]
        return 200, payload

    def _generate_message(
        self, body: dict[str, Any], model: str
    ) -> tuple[anthropic.MessageAnswer, anthropic.CacheUsage]:
        """The Message answering ``body`` and its input tokens; nothing billed."""
        cache = anthropic.cache_usage(body, self._seen.get("anthropic:" + model, set()))
        text, output, finish = answer_for(
            body["messages"], body["max_tokens"], self.settings.answer_tokens
        )
        self._serial += 1
        answer = anthropic.MessageAnswer(
            id=f"msg_{request_key(body)[:16]}{self._serial:08x}",
            model=model,
            text=text,
            stop_reason=anthropic.STOP[finish],
            usage=cache.usage(output),
        )
        return answer, cache

    def _message(self, body: dict[str, Any], model: str, now: float, limits: Limits) -> Reply:
        if self._in_outage(now):
            self._counters.count_fault("outage")
            raise anthropic.AnthropicError(529, "Overloaded (simulated outage)")
        answer, cache = self._generate_message(body, model)
        output = answer.usage["output_tokens"]
        try:
            limits.check(model, now, self.settings, cache.prompt + output)
        except RateLimited as err:
            self._counters.count_rate_limited(err.cause)
            headers = {k: v for k, v in err.headers.items() if k != "retry-after-ms"}
            raise anthropic.AnthropicError(429, err.message, headers) from None  # no -ms: OpenAI's
        fault = self._next_fault()
        if fault is not None and fault.kind not in GENERATED:
            limits.record(now, 0)
            return anthropic_fault_reply(fault, self.settings)
        limits.record(now, cache.prompt + output)
        self._seen.setdefault("anthropic:" + model, set()).update(cache.breakpoints)
        self._counters.bill(
            now,
            model,
            cache.prompt,
            cache.cache_read_input_tokens,
            output,
            cache_write=cache.cache_creation_input_tokens,
            cache_write_1h=cache.cache_write_1h_tokens,
        )
        key = request_key(body)
        kind = fault.kind if fault else None
        reply = message_reply(answer, self.settings, stream=bool(body.get("stream")), fault=kind)
        if kind is None or kind in WHOLE:
            reply.on_delivered = lambda: self._counters.deliver(key)
        return reply

    def _reasoning(self, model: str, max_tokens: int | None) -> tuple[int, bool]:
        """(reasoning tokens within the cap, reported outside completion_tokens?)"""
        think = self.settings.reasoning.get(model)
        if think is None:
            return 0, False
        tokens = think.tokens if max_tokens is None else min(think.tokens, max_tokens)
        return tokens, think.usage is ReasoningUsage.outside

    def _prompt_usage(self, model: str, messages: list[dict[str, Any]]) -> tuple[int, int]:
        """(prompt tokens, cached tokens): the longest leading run of messages seen before."""
        sizes = [message_tokens(m) for m in messages]
        seen = self._seen.get(model, set())
        hits = [i for i, d in enumerate(prefix_digests(messages)) if d in seen]
        cached = REQUEST_OVERHEAD_TOKENS + sum(sizes[: hits[-1] + 1]) if hits else 0
        return REQUEST_OVERHEAD_TOKENS + sum(sizes), cached

    # -- limits, faults, auth ---------------------------------------------------------

    def _limits_of(self, model: str) -> Limits:
        return self._limits.setdefault(model, Limits())

    def _in_outage(self, now: float) -> bool:
        s = self.settings
        scheduled = s.outage_at_s is not None and (
            0 <= now - self._started - s.outage_at_s < s.outage_s
        )
        return scheduled or (self._outage is not None and self._outage[0] <= now < self._outage[1])

    def _next_fault(self) -> Fault | None:
        fault = self._script.popleft() if self._script else self._random_fault()
        if fault is not None:
            self._counters.count_fault(fault.kind.value)
        return fault

    def _next_batch_fault(self) -> Fault | None:
        """The next injected batch line fault (no random ones: ``fault_rates`` are the
        chat path's), counted as ``batch_<kind>``."""
        fault = self._batch_script.popleft() if self._batch_script else None
        if fault is not None:
            self._counters.count_fault(f"batch_{fault.kind.value}")
        return fault

    def _random_fault(self) -> Fault | None:
        if not self.settings.fault_rates:
            return None
        draw = self._rng.random()
        for kind, rate in self.settings.fault_rates.items():
            if draw < rate:
                return Fault(kind=kind)
            draw -= rate
        return None

    # -- bookkeeping ------------------------------------------------------------------

    def count_connection(self) -> None:
        self._counters.connections += 1
