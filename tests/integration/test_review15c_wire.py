"""Review 15c: failing end-to-end tests on the native Anthropic wire (local run)."""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest
from anthropic.types.messages import MessageBatchIndividualResponse

from chatbatch.local.options import LocalOptions
from chatbatch.local.runtime import LocalRuntime
from chatbatch.local.simulator import SimulatorSettings
from chatbatch.state.budget.budget import Budget
from tests.integration.test_anthropic_wire import CLAUDE, MODEL, ROOT, run_batch


def test_native_message_without_usage_is_a_valid_batch_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An Anthropic-form batch on Anthropic's own API whose answer came without usage: it
    is booked at its worst case, and its results line must still be an SDK batch result
    (Message.usage is required; an OpenAI-form job's translated Message carries the usage
    booked, the native Message is written as it came, without any)."""
    config_path = tmp_path / "chatbatch.toml"
    config_path.write_text((ROOT / "chatbatch.toml").read_text() + CLAUDE)
    monkeypatch.setenv("CHATBATCH_CONFIG", str(config_path))
    lines = [
        {
            "custom_id": f"n{i}",
            "params": {
                "model": MODEL,
                "max_tokens": 30,
                "messages": [{"role": "user", "content": f"tag-n{i} question"}],
            },
        }
        for i in range(2)
    ]
    options = LocalOptions(timeout_s=120, simulator=SimulatorSettings(), config_path=config_path)
    with LocalRuntime(options) as rt:
        assert rt.simulator is not None
        rt.simulator.inject("no_usage")
        summary = run_batch(rt, lines, "nousage", tmp_path / "nousage")
        spent = Budget(boto3.client("dynamodb"), rt.resources.table, rt.config).usage()
    assert summary.succeeded == 2, summary
    assert spent.reserved_usd == 0
    out = (tmp_path / "nousage" / "results.jsonl").read_text().splitlines()
    assert len(out) == 2
    for text in out:
        line = json.loads(text)
        result = MessageBatchIndividualResponse.model_validate(line).result
        assert result.type == "succeeded"
