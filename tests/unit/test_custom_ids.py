"""custom_id: any string of 1-512 characters, unique in its batch; every key built from it
(S3 objects, DynamoDB items, budget reservations) uses its ``id_key``."""

from __future__ import annotations

import hashlib
import json

import boto3
import pytest

from chatbatch.core.config import Config
from chatbatch.core.job_lines import parse_lines
from chatbatch.core.jobs import Job, JobError, claim_key, id_key, job_ref
from chatbatch.core.output_lines import OutputLine
from chatbatch.state.batches import Batches, JobState, job_key
from chatbatch.state.store import (
    Store,
    cost_key,
    error_key,
    history_key,
    request_key,
    result_key,
)
from tests.unit.conftest import Dynamo

ODD_IDS = ["request 1", "task/1", "ünïcødé 🚀", "a#b", "../../etc", "x" * 512, " "]


def test_any_string_of_1_to_512_characters_is_a_custom_id(config: Config):
    lines = [json.dumps({"custom_id": c, "prompt": "hi"}) for c in ODD_IDS]
    parsed = [job for _, job in parse_lines(lines, config)]
    assert [job.custom_id for job in parsed if isinstance(job, Job)] == ODD_IDS


def test_odd_custom_ids_are_still_unique_in_a_file(config: Config):
    lines = [json.dumps({"custom_id": "task/1", "prompt": p}) for p in ("a", "b")]
    second = list(parse_lines(lines, config))[1][1]
    assert isinstance(second, JobError) and "duplicate custom_id 'task/1'" in second.message


def test_a_plain_custom_id_is_its_own_key_any_other_its_hash():
    assert id_key("req-1") == "req-1"
    assert id_key("a.b:c=d+e@f,g_h") == "a.b:c=d+e@f,g_h"
    for custom_id in ODD_IDS:
        key = id_key(custom_id)
        assert key == "~" + hashlib.sha256(custom_id.encode()).hexdigest()
        assert "/" not in key and "#" not in key and len(key) == 65
    assert len({id_key(c) for c in ODD_IDS}) == len(ODD_IDS)
    # an id that looks like a hash key is plain, so it never takes another id's key
    assert id_key(id_key("task/1")) != id_key("task/1")


@pytest.mark.parametrize("custom_id", ODD_IDS)
def test_every_key_built_from_a_custom_id_uses_its_id_key(custom_id: str):
    hashed = id_key(custom_id)
    assert result_key("b", custom_id) == f"results/b/{hashed}.json"
    assert error_key("b", custom_id) == f"errors/b/{hashed}.json"
    assert request_key("b", custom_id) == f"requests/b/{hashed}.json"
    assert history_key("b", custom_id, 2) == f"history/b/{hashed}/2.json"
    assert cost_key("2026-12-02", "b", custom_id) == f"costs/dt=2026-12-02/b/{hashed}.json"
    assert cost_key("d", "b", custom_id, "x") == f"costs/dt=d/b/{hashed}/unread-x.json"
    assert claim_key("b", custom_id) == f"claims/b/{hashed}.json"
    assert job_key("b", custom_id)["pk"] == {"S": f"job#b#{hashed}"}
    assert job_ref("b", custom_id) == f"b#{hashed}"


def test_a_result_of_an_odd_custom_id_is_stored_and_read_back_with_the_original(aws: None):
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="data")
    store = Store(s3, "data")
    for custom_id in ("task/1", "request 1"):
        line = OutputLine.failure("b", custom_id, "invalid_job", "x")
        store.put_error("b", line)
        read = store.get_error("b", custom_id)
        assert read is not None and read.custom_id == custom_id
    listed = [o["Key"] for o in s3.list_objects_v2(Bucket="data")["Contents"]]
    assert sorted(listed) == sorted(f"errors/b/{id_key(c)}.json" for c in ("task/1", "request 1"))


def test_a_jobs_state_item_of_an_odd_custom_id(dynamo: Dynamo):
    batches = Batches(dynamo.client, dynamo.table)
    custom_id = "task/1 " + "é" * 505
    assert batches.transition("b", custom_id, prev=JobState.new, new=JobState.deferred)
    (record,) = batches.jobs("b", [custom_id])
    assert record.custom_id == custom_id and record.state is JobState.deferred
