"""The one DynamoDB table for shared state: limiter, budget, batch counters, idempotency."""

from __future__ import annotations

from aws_cdk import RemovalPolicy
from aws_cdk import aws_dynamodb as dynamodb
from constructs import Construct

from chatbatch.core.resources import TABLE_PK, TABLE_SK, TABLE_TTL


class StateTable(Construct):
    """Single-table design keyed by string ``pk``/``sk``; ``expires_at`` is the TTL."""

    def __init__(self, scope: Construct, construct_id: str) -> None:
        super().__init__(scope, construct_id)
        self.table = dynamodb.Table(
            self,
            "Table",
            partition_key=dynamodb.Attribute(name=TABLE_PK, type=dynamodb.AttributeType.STRING),
            sort_key=dynamodb.Attribute(name=TABLE_SK, type=dynamodb.AttributeType.STRING),
            time_to_live_attribute=TABLE_TTL,
            # Spiky batch traffic, idle in between: pay per request, no capacity planning.
            billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
            point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                point_in_time_recovery_enabled=True
            ),
            # KMS key aws/dynamodb: encryption at rest, with key use visible in CloudTrail.
            encryption=dynamodb.TableEncryption.AWS_MANAGED,
            # The spend ledger and idempotency records outlive the stack: deleting them
            # could let a redeploy pay for finished jobs again.
            removal_policy=RemovalPolicy.RETAIN,
        )
