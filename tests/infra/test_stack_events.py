"""The Batch Completed event's infrastructure, synthesized with ``[events] email`` set: the
worker may put chatbatch events on the default bus and nothing else, and a rule on that
detail-type e-mails them through an SNS topic (TLS only)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from synth_support import ROOT, Synth, synthesize

EMAIL = "team@example.com"


@pytest.fixture(scope="module")
def emailed(tmp_path_factory: pytest.TempPathFactory) -> Synth:
    text = (ROOT / "chatbatch.toml").read_text()
    text, count = re.subn(r"^# email = .*$", f'email = "{EMAIL}"', text, flags=re.MULTILINE)
    assert count == 1, "chatbatch.toml no longer has the commented [events] email"
    config = tmp_path_factory.mktemp("config") / "chatbatch.toml"
    config.write_text(text)
    return synthesize(tmp_path_factory.mktemp("cdk.out"), config_path=config)


def _statements(synth: Synth, type_: str) -> list[dict[str, Any]]:
    return [
        statement
        for policy in synth.resources(type_).values()
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]
    ]


def test_the_worker_may_put_only_chatbatch_events_on_its_bus(emailed: Synth) -> None:
    """The worker's role and the gatherer's (it ingests a batch's last jobs) alike."""
    puts = [
        s for s in _statements(emailed, "AWS::IAM::Policy") if "events:PutEvents" in s["Action"]
    ]
    assert len(puts) == 2
    for put in puts:
        assert put["Action"] == "events:PutEvents" and put["Effect"] == "Allow"
        assert put["Condition"] == {"StringEquals": {"events:source": "chatbatch"}}
        assert ":event-bus/default" in json.dumps(put["Resource"])
        assert "*" not in json.dumps(put["Resource"])


def test_a_rule_on_batch_completed_emails_the_address(emailed: Synth) -> None:
    (rule,) = (  # (the other rule is the budget pause's hourly resume schedule)
        r
        for r in emailed.resources("AWS::Events::Rule").values()
        if "EventPattern" in r["Properties"]
    )
    props = rule["Properties"]
    assert props["EventPattern"] == {"source": ["chatbatch"], "detail-type": ["Batch Completed"]}
    assert props["EventBusName"] == "default" and props["State"] == "ENABLED"
    (target,) = props["Targets"]
    topics = emailed.resources("AWS::SNS::Topic")
    (topic_id,) = (k for k in topics if k.startswith("Events"))
    assert target["Arn"] == {"Ref": topic_id}
    template = target["InputTransformer"]["InputTemplate"]
    assert "completed" in template and "<detail-batch_id>" in template
    (subscription,) = emailed.resources("AWS::SNS::Subscription").values()
    assert subscription["Properties"]["Protocol"] == "email"
    assert subscription["Properties"]["Endpoint"] == EMAIL
    assert subscription["Properties"]["TopicArn"] == {"Ref": topic_id}


def test_only_eventbridge_publishes_to_the_topic_over_tls(emailed: Synth) -> None:
    (policy,) = (
        p
        for p in emailed.resources("AWS::SNS::TopicPolicy").values()
        if any(t["Ref"].startswith("Events") for t in p["Properties"]["Topics"])
    )
    statements = policy["Properties"]["PolicyDocument"]["Statement"]
    allows = [s for s in statements if s["Effect"] == "Allow"]
    assert [s["Principal"] for s in allows] == [{"Service": "events.amazonaws.com"}]
    assert all(s["Action"] == "sns:Publish" for s in allows)
    (deny,) = (s for s in statements if s["Effect"] == "Deny")
    assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
