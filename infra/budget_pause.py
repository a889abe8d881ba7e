"""The budget pause's deployed parts: the worker may switch its own event source mappings
off and on, and an hourly schedule lets a paused pipeline resume when the UTC day resets.

- IAM: ``lambda:UpdateEventSourceMapping`` on this account's mappings, only those whose
  function is the worker (condition ``lambda:FunctionArn``), and
  ``lambda:ListEventSourceMappings``, which supports no resource-level permission.
- An EventBridge rule, every hour at :00 UTC, invokes the worker function with
  ``RESUME_EVENT``; the worker lifts the pause once its day is over (or the limit was
  raised) and turns the mappings back on (``chatbatch.worker.budget_pause``). A scheduled
  rule costs nothing, and the invocation reads one item: the cheapest resume that needs
  no second function, role or log group, since a disabled mapping never invokes the
  worker to check for itself. Hourly rather than only at midnight, so a missed or failed
  invocation, or mappings left off with no pause open, are healed within the hour.
"""

from __future__ import annotations

from aws_cdk import Acknowledgment, ArnFormat, Stack, Validations
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from constructs import Construct

from chatbatch.core.resources import RESUME_EVENT

RESUME_SCHEDULE = events.Schedule.cron(minute="0")  # every hour at :00 UTC


class BudgetPause(Construct):
    """The worker's right to switch its mappings, and the hourly resume schedule."""

    def __init__(
        self, scope: Construct, construct_id: str, *, function: lambda_.Function, role: iam.IRole
    ) -> None:
        super().__init__(scope, construct_id)
        stack = Stack.of(self)
        mappings = stack.format_arn(
            service="lambda",
            resource="event-source-mapping",
            resource_name="*",
            arn_format=ArnFormat.COLON_RESOURCE_NAME,
        )
        self.policy = iam.Policy(
            self,
            "SwitchMappings",
            statements=[
                iam.PolicyStatement(
                    sid="SwitchOwnMappings",
                    actions=["lambda:UpdateEventSourceMapping"],
                    resources=[mappings],
                    conditions={"ArnEquals": {"lambda:FunctionArn": function.function_arn}},
                ),
                iam.PolicyStatement(
                    sid="ListMappings",
                    actions=["lambda:ListEventSourceMappings"],
                    resources=["*"],
                ),
            ],
        )
        self.policy.attach_to_role(role)
        self.rule = events.Rule(
            self,
            "ResumeSchedule",
            description="chatbatch: resume the queues when a spent day's budget resets",
            schedule=RESUME_SCHEDULE,
            targets=[
                targets.LambdaFunction(
                    function, event=events.RuleTargetInput.from_object(RESUME_EVENT)
                )
            ],
        )
        Validations.of(self.policy).acknowledge(
            Acknowledgment(
                id="AwsSolutions-IAM5[Resource::*]",
                reason="lambda:ListEventSourceMappings supports no resource-level permission; "
                "it only lists, and the worker lists its own function's mappings.",
            ),
            Acknowledgment(
                id="AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:lambda:<AWS::Region>:"
                "<AWS::AccountId>:event-source-mapping:*]",
                reason="Mapping ids are made at deploy and cannot be named in the worker's own "
                "policy (they depend on the function); the lambda:FunctionArn condition "
                "limits UpdateEventSourceMapping to the worker's own mappings.",
            ),
        )
