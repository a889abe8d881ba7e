"""Lines built with the openai SDK's request types, in both line forms, run through the
local runtime: every job succeeds, the simulator (which validates like OpenAI and keeps
every body it receives) got each body exactly as the line gave it, and the results carry
the original custom_ids (``request 1``, ``task/1``, unicode: hashed in the keys)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from chatbatch.local.options import LocalOptions
from chatbatch.local.runtime import LocalRuntime
from chatbatch.local.simulator import SimulatorSettings
from tests.unit.sdk_bodies import bodies

MODEL = "gpt-4.1"  # configured with image_input_tokens


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
