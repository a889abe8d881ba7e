"""The local stand-in for the stack's resources."""

from __future__ import annotations

import json

import boto3

from chatbatch.core.config import Config
from chatbatch.local.aws import create_resources, moto_in_process


def test_local_queues_never_redeliver_a_message_while_its_invocation_may_run(config: Config):
    """Visibility = the function timeout and a minute: a job waiting in its invocation
    for rate-limit capacity (up to the timeout) is not delivered twice meanwhile."""
    with moto_in_process():
        resources = create_resources(config)
        sqs = boto3.client("sqs")
        for url in resources.queues.values():
            attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
            assert int(attrs["VisibilityTimeout"]) == config.worker.timeout_s + 60
            redrive = json.loads(attrs["RedrivePolicy"])
            assert redrive["maxReceiveCount"] == config.worker.max_receive_count
        short = create_resources(config.model_copy(update={"stack_name": "other"}), 3)
        url = short.queues[next(iter(short.queues))]
        attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["VisibilityTimeout"])
        assert attrs["Attributes"]["VisibilityTimeout"] == "3"  # tests of crashes ask for less
