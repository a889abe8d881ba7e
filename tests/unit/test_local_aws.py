"""The local stand-in for the stack's resources."""

from __future__ import annotations

import json

import boto3

from chatbatch.core.config import Config
from chatbatch.core.resources import (
    BATCH_DLQ_URL,
    BATCH_MAX_RECEIVES,
    BATCH_QUEUE_URL,
    ENV_BATCH_QUEUE,
    GATHER_TIMEOUT_S,
    Resources,
    batch_queue_name,
    resources_from_outputs,
    resources_to_outputs,
)
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


def test_the_batch_queue_outlasts_a_gather_run_and_redrives_like_the_others(config: Config):
    """The gatherer receives from it on a schedule: a run's messages stay hidden for the
    whole run (whatever the priority queues' visibility), and redrive to its own DLQ
    after ``BATCH_MAX_RECEIVES`` runs (only dead runs count: resources.py)."""
    with moto_in_process():
        resources = create_resources(config, 3)
        assert resources.batch_queue and resources.batch_dlq
        assert resources.batch_queue.endswith(f"/{batch_queue_name(config.stack_name)}")
        assert resources.batch_dlq.endswith(f"/{batch_queue_name(config.stack_name, dlq=True)}")
        sqs = boto3.client("sqs")
        attrs = sqs.get_queue_attributes(QueueUrl=resources.batch_queue, AttributeNames=["All"])
        assert int(attrs["Attributes"]["VisibilityTimeout"]) == GATHER_TIMEOUT_S + 60
        redrive = json.loads(attrs["Attributes"]["RedrivePolicy"])
        dlq_arn = sqs.get_queue_attributes(
            QueueUrl=resources.batch_dlq, AttributeNames=["QueueArn"]
        )["Attributes"]["QueueArn"]
        assert redrive == {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": BATCH_MAX_RECEIVES}
        # not a priority queue: a record from it is never taken for a priority's job
        assert resources.priority_of_queue(dlq_arn.replace("-dlq", "")) is None
        assert resources.priority_of_queue(resources.batch_queue) is None
        assert set(resources.queues.values()).isdisjoint({resources.batch_queue})


def test_the_batch_queue_travels_through_outputs_and_the_environment(config: Config):
    with moto_in_process():
        resources = create_resources(config)
    outputs = resources_to_outputs(resources)
    assert outputs[BATCH_QUEUE_URL] == resources.batch_queue
    assert outputs[BATCH_DLQ_URL] == resources.batch_dlq
    assert resources_from_outputs(outputs) == resources
    assert resources.env()[ENV_BATCH_QUEUE] == resources.batch_queue
    assert Resources.from_env(resources.env()).batch_queue == resources.batch_queue
    # a stack deployed before the batch route publishes neither: still a deployment
    older = {k: v for k, v in outputs.items() if k not in (BATCH_QUEUE_URL, BATCH_DLQ_URL)}
    assert resources_from_outputs(older).batch_queue is None
    assert resources_from_outputs(older).batch_dlq is None
    bare = resources.model_copy(update={"batch_queue": None})
    assert ENV_BATCH_QUEUE not in bare.env()
    assert Resources.from_env(bare.env()).batch_queue is None
