"""Local mode keeps its answers to its owner: every file `chatbatch local run` and
`chatbatch collect` write is 0600 and every directory they create 0700, whatever the
umask; plain http:// goes only to loopback."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from chatbatch.cli.app import app
from chatbatch.core.config import Config
from chatbatch.core.private_files import private_open
from chatbatch.local.options import LocalOptions
from chatbatch.local.runtime import LocalRuntime
from chatbatch.local.simulator import Simulator, SimulatorSettings

pytestmark = pytest.mark.slow
CHATBATCH = str(Path(sys.executable).parent / "chatbatch")


@pytest.fixture
def open_umask() -> Iterator[None]:
    """A umask that lets anyone read what is created (the default on many machines)."""
    saved = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(saved)


def jobs_file(tmp_path: Path, n: int = 3) -> Path:
    jobs = tmp_path / "jobs.jsonl"
    lines = [{"custom_id": f"a{i}", "prompt": f"q{i}", "max_tokens": 8} for i in range(n)]
    lines.append({"custom_id": "bad"})  # an invalid line: errors.jsonl has a line too
    jobs.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return jobs


def modes(root: Path) -> dict[str, str]:
    """Every file and directory under ``root`` (and ``root``) → its permission bits."""
    paths = [root, *root.rglob("*")]
    return {str(p.relative_to(root.parent)): oct(stat.S_IMODE(p.lstat().st_mode)) for p in paths}


def assert_private(root: Path) -> None:
    found = modes(root)
    wide = {
        path: mode
        for path, mode in found.items()
        if mode != ("0o700" if (root.parent / path).is_dir() else "0o600")
    }
    assert not wide, f"readable by others: {wide}"


def test_a_local_run_writes_only_private_files(tmp_path: Path, open_umask: None) -> None:
    jobs = jobs_file(tmp_path)
    out = tmp_path / "new" / "out"  # both created by chatbatch
    with Simulator(SimulatorSettings(api_key="sk-local")) as sim:
        assert sim.base_url.startswith("http://127.0.0.1:")  # plain http to loopback: allowed
        args = ["local", "run", str(jobs), "--out", str(out), "--provider-url", sim.base_url]
        env = os.environ | {"CHATBATCH_API_KEY": "sk-local"}
        result = subprocess.run(
            [CHATBATCH, *args, "--json"],
            check=False,
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert result.returncode == 0, (result.stdout, result.stderr)
        assert sim.stats().requests == 3
    names = {p.name for p in out.rglob("*")}
    assert {"results.jsonl", "errors.jsonl", "costs.jsonl", "summary.json", "worker.log"} <= names
    assert {"journal.jsonl", "stack.json", "lock"} <= names  # the state dir, out/.state
    assert_private(tmp_path / "new")


def test_outputs_left_readable_by_an_earlier_version_are_narrowed(
    tmp_path: Path, open_umask: None
) -> None:
    path = tmp_path / "results.jsonl"
    path.write_text("old\n")
    path.chmod(0o644)
    with private_open(path, "a") as f:
        f.write("new\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_collect_writes_private_files(tmp_path: Path, config: Config, open_umask: None) -> None:
    config_file = tmp_path / "chatbatch.json"
    config_file.write_text(config.model_dump_json())
    with LocalRuntime(LocalOptions(config_path=config_file, batch_id="priv")) as rt:
        rt.register_stack()
        plan = rt.submit(jobs_file(tmp_path))
        rt.wait(plan)
        out = tmp_path / "collected"
        out.mkdir(mode=0o700)
        args = ["collect", "priv", "-o", str(out / "results.jsonl")]
        args += ["--errors", str(out / "errors.jsonl"), "--config", str(config_file)]
        result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, (result.stdout, result.exception)
    assert len((out / "results.jsonl").read_text().splitlines()) == 3
    assert (out / "errors.jsonl").exists()
    assert_private(out)


# hosts that never resolve: nothing leaves this machine even where the check is missing
@pytest.mark.parametrize("url", ["http://api.example.invalid/v1", "http://127.0.0.1.invalid/v1"])
def test_plain_http_beyond_loopback_is_refused_before_anything_runs(
    tmp_path: Path, url: str
) -> None:
    out = tmp_path / "out"
    args = ["local", "run", str(jobs_file(tmp_path)), "--out", str(out), "--provider-url", url]
    result = CliRunner().invoke(app, args)
    assert result.exit_code != 0
    message = " ".join(result.stderr.split())
    assert f"--provider-url {url}" in message
    assert "plain http://" in message and "use https://" in message
    assert not out.exists()
