"""Lines built with the openai SDK's request types, in both line forms, run through the
local runtime: every job succeeds, the simulator (which validates like OpenAI and keeps
every body it receives) got each body exactly as the line gave it, and the results carry
the original custom_ids (``request 1``, ``task/1``, unicode: hashed in the keys)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from chatbatch.local.options import LocalOptions
from chatbatch.local.runtime import LocalRuntime
from chatbatch.local.simulator import SimulatorSettings
from tests.unit.sdk_bodies import bodies

MODEL = "gpt-4.1"  # configured with image_input_tokens
ROOT = Path(__file__).resolve().parents[2]


def sdk_lines() -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """custom_id -> (the line, the body it must send): every body in both forms."""
    out: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
    for custom_id, body in bodies(MODEL).items():
        batch = {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions"}
        out[custom_id] = (batch | {"body": body}, dict(body))
        out[f"{custom_id} (short)"] = ({"custom_id": f"{custom_id} (short)", **body}, dict(body))
    return out


def canonical(body: Any) -> str:
    return json.dumps(body, sort_keys=True)


def test_sdk_built_lines_run_and_reach_the_provider_unchanged(tmp_path: Path) -> None:
    lines = sdk_lines()
    path = tmp_path / "jobs.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line, _ in lines.values()))
    settings = SimulatorSettings(keep_bodies=True, rpm=10_000, tpm=10_000_000)
    with LocalRuntime(LocalOptions(timeout_s=120, simulator=settings)) as rt:
        summary = rt.run(path, tmp_path / "out")
        assert rt.simulator is not None
        received = rt.simulator.stats().bodies
    assert summary.succeeded == len(lines) and summary.failed == 0, summary
    assert sorted(map(canonical, received)) == sorted(canonical(b) for _, b in lines.values())
    results = [json.loads(t) for t in (tmp_path / "out/results.jsonl").read_text().splitlines()]
    assert {r["custom_id"] for r in results} == set(lines)
    by_id = {r["custom_id"]: r for r in results}
    # n = 3 came back as three choices
    assert len(by_id["sampling"]["response"]["body"]["choices"]) == 3


def test_a_reasoning_model_gets_max_completion_tokens_and_never_max_tokens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gpt-4.1 marked ``reasoning = true``: the simulator (reading the same file) refuses
    max_tokens for it as OpenAI does; a job without a cap is sent max_completion_tokens,
    one with max_completion_tokens keeps it, one with max_tokens is refused at submit."""
    text = (ROOT / "chatbatch.toml").read_text()
    config = tmp_path / "chatbatch.toml"
    config.write_text(text.replace('[models."gpt-4.1"]', '[models."gpt-4.1"]\nreasoning = true'))
    monkeypatch.setenv("CHATBATCH_CONFIG", str(config))
    say = [{"role": "user", "content": "hi"}]
    lines = [
        {"custom_id": "no cap", "model": MODEL, "messages": say},
        {"custom_id": "mct", "model": MODEL, "messages": say, "max_completion_tokens": 20},
        {"custom_id": "mt", "model": MODEL, "messages": say, "max_tokens": 20},
    ]
    path = tmp_path / "jobs.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    settings = SimulatorSettings(keep_bodies=True, completion_tokens_only=[])
    options = LocalOptions(timeout_s=120, simulator=settings, config_path=config)
    with LocalRuntime(options) as rt:
        summary = rt.run(path, tmp_path / "out")
        assert rt.simulator is not None
        received = rt.simulator.stats().bodies
    # the one failure is the invalid line
    assert (summary.succeeded, summary.invalid_lines, summary.failed) == (2, 1, 1), summary
    assert sorted(b["max_completion_tokens"] for b in received) == [20, 4096]
    assert not any("max_tokens" in b for b in received)
    errors = (tmp_path / "out/errors.jsonl").read_text()
    assert "gpt-4.1 is a reasoning model" in errors and "'mt'" in errors
