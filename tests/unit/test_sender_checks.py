"""Who may write a batch: sender ids matched to registrants, producer ARNs resolved."""

from __future__ import annotations

from typing import Any

import pytest
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from chatbatch.core.config import ConfigError, Priority, load_config, parse_config
from chatbatch.core.principals import (
    ProducerError,
    deployer_arns,
    principal_id,
    producer_arns,
)
from chatbatch.state.batches import BatchInfo
from chatbatch.worker.intake import Intake
from chatbatch.worker.producers import refusal, screen

USER = "AIDAEXAMPLEUSER00001"
ROLE = "AROAEXAMPLEROLE00001"
WORKER = "AROAWORKERROLE000001"


def intake(batch: str, sender: str | None) -> Intake:
    attributes = {"SenderId": sender} if sender else {}
    record = SQSRecord({"messageId": "m1", "body": "{}", "attributes": attributes})
    return Intake(record, batch, "line-1", Priority.normal)


def registered(by: str | None) -> BatchInfo:
    return BatchInfo(batch_id="b", registrant=by)


@pytest.mark.parametrize(
    ("sender", "registrant"),
    [
        (USER, USER),  # an IAM user: its id as it is
        (f"{ROLE}:alice", ROLE),  # an assumed role: any session of the registering role
        (f"{ROLE}:botocore-session-1712", ROLE),
        (f"{WORKER}:chatbatch-worker", ROLE),  # the workers' hand-backs
        (WORKER, USER),
    ],
)
def test_the_registrant_and_the_workers_may_write_a_batch(sender: str, registrant: str) -> None:
    assert refusal(intake("b", sender), registered(registrant), WORKER) is None


@pytest.mark.parametrize(
    ("sender", "registrant"),
    [
        ("AIDAOTHERUSER0000001", USER),
        (f"AROAOTHERROLE0000001:{ROLE}", ROLE),  # a session named like the role is not it
        (ROLE + "X:s", ROLE),  # a prefix is not a match
        (USER + ":x", USER + "Y"),
        (None, USER),  # no SenderId at all
    ],
)
def test_anyone_else_is_refused_naming_both(sender: str | None, registrant: str) -> None:
    reason = refusal(intake("b", sender), registered(registrant), WORKER)
    assert reason is not None and f"registered by {registrant}" in reason
    assert (sender or "an unknown sender") in reason


def test_messages_create_only_daily_batches() -> None:
    assert refusal(intake("daily-2026-12-02", USER), registered(None), WORKER) is None
    reason = refusal(intake("victim", USER), registered(None), WORKER)
    assert reason is not None and "not registered" in reason and USER in reason
    # a daily-* batch someone registered is theirs like any other
    assert refusal(intake("daily-x", USER), registered(ROLE), WORKER) is not None


def test_screen_marks_refused_intakes_and_drops_their_job() -> None:
    ok, bad = intake("mine", USER), intake("theirs", USER)
    bad = Intake(bad.record, "theirs", "line-1", Priority.normal, job=None)
    batches = {"mine": BatchInfo(batch_id="mine", registrant=USER), "theirs": registered(ROLE)}
    screened = screen({"a": ok, "b": bad}, batches, WORKER)
    assert screened["a"] is ok
    assert screened["b"].refused and screened["b"].job is None and screened["b"].error is None


def test_principal_id_drops_the_session_only() -> None:
    assert principal_id(f"{ROLE}:a:b") == ROLE
    assert principal_id(USER) == USER


def test_the_deployer_resolves_to_its_role_at_any_path() -> None:
    arn = "arn:aws:sts::123456789012:assumed-role/Deploy-Role/jane@example.com"
    assert deployer_arns(arn) == [
        "arn:aws:iam::123456789012:role/Deploy-Role",
        "arn:aws:iam::123456789012:role/*/Deploy-Role",
    ]
    user = "arn:aws:iam::123456789012:user/ops/jane"
    assert deployer_arns(user) == [user]
    with pytest.raises(ProducerError, match="neither an IAM user nor an assumed role"):
        deployer_arns("arn:aws:iam::123456789012:root")


def test_producers_keep_explicit_arns_and_ask_sts_only_for_the_deployer() -> None:
    explicit = ["arn:aws:iam::123456789012:role/Feeder"]
    assert producer_arns(explicit, caller_arn=_never) == explicit

    def no_credentials() -> str:
        raise RuntimeError("Unable to locate credentials")

    with pytest.raises(ProducerError, match="list the producer ARNs"):
        producer_arns(["deployer"], caller_arn=no_credentials)


def _never() -> str:
    raise AssertionError("STS asked without need")


def _with_producers(producers: Any) -> dict[str, Any]:
    data = load_config("chatbatch.toml").model_dump(mode="json")
    data["security"] = {"producers": producers}
    return data


def test_config_producers_are_iam_role_or_user_arns() -> None:
    assert load_config("chatbatch.toml").security.producers == ["deployer"]
    ok = ["deployer", "arn:aws:iam::123456789012:role/path/Feeder", "arn:aws:iam::1:user/x"]
    with pytest.raises(ConfigError, match=r"security\.producers\.2"):
        parse_config(_with_producers(ok))
    for bad in ("arn:aws:sts::123456789012:assumed-role/R/s", "*", "Feeder", []):
        with pytest.raises(ConfigError, match=r"security\.producers"):
            parse_config(_with_producers(bad if isinstance(bad, list) else [bad]))
    parse_config(_with_producers([*ok[:2], "arn:aws:iam::123456789012:role/team-*"]))
