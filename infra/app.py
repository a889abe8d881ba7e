"""Build the CDK app: config, asset inputs, stack, cdk-nag. Used by app.py and the tests."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aws_cdk import App, Tags

from chatbatch.core.config import CONFIG_FILENAME, load_config
from chatbatch.core.principals import producer_arns
from infra.bundling import AssetInputs, runtime_requirements
from infra.nag import enable_nag
from infra.stack import ChatbatchStack

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DIR = ROOT / "functions" / "chatbatch"
CACHE_ROOT = ROOT / ".asset-cache"


def feature_flags() -> dict[str, Any]:
    """cdk.json's context (the recommended feature flags), also for apps not run by the CLI."""
    context: dict[str, Any] = json.loads((ROOT / "cdk.json").read_text())["context"]
    return context


def build_app(
    *,
    config_path: Path | None = None,
    outdir: str | None = None,
    cache_root: Path = CACHE_ROOT,
    context: dict[str, Any] | None = None,
    caller_arn: Callable[[], str] | None = None,
) -> tuple[App, ChatbatchStack]:
    """The app with its one stack; ``-c config=PATH`` picks another chatbatch.toml.
    ``caller_arn``: the deploying identity's ARN, for ``security.producers = ["deployer"]``
    (default: STS GetCallerIdentity, asked only then)."""
    app = App(outdir=outdir, context={**feature_flags(), **(context or {})})
    config_file = config_path or Path(app.node.try_get_context("config") or ROOT / CONFIG_FILENAME)
    config = load_config(config_file)
    asset = AssetInputs(
        package_dir=PACKAGE_DIR,
        config_file=config_file,
        requirements=runtime_requirements(ROOT / "pyproject.toml"),
        python_version=config.worker.runtime,
        architecture=config.worker.architecture,
    )
    alarm_email = app.node.try_get_context("alarm_email")
    stack = ChatbatchStack(
        app,
        "Chatbatch",
        config=config,
        asset=asset,
        cache_root=cache_root,
        producers=producer_arns(config.security.producers, caller_arn or _sts_caller_arn),
        alarm_email=str(alarm_email) if alarm_email else None,
    )
    Tags.of(stack).add("project", "chatbatch")
    enable_nag(app)
    return app, stack


def _sts_caller_arn() -> str:
    import boto3

    return str(boto3.client("sts").get_caller_identity()["Arn"])
