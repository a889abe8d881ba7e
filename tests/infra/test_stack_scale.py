"""``scale.target_jobs_per_s`` in the template: the event source mappings' concurrency is
raised to what the target needs (at most Lambda's 1,000) and the function reserves their
sum; without a target the mappings are as configured and nothing is reserved."""

from __future__ import annotations

from typing import Any

import pytest
from synth_support import ROOT, Synth, function, synthesize

from chatbatch.core.config import Config, Priority, load_config
from chatbatch.core.sizing import RESUME_INVOCATIONS, concurrency_for

TARGET = 2_000


@pytest.fixture(scope="module")
def scaled_config(tmp_path_factory: pytest.TempPathFactory) -> tuple[Config, Any]:
    text = (ROOT / "chatbatch.toml").read_text()
    assert "[scale]" not in text
    path = tmp_path_factory.mktemp("config") / "chatbatch.toml"
    path.write_text(f"{text}\n[scale]\ntarget_jobs_per_s = {TARGET}\nanswer_s = 5.0\n")
    return load_config(path), path


@pytest.fixture(scope="module")
def scaled(tmp_path_factory: pytest.TempPathFactory, scaled_config: tuple[Config, Any]) -> Synth:
    return synthesize(tmp_path_factory.mktemp("cdk.out"), config_path=scaled_config[1])


def _mapping_concurrency(synth: Synth) -> dict[Priority, int]:
    queues = {
        lid: r["Properties"]["QueueName"] for lid, r in synth.resources("AWS::SQS::Queue").items()
    }
    got = {}
    for mapping in synth.resources("AWS::Lambda::EventSourceMapping").values():
        props = mapping["Properties"]
        name = queues[props["EventSourceArn"]["Fn::GetAtt"][0]]
        priority = Priority(name.rsplit("-", 1)[1])
        got[priority] = props["ScalingConfig"]["MaximumConcurrency"]
    return got


def test_a_target_raises_the_mappings_and_reserves_their_sum(
    scaled: Synth, scaled_config: tuple[Config, Any]
) -> None:
    config = scaled_config[0]
    # 2,000 jobs/s in invocations of 40 that last 5.5 s, twice over: 550 (Lambda takes 1,000)
    assert concurrency_for(TARGET, config.worker.batch_size, 5.5) == 550
    mappings = _mapping_concurrency(scaled)
    assert mappings == dict.fromkeys(Priority, 550)
    assert all(mappings[p] > config.priorities[p].max_concurrency for p in Priority)
    _, worker = function(scaled)
    reserved = worker["Properties"]["ReservedConcurrentExecutions"]
    assert reserved == 4 * 550 + RESUME_INVOCATIONS


def test_without_a_target_the_mappings_are_as_configured_and_nothing_reserved(
    synth: Synth, config: Config
) -> None:
    assert config.scale.target_jobs_per_s is None
    assert _mapping_concurrency(synth) == {
        p: config.priorities[p].max_concurrency for p in Priority
    }
    _, worker = function(synth)
    assert "ReservedConcurrentExecutions" not in worker["Properties"]
