"""The Athena table over the cost records, as synthesized: its columns are the cost record's
fields (read from the pydantic model, so a new field cannot be left out), its partition
projection finds the keys the worker writes, and the workgroup and the query policy are
what ``chatbatch costs --athena`` needs and no more."""

from __future__ import annotations

from typing import Any

from synth_support import Synth, render

from chatbatch.core.config import Config
from chatbatch.core.output_lines import CostRecord
from chatbatch.core.resources import (
    COSTS_QUERY_POLICY_ARN,
    COSTS_TABLE,
    COSTS_WORKGROUP,
    costs_database,
    costs_workgroup,
)
from chatbatch.state.store import cost_key

BUCKET = "StorageData"  # the data bucket's logical id, hash left off (``render``)


def _one(synth: Synth, type_: str) -> dict[str, Any]:
    (resource,) = synth.resources(type_).values()
    props: dict[str, Any] = resource["Properties"]
    return props


def test_columns_are_the_cost_record_fields_and_dt_the_partition(synth: Synth) -> None:
    table = _one(synth, "AWS::Glue::Table")["TableInput"]
    columns = {c["Name"]: c["Type"] for c in table["StorageDescriptor"]["Columns"]}
    assert table["PartitionKeys"] == [{"Name": "dt", "Type": "string"}]
    assert set(columns) | {"dt"} == set(CostRecord.model_fields)
    assert "dt" not in columns, "a partition key cannot also be a column"
    # the types the JSON holds: exact money, integer tokens, flags, the metadata map
    assert columns["cost_usd"] == "decimal(38,9)"
    assert columns["cost_nanos"] == columns["prompt_tokens"] == "bigint"
    assert columns["cached"] == columns["usage_estimated"] == "boolean"
    assert columns["priority"] == columns["role"] == columns["attempt"] == "string"
    assert columns["metadata"] == "map<string,string>"
    assert table["StorageDescriptor"]["SerdeInfo"] == {
        "SerializationLibrary": "org.openx.data.jsonserde.JsonSerDe"
    }
    assert table["Name"] == COSTS_TABLE and table["TableType"] == "EXTERNAL_TABLE"


def test_partition_projection_finds_the_keys_the_worker_writes(synth: Synth) -> None:
    table = _one(synth, "AWS::Glue::Table")["TableInput"]
    params = table["Parameters"]
    assert params["projection.enabled"] == "true"
    assert params["projection.dt.type"] == "date"
    assert params["projection.dt.format"] == "yyyy-MM-dd"
    assert params["projection.dt.range"].endswith(",NOW")
    assert (params["projection.dt.interval"], params["projection.dt.interval.unit"]) == (
        "1",
        "DAYS",
    )
    template = render(params["storage.location.template"])
    location = render(table["StorageDescriptor"]["Location"])
    assert location == f"s3://{BUCKET}/costs/"
    day = "2026-03-07"  # a day as the worker names it: core.days.utc_day()
    prefix = template.replace("${dt}", day)
    assert prefix.startswith(location) and prefix.endswith("/")
    for key in (cost_key(day, "b-1", "job-1"), cost_key(day, "b-1", "job-1", attempt="r1")):
        assert f"s3://{BUCKET}/{key}".startswith(prefix), key
    assert not f"s3://{BUCKET}/{cost_key('2026-03-08', 'b-1', 'job-1')}".startswith(prefix)


def test_database_and_workgroup_are_named_from_the_stack(synth: Synth, config: Config) -> None:
    database = _one(synth, "AWS::Glue::Database")
    assert database["DatabaseInput"]["Name"] == costs_database(config.stack_name)
    assert _one(synth, "AWS::Glue::Table")["DatabaseName"] == costs_database(config.stack_name)
    workgroup = _one(synth, "AWS::Athena::WorkGroup")
    assert workgroup["Name"] == costs_workgroup(config.stack_name)
    settings = workgroup["WorkGroupConfiguration"]
    assert settings["EnforceWorkGroupConfiguration"] is True
    assert settings["BytesScannedCutoffPerQuery"] > 0
    results = settings["ResultConfiguration"]
    assert render(results["OutputLocation"]) == f"s3://{BUCKET}/athena-results/"
    assert results["EncryptionConfiguration"] == {"EncryptionOption": "SSE_S3"}
    outputs = synth.template["Outputs"]
    assert outputs[COSTS_WORKGROUP]["Value"] == costs_workgroup(config.stack_name)
    (bucket,) = (
        r["Properties"]
        for lid, r in synth.resources("AWS::S3::Bucket").items()
        if lid.startswith(BUCKET)
    )
    rules = {r["Id"]: r for r in bucket["LifecycleConfiguration"]["Rules"]}
    assert rules["expire-athena-results"]["Prefix"] == "athena-results/"


def test_query_policy_is_the_workgroup_the_table_and_two_prefixes(
    synth: Synth, config: Config
) -> None:
    (policy_id,) = synth.resources("AWS::IAM::ManagedPolicy")
    policy = synth.resources("AWS::IAM::ManagedPolicy")[policy_id]["Properties"]
    granted = {
        (
            tuple(sorted(_listed(s["Action"]))),
            tuple(sorted(render(r) for r in _listed(s["Resource"]))),
        )
        for s in policy["PolicyDocument"]["Statement"]
    }
    assert all(s["Effect"] == "Allow" for s in policy["PolicyDocument"]["Statement"])
    arn = "arn:AWS::Partition:{}:AWS::Region:AWS::AccountId:{}"
    database = costs_database(config.stack_name)
    assert granted == {
        (
            (
                "athena:GetQueryExecution",
                "athena:GetQueryResults",
                "athena:StartQueryExecution",
                "athena:StopQueryExecution",
            ),
            (arn.format("athena", f"workgroup/{costs_workgroup(config.stack_name)}"),),
        ),
        (
            ("glue:GetDatabase", "glue:GetPartition", "glue:GetPartitions", "glue:GetTable"),
            tuple(
                sorted(
                    arn.format("glue", r)
                    for r in ("catalog", f"database/{database}", f"table/{database}/{COSTS_TABLE}")
                )
            ),
        ),
        (("s3:GetBucketLocation", "s3:ListBucket"), (f"{BUCKET}.Arn",)),
        (("s3:GetObject",), (f"{BUCKET}.Arn/costs/*",)),
        (
            ("s3:AbortMultipartUpload", "s3:GetObject", "s3:PutObject"),
            (f"{BUCKET}.Arn/athena-results/*",),
        ),
    }
    assert synth.template["Outputs"][COSTS_QUERY_POLICY_ARN]["Value"] == {"Ref": policy_id}


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]
