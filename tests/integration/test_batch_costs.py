"""``chatbatch costs`` over a mixed file run through the local runtime (the gatherer on its
timer, the simulator's OpenAI Batch API with a turnaround of seconds, as
``test_batch_route``): ``--by route`` adds up to the cost records of each route, and what
the batch route saved is the batch jobs' tokens at the synchronous prices minus the same
tokens at the batch prices, worked out here from the simulator's own bill.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from bench._common import read_jsonl
from chatbatch.cli.app import app
from chatbatch.local.runtime import LocalRuntime
from tests.integration.test_batch_route import MODEL, job, options, priced, write

pytestmark = pytest.mark.slow
runner = CliRunner()


def test_costs_by_route_add_up_to_the_records_and_the_saving_to_both_price_tables(
    tmp_path: Path,
) -> None:
    lines = [job(i, batch=i % 3 != 0) for i in range(30)]  # 20 batch, 10 sync
    out = tmp_path / "out"
    config_file = tmp_path / "chatbatch.json"
    with LocalRuntime(options()) as rt:
        assert rt.simulator is not None
        summary = rt.run(write(tmp_path, lines), out)
        rt.register_stack()  # the CLI finds the runtime as it finds a deployment
        config_file.write_text(rt.config.model_dump_json())

        def costs(*args: str) -> str:
            argv = ["costs", "--batch", summary.batch_id, *args, "--config", str(config_file)]
            result = runner.invoke(app, argv)
            assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
            return result.stdout

        by_route: dict[str, Any] = json.loads(costs("--by", "route", "--json"))
        by_both: dict[str, Any] = json.loads(costs("--by", "route", "--by", "model", "--json"))
        compared: dict[str, Any] = json.loads(costs("--compare", "--json"))
        text = costs("--by", "route")
        stats = rt.simulator.stats()
        model = next(m for m in rt.config.models.values() if m.model_id == MODEL)
    assert summary.succeeded == 30, summary

    records = read_jsonl(out / "costs.jsonl")
    paid = {
        route: sum((Decimal(r["cost_usd"]) for r in records if r["route"] == route), Decimal(0))
        for route in ("sync", "batch")
    }
    groups = {g["name"]: g for g in by_route["groups"]}
    assert sorted(groups) == ["batch", "sync"]
    for route, jobs in (("sync", 10), ("batch", 20)):
        assert groups[route]["jobs"] == jobs
        assert Decimal(groups[route]["cost_usd"]) == paid[route]
    assert Decimal(by_route["total_usd"]) == paid["sync"] + paid["batch"]
    assert by_route["batch_jobs"] == 20 and Decimal(by_route["batch_usd"]) == paid["batch"]

    # the same batch tokens at gpt-4.1's synchronous prices, minus at its batch prices
    bill = stats.batch_billed_by_model[MODEL].model_dump()
    assert paid["batch"] == priced(bill, model.batch_priced())
    saved = priced(bill, model) - priced(bill, model.batch_priced())
    assert saved > 0
    assert Decimal(by_route["saved_usd"]) == saved
    assert Decimal(groups["batch"]["saved_usd"]) == saved
    assert Decimal(groups["sync"]["saved_usd"]) == 0
    assert by_route["saved_unpriced_models"] == []
    both = {tuple(g["key"]): Decimal(g["saved_usd"]) for g in by_both["groups"]}
    assert both == {("batch", MODEL): saved, ("sync", MODEL): Decimal(0)}

    # compare: the whole billed usage at gpt-4.1's batch prices, beside its synchronous ones
    row = next(r for r in compared["compare"] if r["model"] == MODEL)
    sync_bill = stats.billed_by_model[MODEL].model_dump()
    assert Decimal(row["cost_usd"]) == priced(sync_bill, model) + priced(bill, model)
    at_batch = priced(sync_bill, model.batch_priced()) + priced(bill, model.batch_priced())
    assert Decimal(row["batch_cost_usd"]) == at_batch
    assert Decimal(compared["saved_usd"]) == saved  # whatever the grouping

    assert "saved" in text and "batch route: 20 job(s)" in text
