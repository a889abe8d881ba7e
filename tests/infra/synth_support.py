"""Shared by the infra tests: the repo on sys.path, the synthesized app's facts."""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `infra` is a top-level package of the repo, not installed
    sys.path.insert(0, str(ROOT))
# This machine's Node 20 is past jsii's support window; the banner is noise in test output.
os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")

from aws_cdk import assertions  # noqa: E402

from infra.app import build_app  # noqa: E402

# the identity the tests "deploy" as: an assumed role, as `cdk deploy` usually runs
DEPLOYER = "arn:aws:sts::123456789012:assumed-role/Deployer/ci-session"


@dataclass(frozen=True)
class Synth:
    outdir: Path
    stack_name: str
    template: dict[str, Any]
    assertions: assertions.Template
    acknowledgements: list[tuple[str, str, str]]  # (construct path, rule id, reason)
    asset_dir: Path

    def resources(self, type_: str) -> dict[str, dict[str, Any]]:
        return {k: r for k, r in self.template["Resources"].items() if r["Type"] == type_}


def synthesize(
    outdir: Path, config_path: Path | None = None, context: dict[str, Any] | None = None
) -> Synth:
    """`build_app()` as app.py runs it (cdk-nag included), synthesized into ``outdir``."""
    app, stack = build_app(
        outdir=str(outdir), config_path=config_path, context=context, caller_arn=lambda: DEPLOYER
    )
    assembly = app.synth()  # raises if cdk-nag reports an unacknowledged finding
    artifact = assembly.get_stack_by_name(stack.stack_name)
    template = artifact.template
    # The stack's metadata file (jsii cannot marshal find_metadata_by_type's results).
    metadata = json.loads((outdir / f"{artifact.id}.metadata.json").read_text())
    acks = [
        (path, rule, reason)
        for path, entries in metadata.items()
        for entry in entries
        if entry["type"] == "aws:cdk:acknowledged-rules"
        for rule, reason in entry["data"].items()
    ]
    # the worker and the gatherer run the one code asset (infra.batch_route)
    (asset_key,) = {
        r["Properties"]["Code"]["S3Key"]
        for r in template["Resources"].values()
        if r["Type"] == "AWS::Lambda::Function"
    }
    asset_hash = asset_key.removesuffix(".zip")
    return Synth(
        outdir=outdir,
        stack_name=stack.stack_name,
        template=template,
        assertions=assertions.Template.from_json(json.loads(json.dumps(template))),
        acknowledgements=acks,
        asset_dir=outdir / f"asset.{asset_hash}",
    )


TABLE = ("StateTable.Arn",)
# (sid, effect, actions, resources, condition): the state table's statements of the
# worker's role and the gatherer's (infra.worker_policy.worker_data_statements)
TABLE_POLICY: set[tuple[str, str, tuple[str, ...], tuple[str, ...], str]] = {
    ("TableGetItem", "Allow", ("dynamodb:GetItem",), TABLE, ""),
    ("TableBatchGetItem", "Allow", ("dynamodb:BatchGetItem",), TABLE, ""),
    ("TableQuery", "Allow", ("dynamodb:Query",), TABLE, ""),
    ("TablePutItem", "Allow", ("dynamodb:PutItem",), TABLE, ""),
    ("TableUpdateItem", "Allow", ("dynamodb:UpdateItem",), TABLE, ""),
    ("TableDeleteItem", "Allow", ("dynamodb:DeleteItem",), TABLE, ""),
    ("TableTransactWriteItems", "Allow", ("dynamodb:TransactWriteItems",), TABLE, ""),
    (
        "NoLimitOverrideWrites",
        "Deny",
        ("dynamodb:DeleteItem", "dynamodb:PutItem", "dynamodb:UpdateItem"),
        TABLE,
        "{'ForAnyValue:StringEquals': {'dynamodb:LeadingKeys': ['budget#limits']}}",
    ),
}


def logical_name(logical_id: str) -> str:
    """A logical id without CDK's hash suffix (``StateTable962DE04C`` -> ``StateTable``)."""
    return re.sub(r"[0-9A-F]{8}$", "", logical_id)


def render(value: Any) -> str:
    """A template expression as text: ``StorageData.Arn/cache/*``, ``s3://StorageData/costs/``."""
    if isinstance(value, str):
        return value
    if "Ref" in value:
        return str(value["Ref"]) if value["Ref"].startswith("AWS::") else logical_name(value["Ref"])
    if "Fn::GetAtt" in value:
        logical_id, attribute = value["Fn::GetAtt"]
        return f"{logical_name(logical_id)}.{attribute}"
    separator, parts = value["Fn::Join"]
    return str(separator).join(render(p) for p in parts)


def function(synth: Synth, name: str = "Worker") -> tuple[str, dict[str, Any]]:
    """(logical id, resource) of the one function of construct ``name`` (``Worker``, or
    ``BatchRoute``: the gatherer)."""
    (found,) = (
        (lid, r)
        for lid, r in synth.resources("AWS::Lambda::Function").items()
        if logical_name(lid) == f"{name}Function"
    )
    return found


def role_statements(synth: Synth, name: str = "Worker") -> list[dict[str, Any]]:
    """Every statement of the IAM policies attached to construct ``name``'s role."""
    (role_id,) = (
        lid for lid in synth.resources("AWS::IAM::Role") if logical_name(lid) == f"{name}Role"
    )
    return [
        statement
        for policy in synth.resources("AWS::IAM::Policy").values()
        if {"Ref": role_id} in policy["Properties"]["Roles"]
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]
    ]
