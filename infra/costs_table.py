"""Athena over the cost records: a Glue database and table, an Athena workgroup, and the
managed policy ``chatbatch costs --athena`` needs.

The table reads ``costs/dt=YYYY-MM-DD/<batch>/…`` (``chatbatch.state.store.flush_cost_key``:
an invocation's records of the batch, one a line; ``cost_key``: an unread call's, a job's
from before flush objects) as JSON lines, one ``CostRecord`` each. Its columns are the
record's fields, derived from the pydantic model (a new field is a new column), except
``dt``, which is the partition key; partition projection on ``dt`` (a date, one partition
a day) spares any crawler or ``MSCK REPAIR``. The workgroup enforces its own settings: results under
``athena-results/`` of the same bucket (SSE-S3, expired after a week) and a cap on the
bytes one query may scan.
"""

from __future__ import annotations

import datetime as dt
import types
from decimal import Decimal
from enum import Enum
from typing import Any, Literal, Union, get_args, get_origin

from aws_cdk import Acknowledgment, Aws, CfnElement, Duration, Stack, Validations
from aws_cdk import aws_athena as athena
from aws_cdk import aws_glue as glue
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3 as s3
from constructs import Construct
from pydantic import BaseModel

from chatbatch.core.output_lines import CostRecord
from chatbatch.core.resources import (
    ATHENA_RESULTS_PREFIX,
    COSTS_TABLE,
    costs_database,
    costs_workgroup,
)

COSTS_PREFIX = "costs/"
PARTITION = "dt"  # the record's UTC day, also the key's ``dt=`` segment
PROJECTION_START = "2024-01-01"
RESULTS_EXPIRY = Duration.days(7)
SCAN_CUTOFF_BYTES = 100 * 1024**3  # 100 GB (~$0.50) a query at most
JSON_SERDE = "org.openx.data.jsonserde.JsonSerDe"
QUERY_ACTIONS = (
    "athena:StartQueryExecution",
    "athena:GetQueryExecution",
    "athena:GetQueryResults",
    "athena:StopQueryExecution",
)
CATALOG_ACTIONS = ("glue:GetDatabase", "glue:GetTable", "glue:GetPartition", "glue:GetPartitions")


def glue_type(annotation: Any) -> str:
    """A pydantic field's type as a Hive/Glue column type (``X | None`` is ``X``)."""
    if get_origin(annotation) in (Union, types.UnionType):
        (inner,) = [arg for arg in get_args(annotation) if arg is not type(None)]
        return glue_type(inner)
    if get_origin(annotation) is dict:
        key, value = get_args(annotation)
        return f"map<{glue_type(key)},{glue_type(value)}>"
    simple: dict[type, str] = {bool: "boolean", int: "bigint", Decimal: "decimal(38,9)"}
    simple |= {str: "string", dt.date: "date"}
    for kind, name in simple.items():  # bool before int: a bool is an int
        if isinstance(annotation, type) and issubclass(annotation, kind):
            return name
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return "string"
    if get_origin(annotation) is Literal and all(isinstance(a, str) for a in get_args(annotation)):
        return "string"
    raise TypeError(f"no Glue column type for {annotation!r}: add it to glue_type")


def glue_columns(model: type[BaseModel], partitions: tuple[str, ...] = ()) -> list[dict[str, str]]:
    """The model's fields as Glue columns, in order, leaving out the partition keys."""
    return [
        {"name": name, "type": glue_type(field.annotation)}
        for name, field in model.model_fields.items()
        if name not in partitions
    ]


def projection_template(bucket: str) -> str:
    """Where the records of day ``${dt}`` are (the layout ``worker/finals.py`` and
    ``Store.put_cost`` write)."""
    return f"s3://{bucket}/{COSTS_PREFIX}{PARTITION}=${{{PARTITION}}}/"


