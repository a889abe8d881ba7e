"""``chatbatch scale``: the plan of the config (or of ``--target``) as a user reads it,
from the config alone: shards, the mappings' concurrency, reserved concurrency, the quotas
to raise, and the ceiling with what sets it."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner, Result

from chatbatch.cli.app import app
from chatbatch.core.config import Config, Priority
from chatbatch.core.scale import ceilings, deployment_ceiling, plan
from chatbatch.core.sizing import MAPPING_MAX, RESUME_INVOCATIONS

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def scale(config: Path, *args: str) -> Result:
    result = runner.invoke(app, ["scale", "--config", str(config), *args])
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return result


def test_json_is_the_plan_of_the_target(config: Config) -> None:
    got = json.loads(scale(ROOT / "chatbatch.toml", "--target", "8000", "--json").stdout)
    cfg = config.model_copy(
        update={"scale": config.scale.model_copy(update={"target_jobs_per_s": 8000})}
    )
    want = plan(cfg)
    assert got["target_jobs_per_s"] == 8000
    assert got["shards"]["ledger"] == want.ledger_shards == 3
    assert got["shards"]["limiter"] == {m: want.limiter(m) for m in config.models}
    assert got["worker"]["mapping_concurrency"] == {p.value: MAPPING_MAX for p in Priority}
    assert got["worker"]["reserved_concurrency"] == 4 * MAPPING_MAX + RESUME_INVOCATIONS
    lam = next(q for q in got["quotas"] if q["name"].startswith("Lambda concurrent"))
    assert lam["default"] == 1_000 and lam["raise"] is True
    table = next(q for q in got["quotas"] if q["name"].startswith("DynamoDB table-level write"))
    assert table["raise"] is True, "8,000 jobs/s write more than a table's default 40,000 WRU/s"
    assert [q["name"] for q in got["quotas"] if q["raise"]] == [lam["name"], table["name"]]
    lowest = deployment_ceiling(ceilings(cfg, want))
    assert got["ceiling"] == {"jobs_per_s": lowest.jobs_per_s, "set_by": lowest.limit}
    assert len(got["ceilings"]) == 3 + len(config.models) + 1 + 2


def test_the_config_target_and_a_table_for_people(tmp_path: Path) -> None:
    path = tmp_path / "chatbatch.toml"
    path.write_text((ROOT / "chatbatch.toml").read_text() + "\n[scale]\ntarget_jobs_per_s = 500\n")
    result = scale(path)
    text = result.stdout
    assert "target 500 jobs/s" in text
    assert "reserved concurrency: 553" in text  # 4 mappings of 138 + the resume
    assert "653" in text  # the account's concurrency it needs: + 100 unreserved
    # 138 invocations of 40 jobs in 5.5 s: one priority alone takes twice the target
    assert "modelled ceiling: 1,004 jobs/s, set by Lambda, one priority alone" in text
    assert "warning" not in result.stderr


def test_without_a_target_nothing_is_raised_and_a_target_above_the_ceiling_warns() -> None:
    result = scale(ROOT / "chatbatch.toml")
    assert "no scale.target_jobs_per_s" in result.stdout
    assert "reserved concurrency: none" in result.stdout
    assert "AWS quotas" not in result.stdout
    above = scale(ROOT / "chatbatch.toml", "--target", "8000")
    assert "modelled ceiling: 4,000 jobs/s, set by table (on-demand quota)" in above.stdout
    assert "above the modelled ceiling" in above.stderr
