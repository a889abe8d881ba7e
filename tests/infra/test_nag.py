"""cdk-nag (AwsSolutions) runs on every synth; an unacknowledged finding fails it."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import aws_cdk as cdk
import pytest
from aws_cdk import aws_sqs as sqs
from synth_support import Synth, synthesize

from chatbatch.core.config import Config
from infra.nag import enable_nag


def _violations(outdir: Path) -> set[tuple[str, str]]:
    report = json.loads((outdir / "validation-report.json").read_text())
    return {
        (c["constructPath"], v["ruleName"])
        for p in report["pluginReports"]
        for v in p["violations"]
        for c in v["violatingConstructs"]
    }


def test_the_stack_has_no_unacknowledged_finding(synth: Synth) -> None:
    # The session fixture's synth would have raised; the report says so too.
    assert _violations(synth.outdir) == set()


def test_an_unacknowledged_finding_fails_synthesis(tmp_path: Path) -> None:
    app = cdk.App(outdir=str(tmp_path))
    stack = cdk.Stack(app, "Bad")
    dlq = sqs.Queue(stack, "Dlq", enforce_ssl=True)
    sqs.Queue(  # no TLS-only policy: AwsSolutions-SQS4
        stack, "Plain", dead_letter_queue=sqs.DeadLetterQueue(queue=dlq, max_receive_count=3)
    )
    enable_nag(app)
    with pytest.raises(RuntimeError, match="ValidationFailed"):
        app.synth()
    assert _violations(tmp_path) == {("Bad/Plain/Resource", "AwsSolutions-SQS4")}


def test_an_acknowledged_finding_passes(tmp_path: Path) -> None:
    app = cdk.App(outdir=str(tmp_path))
    stack = cdk.Stack(app, "Acked")
    dlq = sqs.Queue(stack, "Dlq", enforce_ssl=True)
    plain = sqs.Queue(
        stack, "Plain", dead_letter_queue=sqs.DeadLetterQueue(queue=dlq, max_receive_count=3)
    )
    cdk.Validations.of(plain).acknowledge(
        cdk.Acknowledgment(id="AwsSolutions-SQS4", reason="test: the acknowledgement form works")
    )
    enable_nag(app)
    app.synth()
    assert _violations(tmp_path) == set()


EXPECTED = {
    # (construct path, rule id); the bucket's logical id ends in a hash
    ("/Chatbatch/Worker/Function", "AwsSolutions-L1"),
    ("/Chatbatch/Worker/Role/DefaultPolicy", "AwsSolutions-IAM5[Resource::*]"),
    # one per object prefix the worker reads or writes, never the whole bucket's "/*"
    *(
        (
            "/Chatbatch/Worker/Role/DefaultPolicy",
            f"AwsSolutions-IAM5[Resource::<StorageData*.Arn>/{p}/*]",
        )
        for p in ("results", "errors", "refused", "requests", "costs", "cache", "claims")
    ),
    # the batch route's gatherer (infra/batch_route.py): the same, for its own prefixes
    ("/Chatbatch/BatchRoute/Function", "AwsSolutions-L1"),
    ("/Chatbatch/BatchRoute/Role/DefaultPolicy", "AwsSolutions-IAM5[Resource::*]"),
    *(
        (
            "/Chatbatch/BatchRoute/Role/DefaultPolicy",
            f"AwsSolutions-IAM5[Resource::<StorageData*.Arn>/{p}/*]",
        )
        for p in ("parts", "claims", "results", "costs", "errors", "requests", "refused")
    ),
    # costs --athena: Athena reads the cost records and writes its results, by prefix
    *(
        ("/Chatbatch/Costs/QueryPolicy", f"AwsSolutions-IAM5[Resource::<StorageData*.Arn>/{p}/*]")
        for p in ("costs", "athena-results")
    ),
    # the budget pause: ListEventSourceMappings exists only on "*"; UpdateEventSourceMapping
    # on any mapping ARN, narrowed by the condition that its function is the worker
    ("/Chatbatch/Worker/BudgetPause/SwitchMappings", "AwsSolutions-IAM5[Resource::*]"),
    (
        "/Chatbatch/Worker/BudgetPause/SwitchMappings",
        "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:lambda:<AWS::Region>:"
        "<AWS::AccountId>:event-source-mapping:*]",
    ),
}


def _normalise(rule: str) -> str:
    rule = rule.removeprefix("Annotation::").removeprefix("AwsSolutions::")
    return re.sub(r"<StorageData[0-9A-F]{8}\.Arn>", "<StorageData*.Arn>", rule)


def test_every_acknowledgement_is_expected_and_has_a_reason(synth: Synth, config: Config) -> None:
    expected = EXPECTED | {
        (f"/Chatbatch/Secrets/{p.capitalize()}", "AwsSolutions-SMG4") for p in config.providers
    }
    acked = {(path, _normalise(rule)) for path, rule, _ in synth.acknowledgements}
    assert acked == expected
    for path, rule, reason in synth.acknowledgements:
        assert len(reason.split()) >= 12, f"{path} {rule}: say why, not just that"


@pytest.fixture
def without_acknowledgements() -> Iterator[None]:
    original = cdk.Validations.acknowledge
    cdk.Validations.acknowledge = lambda self, *rules: None  # type: ignore[method-assign]
    try:
        yield
    finally:
        cdk.Validations.acknowledge = original  # type: ignore[method-assign]


def test_every_acknowledgement_answers_a_real_finding(
    synth: Synth, tmp_path: Path, without_acknowledgements: None
) -> None:
    """No stale acknowledgements: without them, exactly the acknowledged findings appear."""
    with pytest.raises(RuntimeError, match="ValidationFailed"):
        synthesize(tmp_path)
    found = {
        (f"/{path.removesuffix('/Resource')}", _normalise(rule))
        for path, rule in _violations(tmp_path)
    }
    acked = {(path, _normalise(rule)) for path, rule, _ in synth.acknowledgements}
    assert found == acked