class CostsTable(Construct):
    """The Glue table of the cost records, the Athena workgroup, and ``query_policy``: what
    a user of ``chatbatch costs --athena`` needs, and nothing else (attach it to them)."""

    def __init__(self, scope: Construct, construct_id: str, *, bucket: s3.Bucket) -> None:
        super().__init__(scope, construct_id)
        stack = Stack.of(self)
        self.database_name = costs_database(stack.stack_name)
        self.table_name = COSTS_TABLE
        self.workgroup_name = costs_workgroup(stack.stack_name)
        self.database = glue.CfnDatabase(
            self,
            "Database",
            catalog_id=Aws.ACCOUNT_ID,
            database_input=glue.CfnDatabase.DatabaseInputProperty(
                name=self.database_name, description="chatbatch cost records"
            ),
        )
        self.table = glue.CfnTable(
            self,
            "Table",
            catalog_id=Aws.ACCOUNT_ID,
            database_name=self.database_name,
            table_input=self._table_input(bucket),
        )
        self.table.add_dependency(self.database)
        bucket.add_lifecycle_rule(
            id="expire-athena-results", prefix=ATHENA_RESULTS_PREFIX, expiration=RESULTS_EXPIRY
        )
        self.workgroup = athena.CfnWorkGroup(
            self,
            "WorkGroup",
            name=self.workgroup_name,
            description="chatbatch costs --athena: queries over the cost records",
            recursive_delete_option=True,
            work_group_configuration=athena.CfnWorkGroup.WorkGroupConfigurationProperty(
                enforce_work_group_configuration=True,
                publish_cloud_watch_metrics_enabled=True,
                bytes_scanned_cutoff_per_query=SCAN_CUTOFF_BYTES,
                result_configuration=athena.CfnWorkGroup.ResultConfigurationProperty(
                    output_location=bucket.s3_url_for_object(ATHENA_RESULTS_PREFIX),
                    encryption_configuration=athena.CfnWorkGroup.EncryptionConfigurationProperty(
                        encryption_option="SSE_S3"
                    ),
                ),
            ),
        )
        self.query_policy = self._query_policy(bucket)

    def _table_input(self, bucket: s3.Bucket) -> glue.CfnTable.TableInputProperty:
        return glue.CfnTable.TableInputProperty(
            name=self.table_name,
            description="one row per cost record (a line of costs/dt=YYYY-MM-DD/<batch>/*.jsonl)",
            table_type="EXTERNAL_TABLE",
            partition_keys=[glue.CfnTable.ColumnProperty(name=PARTITION, type="string")],
            parameters={
                "classification": "json",
                "projection.enabled": "true",
                f"projection.{PARTITION}.type": "date",
                f"projection.{PARTITION}.format": "yyyy-MM-dd",
                f"projection.{PARTITION}.range": f"{PROJECTION_START},NOW",
                f"projection.{PARTITION}.interval": "1",
                f"projection.{PARTITION}.interval.unit": "DAYS",
                "storage.location.template": projection_template(bucket.bucket_name),
            },
            storage_descriptor=glue.CfnTable.StorageDescriptorProperty(
                location=bucket.s3_url_for_object(COSTS_PREFIX),
                input_format="org.apache.hadoop.mapred.TextInputFormat",
                output_format="org.apache.hadoop.hive.ql.io.HiveIgnoreKeyTextOutputFormat",
                serde_info=glue.CfnTable.SerdeInfoProperty(serialization_library=JSON_SERDE),
                columns=[
                    glue.CfnTable.ColumnProperty(name=c["name"], type=c["type"])
                    for c in glue_columns(CostRecord, (PARTITION,))
                ],
            ),
        )

    def _query_policy(self, bucket: s3.Bucket) -> iam.ManagedPolicy:
        stack = Stack.of(self)
        arn = stack.format_arn
        catalog = [
            arn(service="glue", resource="catalog"),
            arn(service="glue", resource="database", resource_name=self.database_name),
            arn(
                service="glue",
                resource="table",
                resource_name=f"{self.database_name}/{self.table_name}",
            ),
        ]
        workgroup = arn(service="athena", resource="workgroup", resource_name=self.workgroup_name)
        results = ATHENA_RESULTS_PREFIX
        policy = iam.ManagedPolicy(
            self,
            "QueryPolicy",
            description="chatbatch costs --athena: query the cost records through the workgroup",
            statements=[
                iam.PolicyStatement(actions=list(QUERY_ACTIONS), resources=[workgroup]),
                iam.PolicyStatement(actions=list(CATALOG_ACTIONS), resources=catalog),
                iam.PolicyStatement(
                    actions=["s3:GetBucketLocation", "s3:ListBucket"],
                    resources=[bucket.bucket_arn],
                ),
                iam.PolicyStatement(
                    actions=["s3:GetObject"], resources=[bucket.arn_for_objects(f"{COSTS_PREFIX}*")]
                ),
                iam.PolicyStatement(
                    actions=["s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload"],
                    resources=[bucket.arn_for_objects(f"{results}*")],
                ),
            ],
        )
        bucket_id = stack.get_logical_id(_cfn(bucket))
        Validations.of(policy).acknowledge(
            Acknowledgment(
                id=f"AwsSolutions-IAM5[Resource::<{bucket_id}.Arn>/{COSTS_PREFIX}*]",
                reason="Athena reads every cost record of the days a query selects; read only, "
                "under costs/ of this one bucket.",
            ),
            Acknowledgment(
                id=f"AwsSolutions-IAM5[Resource::<{bucket_id}.Arn>/{results}*]",
                reason="Athena writes each query's result under a new key in the workgroup's "
                f"result location ({results}), which the caller then reads.",
            ),
        )
        return policy


def _cfn(construct: Construct) -> CfnElement:
    child = construct.node.default_child
    assert isinstance(child, CfnElement)
    return child
