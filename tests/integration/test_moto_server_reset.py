"""Two server-mode local runtimes, one after the other, in one process (as two test files
in one pytest worker): moto's server serves the process's own backends, so the second
must start from nothing, or the first one's queues (with their own attributes) refuse its
CreateQueue (``QueueAlreadyExists``)."""

from __future__ import annotations

import boto3

from chatbatch.local.options import LocalOptions
from chatbatch.local.runtime import LocalRuntime


def visibility(rt: LocalRuntime) -> set[str]:
    sqs = boto3.client("sqs")
    return {
        sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["VisibilityTimeout"])["Attributes"][
            "VisibilityTimeout"
        ]
        for url in rt.resources.queues.values()
    }


def test_a_second_moto_server_in_one_process_starts_from_nothing() -> None:
    with LocalRuntime(LocalOptions(server=True, visibility_timeout_s=5)) as first:
        assert visibility(first) == {"5"}
        boto3.client("s3").put_object(Bucket=first.resources.bucket, Key="left", Body=b"x")
    with LocalRuntime(LocalOptions(server=True, visibility_timeout_s=7)) as second:
        assert visibility(second) == {"7"}
        listed = boto3.client("s3").list_objects_v2(Bucket=second.resources.bucket)
        assert "Contents" not in listed, "nothing of the first runtime is left"
