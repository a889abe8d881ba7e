"""The batch route against what a data engineer really sends (`--route batch`): the
promises of docs/batch-route.md checked through the local runtime for each kind of line
(``n`` > 1, tools, a JSON schema, images, no cap, huge and tiny prompts, a claim check,
metadata), for lines the provider answers badly (no usage, a refusal, a whole batch
failed), for duplicates, two models, many batches, a batch's own budget, and midnight.

The promises, checked by ``promised``: every job ends exactly once, with its own answer or
an error naming it; each cost record says route ``batch`` and is priced at the batch
prices; the ledger's spent equals the cost records and what the simulator billed at each
route's prices; nothing stays reserved or ``batched``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
import pytest
from test_batch_route import MODEL, books, options, priced
from test_batch_route import job as plain_job

from bench._common import read_jsonl
from chatbatch.core.config import Model
from chatbatch.core.pricing import Usage, cost
from chatbatch.local.options import LocalOptions
from chatbatch.local.runtime import LocalRuntime
from chatbatch.local.summary import Summary
from chatbatch.local.simulator import Stats
from chatbatch.state.batches import BatchInfo
from chatbatch.state.budget.ledger import DayUsage


@dataclass
class Ran:
    """What a run through the batch route left: its summary, output files and books."""

    summary: Summary
    results: dict[str, dict[str, Any]]
    costs: list[dict[str, Any]]
    errors: dict[str, dict[str, Any]]
    usage: DayUsage
    billed: Decimal
    info: BatchInfo
    stats: Stats
    model: Model  # MODEL at its batch prices


def through(
    tmp_path: Path,
    lines: list[dict[str, Any]],
    opts: LocalOptions | None = None,
    before: Callable[[LocalRuntime], None] | None = None,
) -> Ran:
    """``lines`` as one file through ``local run --route batch``."""
    path = tmp_path / "jobs.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "out"
    with LocalRuntime(opts or options()) as rt:
        if before is not None:
            before(rt)
        summary = rt.run(path, out, route="batch")
        usage, billed = books(rt)
        info = rt.batches.get(summary.batch_id)
        assert rt.simulator is not None and info is not None
        stats = rt.simulator.stats()
        model = next(m for m in rt.config.models.values() if m.model_id == MODEL)
    return Ran(
        summary=summary,
        results={r["custom_id"]: r for r in read_jsonl(out / "results.jsonl")},
        costs=read_jsonl(out / "costs.jsonl") if (out / "costs.jsonl").exists() else [],
        errors={e["custom_id"]: e for e in read_jsonl(out / "errors.jsonl")}
        if (out / "errors.jsonl").exists()
        else {},
        usage=usage,
        billed=billed,
        info=info,
        stats=stats,
        model=model.batch_priced(),
    )


def answer_of(result: dict[str, Any], choice: int = 0) -> str:
    return str(result["response"]["body"]["choices"][choice]["message"]["content"] or "")


def promised(ran: Ran, ids: set[str], *, exact_bill: bool = True) -> None:
    """The batch route's promises for a run whose jobs are ``ids``; ``exact_bill``: every
    answer came with usage (else the ledger books a worst case above the bill)."""
    assert set(ran.results).isdisjoint(ran.errors), set(ran.results) & set(ran.errors)
    assert set(ran.results) | set(ran.errors) == ids
    assert (ran.summary.succeeded, ran.summary.failed) == (len(ran.results), len(ran.errors))
    for cid, error in ran.errors.items():
        assert error["error"]["message"], error
    records = {}
    for record in ran.costs:
        assert record["custom_id"] not in records, ("a cost counted twice", record)
        records[record["custom_id"]] = record
    assert set(records) == set(ran.results)
    for record in ran.costs:
        assert record["route"] == "batch", record
        if record["usage_estimated"]:
            continue
        usage = Usage(
            prompt_tokens=record["prompt_tokens"],
            cached_tokens=record["cached_tokens"],
            completion_tokens=record["completion_tokens"],
        )
        assert Decimal(record["cost_usd"]) == cost(usage, ran.model), record
    from_records = sum((Decimal(c["cost_usd"]) for c in ran.costs), Decimal(0))
    assert ran.usage.spent_usd == from_records, (ran.usage, from_records)
    if exact_bill:
        assert from_records == ran.billed, (from_records, ran.billed)
    else:
        assert from_records >= ran.billed
    assert ran.usage.reserved_usd == 0, ran.usage
    assert ran.info.batched == 0 and ran.info.deferred == 0, ran.info
    assert ran.stats.billed_calls == 0 or MODEL not in ran.stats.billed_by_model


def body_job(i: int, **body: Any) -> dict[str, Any]:
    """A job line of ``plain_job``'s shape with ``body`` merged over its body."""
    line = plain_job(i, batch=True)
    line["body"] = {**line["body"], **body}
    return line


def without(line: dict[str, Any], key: str) -> dict[str, Any]:
    line["body"] = {k: v for k, v in line["body"].items() if k != key}
    return line


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "lookup",
            "description": "look a word up",
            "parameters": {
                "type": "object",
                "properties": {"word": {"type": "string"}},
                "required": ["word"],
            },
        },
    }
]
SCHEMA = {
    "type": "json_schema",
    "json_schema": {
        "name": "label",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {"label": {"type": "string"}},
            "required": ["label"],
            "additionalProperties": False,
        },
    },
}
IMAGE = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}


def realistic() -> list[dict[str, Any]]:
    """One of each kind of line a data engineer sends through the batch route."""
    huge = "word9 " + "lorem ipsum dolor sit amet " * 11_000  # ~300 KB: a claim check
    return [
        plain_job(0, batch=True),
        body_job(1, n=3),
        body_job(2, tools=TOOLS, tool_choice="auto"),
        body_job(3, response_format=SCHEMA),
        body_job(
            4,
            messages=[
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "word4 what is this"}, IMAGE],
                }
            ],
        ),
        without(plain_job(5, batch=True), "max_tokens"),
        body_job(6, messages=[{"role": "user", "content": "word6"}], max_tokens=4),
        body_job(
            7,
            messages=[
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "word7 first"},
                {"role": "assistant", "content": "ok"},
                {"role": "user", "content": "word7 again"},
            ],
        ),
        {**plain_job(8, batch=True), "metadata": {"team": "search", "run": "r8"}},
        body_job(9, messages=[{"role": "user", "content": huge}]),
    ]


def test_every_kind_of_line_ends_once_with_its_own_answer_at_the_batch_prices(
    tmp_path: Path,
) -> None:
    lines = realistic()
    ran = through(tmp_path, lines)
    ids = {line["custom_id"] for line in lines}
    promised(ran, ids)
    assert not ran.errors, ran.errors
    for i in range(10):
        assert f"word{i}" in answer_of(ran.results[f"job-{i}"]), i
    three = ran.results["job-1"]["response"]["body"]["choices"]
    assert len(three) == 3 and len({c["message"]["content"] for c in three}) == 3
    assert ran.stats.batch_billed_by_model[MODEL].calls == len(lines)
    by_id = {c["custom_id"]: c for c in ran.costs}
    assert by_id["job-8"]["metadata"] == {"team": "search", "run": "r8"}
    assert by_id["job-0"]["metadata"] == {}
