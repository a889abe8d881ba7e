"""`chatbatch collect --wait` against the local runtime, found the way a deployment is.

collect starts while the batch's jobs are still queued and running; it waits (progress on
stderr), then writes every result. With a timeout shorter than the batch, it gives up,
writes what is there and exits 3, as a collect of an unfinished batch does.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from chatbatch.cli.app import app
from chatbatch.core.config import Config
from chatbatch.local.options import LocalOptions
from chatbatch.local.runtime import LocalRuntime
from chatbatch.local.simulator import SimulatorSettings

pytestmark = pytest.mark.slow
runner = CliRunner()


class Cli:
    def __init__(self, rt: LocalRuntime, config_file: Path, workdir: Path) -> None:
        self.rt, self.config_file, self.workdir = rt, config_file, workdir

    def __call__(self, *args: str, code: int = 0) -> Result:
        result = runner.invoke(app, [*args, "--config", str(self.config_file)])
        assert result.exit_code == code, (result.stdout, result.stderr, result.exception)
        return result

    def submit(self, name: str, n: int) -> str:
        path = self.workdir / f"{name}.jsonl"
        lines = [{"custom_id": f"{name}{i:03d}", "prompt": f"label {name} {i}"} for i in range(n)]
        path.write_text("".join(json.dumps(line) + "\n" for line in lines))
        batch = json.loads(self("submit", str(path), "--json").stdout)["batch_id"]
        return str(batch)

    def status(self, batch: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self("status", batch, "--json").stdout)
        return data


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory, config: Config) -> Iterator[Cli]:
    workdir = tmp_path_factory.mktemp("wait")
    one_at_a_time = config.model_copy(
        update={"worker": config.worker.model_copy(update={"batch_size": 1, "batch_window_s": 0})}
    )
    config_file = workdir / "chatbatch.json"
    config_file.write_text(one_at_a_time.model_dump_json())
    options = LocalOptions(
        config_path=config_file,
        server=True,
        concurrency=2,
        simulator=SimulatorSettings(latency_ms=200),
    )
    with LocalRuntime(options) as rt:
        rt.register_stack()  # what `chatbatch local up` does
        yield Cli(rt, config_file, workdir)


def test_collect_wait_started_before_the_jobs_finish_returns_them_all(cli: Cli) -> None:
    batch = cli.submit("w", 40)
    assert cli.status(batch)["pending"] > 0  # collect starts while jobs are still to run
    out = cli.workdir / "w-results.jsonl"
    result = cli("collect", batch, "--wait", "-o", str(out), "--json")
    report = json.loads(result.stdout)
    assert (report["results"], report["errors"], report["unfinished"]) == (40, 0, 0)
    ids = [json.loads(line)["custom_id"] for line in out.read_text().splitlines()]
    assert ids == [f"w{i:03d}" for i in range(40)]
    waited = [line for line in result.stderr.splitlines() if line.startswith("waiting for")]
    assert len(waited) >= 2 and "/40 final" in waited[0], result.stderr
    assert not waited[0].startswith(f"waiting for batch {batch}: 40/40")  # it did wait
    assert waited[-1].startswith(f"waiting for batch {batch}: 40/40 final")


def test_collect_wait_times_out_with_exit_3_and_what_is_there(cli: Cli) -> None:
    assert cli.rt.simulator is not None
    cli.rt.simulator.configure(latency_ms=1500)
    try:
        batch = cli.submit("t", 30)
        out = cli.workdir / "t-results.jsonl"
        started = time.monotonic()
        result = cli("collect", batch, "--wait", "--timeout", "1", "-o", str(out), "--json", code=3)
        assert time.monotonic() - started < 15
        report = json.loads(result.stdout)
        assert report["unfinished"] > 0
        assert report["results"] + report["unfinished"] == 30
        assert "gave up waiting after 1 s" in result.stderr
    finally:
        cli.rt.simulator.configure(latency_ms=200)


def test_collect_timeout_needs_wait_and_an_unknown_batch_is_named(cli: Cli) -> None:
    result = cli("collect", "nope", "--timeout", "5", code=2)
    assert "--timeout is a limit on --wait" in result.stderr
    result = cli("collect", "no-such-batch", "--wait", code=1)
    assert "batch 'no-such-batch' not found" in result.stderr
