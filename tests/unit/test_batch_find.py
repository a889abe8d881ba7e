"""Finding a provider batch again after a crash between creating it and recording its id
(issue 17, ``docs/batch-route.md``, "Gather: exactly one provider batch per part"): both
clients list the provider's batches newest first across the pages (``listed``), stop at
the first batch older than the moment asked for, carry OpenAI's metadata back, and read an
ended Anthropic batch's first custom_id off its results without reading the rest. Against
the simulator on 127.0.0.1 (its clock the test's), and a mock transport where the
simulator cannot misbehave the way a test needs."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import httpx
import pytest
from test_batch_api import GPT, KEY, client_for, many, run_to_end, sim_config
from test_simulator_batches import Clock, batch_simulator

from chatbatch.core.config import Config
from chatbatch.local.simulator import Simulator
from chatbatch.provider.batch_api import (
    AnthropicBatchClient,
    BatchApiError,
    BatchState,
    MalformedResult,
    provider_custom_id,
)
from chatbatch.provider.batch_api.http import HttpBatchClient
from chatbatch.worker.batch_jobs import batch_parts

MODELS = {"openai": GPT, "anthropic": "haiku"}
LIST_PATHS = ("/v1/batches", "/v1/messages/batches")


class Recording(httpx.HTTPTransport):
    """The real transport, noting the query of each list request it carries."""

    def __init__(self) -> None:
        super().__init__()
        self.pages: list[dict[str, str]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET" and request.url.path in LIST_PATHS:
            self.pages.append(dict(request.url.params))
        return super().handle_request(request)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sim(clock: Clock) -> Iterator[Simulator]:
    with batch_simulator(clock, KEY, [GPT, "claude-haiku-4-5"], latency_ms=0) as running:
        yield running


@pytest.fixture
def config(sim: Simulator) -> Config:
    return sim_config(sim.base_url)


def client(
    config: Config, api: str, transport: httpx.BaseTransport | None = None
) -> HttpBatchClient:
    [part] = batch_parts(many(config, MODELS[api], 1), config)
    kind = type(client_for(part, config))
    assert issubclass(kind, HttpBatchClient)
    return kind(config, part.provider, lambda _: KEY, transport=transport)


def created(config: Config, api: str, clock: Clock, count: int) -> list[BatchState]:
    """``count`` batches of ``api``, one every 10 s, each of 2 jobs and named by
    metadata ``{"chatbatch_part": "p-<i>"}`` (which Anthropic does not keep)."""
    states = []
    for i in range(count):
        [part] = batch_parts(many(config, MODELS[api], 2, f"b-{i}"), config)
        states.append(client_for(part, config).create(part, {"chatbatch_part": f"p-{i}"}))
        clock.advance(10)
    return states


@pytest.mark.parametrize("api", ["openai", "anthropic"])
def test_listing_follows_the_pages_newest_first_and_stops_at_created_after(
    config: Config, clock: Clock, api: str
) -> None:
    made = created(config, api, clock, 5)
    assert [b.created_at for b in made] == pytest.approx(
        [made[0].created_at + 10 * i for i in range(5)]
    )
    transport = Recording()
    lister = client(config, api, transport)
    every = list(lister.listed(0, page_size=2))
    assert [b.id for b in every] == [b.id for b in reversed(made)]
    assert [b.created_at for b in every] == [b.created_at for b in reversed(made)]
    cursor = lister.cursor
    assert transport.pages == [
        {"limit": "2"},
        {"limit": "2", cursor: made[3].id},
        {"limit": "2", cursor: made[1].id},
    ]
    transport.pages.clear()
    recent = list(lister.listed(made[2].created_at, page_size=2))
    assert [b.id for b in recent] == [made[4].id, made[3].id, made[2].id]
    assert len(transport.pages) == 2  # the second page held an older batch: no third
    assert list(lister.listed(made[4].created_at + 1)) == []
    if api == "openai":  # the part's name comes back, listed or polled
        assert [b.metadata for b in every] == [
            {"chatbatch_part": f"p-{i}"} for i in (4, 3, 2, 1, 0)
        ]
        assert lister.poll(made[0].id).metadata == {"chatbatch_part": "p-0"}
    else:
        assert all(b.metadata == {} for b in every)


def test_a_cursor_deleted_mid_listing_does_not_cut_the_list_short(
    config: Config, clock: Clock
) -> None:
    """The simulator ignores an ``after_id`` it no longer knows (a batch deleted since)
    and starts the list over: the listing passes over what it listed already and goes
    on, rather than ending there (the gatherer would take a batch it did not reach for
    none, and create the part's batch a second time)."""
    made = created(config, "anthropic", clock, 6)
    clock.advance(60)  # every batch ended: each may be deleted
    lister = client(config, "anthropic")
    listing = lister.listed(0, page_size=2)
    assert [next(listing).id for _ in range(4)] == [b.id for b in made[:1:-1]]
    lister.http.call("DELETE", f"/messages/batches/{made[2].id}")  # the next page's cursor
    assert [b.id for b in listing] == [made[1].id, made[0].id]


def test_a_list_that_goes_round_is_an_error_not_its_end(config: Config) -> None:
    """A provider that ignores the cursor altogether would page forever, or, if the
    listing stopped at the first page seen twice, end it early: it is a transient
    error, the part stays ``creating`` until the next run."""
    pages = [
        [{"id": f"msgbatch_{i}", "created_at": "2026-12-01T00:00:00Z"} for i in ij]
        for ij in ((3, 2), (1, 0))
    ]
    asked: list[str | None] = []

    def answer(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.params.get("after_id"))
        data = pages[len(asked) % 2 == 0]
        page = {
            "data": data,
            "has_more": True,
            "first_id": data[0]["id"],
            "last_id": data[-1]["id"],
        }
        return httpx.Response(200, json=page)

    lister = client(config, "anthropic", httpx.MockTransport(answer))
    listing = lister.listed(0, page_size=2)
    assert [b.id for b in itertools.islice(listing, 4)] == [f"msgbatch_{i}" for i in (3, 2, 1, 0)]
    with pytest.raises(BatchApiError, match="the page after msgbatch_2 came twice") as caught:
        next(listing)
    assert caught.value.transient and asked == [None, "msgbatch_2", "msgbatch_0", "msgbatch_2"]


def test_first_custom_id_of_an_ended_message_batch(config: Config, clock: Clock) -> None:
    [part] = batch_parts(many(config, "haiku", 3), config)
    anthropic = client_for(part, config)
    assert isinstance(anthropic, AnthropicBatchClient)
    batch = anthropic.create(part)
    with pytest.raises(BatchApiError, match="has not ended yet") as running:
        anthropic.first_custom_id(batch.id)
    assert running.value.status == 400
    run_to_end(anthropic, batch.id, clock)
    first = anthropic.first_custom_id(batch.id)
    outcome = anthropic.results(batch.id, part)[0]  # the first line's
    assert first == provider_custom_id(outcome.batch_id, outcome.custom_id)
    assert first is not None and first.startswith("cb-") and first in part.jobs


class FirstLineOnly(httpx.SyncByteStream):
    """A results body whose first line is there and whose rest must never be read."""

    def __init__(self, first: bytes) -> None:
        self.first, self.closed = first, False

    def __iter__(self) -> Iterator[bytes]:
        yield self.first
        raise AssertionError("read past the first line")

    def close(self) -> None:
        self.closed = True


def test_first_custom_id_reads_one_line_and_closes(config: Config) -> None:
    bodies = {
        "msgbatch_one": b'\n{"custom_id": "cb-1", "result": {"type": "succeeded"}}\n',
        "msgbatch_bad": b'{"result": {}}\n',
    }
    streams: list[FirstLineOnly] = []

    def answer(request: httpx.Request) -> httpx.Response:
        batch_id = request.url.path.split("/")[-2]
        if batch_id not in bodies:
            return httpx.Response(200, content=b"\n")
        streams.append(FirstLineOnly(bodies[batch_id]))
        return httpx.Response(200, stream=streams[-1])

    anthropic = client(config, "anthropic", httpx.MockTransport(answer))
    assert isinstance(anthropic, AnthropicBatchClient)
    assert anthropic.first_custom_id("msgbatch_one") == "cb-1"
    assert anthropic.first_custom_id("msgbatch_empty") is None
    with pytest.raises(MalformedResult, match="msgbatch_bad, results, line 1: not an object"):
        anthropic.first_custom_id("msgbatch_bad")
    assert len(streams) == 2 and all(s.closed for s in streams)
