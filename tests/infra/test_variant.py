"""The other choices: x86_64, Python 3.13, an existing secret by ARN, an alarm e-mail."""

from __future__ import annotations

import json
import re

import pytest
from synth_support import ROOT, Synth, synthesize

from infra.secrets import secret_env_name

ARN = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:deepseek-key-AbC123"


def _replace_once(text: str, pattern: str, replacement: str) -> str:
    new, count = re.subn(pattern, replacement, text, count=1, flags=re.MULTILINE)
    assert count == 1, f"chatbatch.toml no longer has {pattern!r}"
    return new


@pytest.fixture(scope="module")
def variant(tmp_path_factory: pytest.TempPathFactory) -> Synth:
    text = (ROOT / "chatbatch.toml").read_text()
    text = _replace_once(text, r"^architecture = .*$", 'architecture = "x86_64"')
    text = _replace_once(text, r"^runtime = .*$", 'runtime = "3.13"')
    text = _replace_once(
        text, r"^\[providers\.deepseek\]$", f'[providers.deepseek]\nsecret_arn = "{ARN}"'
    )
    config = tmp_path_factory.mktemp("config") / "chatbatch.toml"
    config.write_text(text)
    return synthesize(
        tmp_path_factory.mktemp("cdk.out"),
        config_path=config,
        context={"alarm_email": "ops@example.com"},
    )


def test_x86_64_python_313_asset(variant: Synth) -> None:
    for fn in variant.resources("AWS::Lambda::Function").values():  # worker and gatherer
        assert fn["Properties"]["Architectures"] == ["x86_64"]
        assert fn["Properties"]["Runtime"] == "python3.13"
    (core,) = (variant.asset_dir / "pydantic_core").glob("*.so")
    assert "cpython-313-x86_64-linux-gnu" in core.name
    for so in variant.asset_dir.rglob("*.so"):
        assert int.from_bytes(so.read_bytes()[18:20], "little") == 62, so  # EM_X86_64


def test_existing_secret_is_used_not_created(variant: Synth) -> None:
    created = variant.resources("AWS::SecretsManager::Secret")
    assert len(created) == 3  # openai, anthropic, gemini; deepseek's exists already
    for fn in variant.resources("AWS::Lambda::Function").values():  # worker and gatherer
        assert fn["Properties"]["Environment"]["Variables"][secret_env_name("deepseek")] == ARN
    reads = [
        s
        for policy in variant.resources("AWS::IAM::Policy").values()
        for s in policy["Properties"]["PolicyDocument"]["Statement"]
        if "secretsmanager:GetSecretValue" in s["Action"]
    ]
    assert len(reads) == 2  # the worker's role's and the gatherer's
    for read in reads:
        assert ARN in json.dumps(read["Resource"])
    assert variant.template["Outputs"]["SecretArnDeepseek"]["Value"] == ARN


def test_config_path_reaches_the_asset(variant: Synth) -> None:
    shipped = (variant.asset_dir / "chatbatch.toml").read_text()
    assert 'runtime = "3.13"' in shipped
    assert ARN in shipped


def test_alarm_email_subscribes_to_the_alarm_topic(variant: Synth, synth: Synth) -> None:
    (subscription,) = variant.resources("AWS::SNS::Subscription").values()
    assert subscription["Properties"]["Protocol"] == "email"
    assert subscription["Properties"]["Endpoint"] == "ops@example.com"
    assert synth.resources("AWS::SNS::Subscription") == {}  # none without the context
