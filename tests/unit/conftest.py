"""Shared fixtures for unit tests against moto: the single DynamoDB table."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from moto import mock_aws
from moto.core.botocore_stubber import BotocoreStubber

from chatbatch.resources import TABLE_PK, TABLE_SK, TABLE_TTL

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

TABLE = "chatbatch-test"
REGION = "us-east-1"


def create_table(client: DynamoDBClient, name: str = TABLE) -> None:
    """The table as the stack creates it: string pk/sk, TTL on expires_at, on demand."""
    client.create_table(
        TableName=name,
        KeySchema=[
            {"AttributeName": TABLE_PK, "KeyType": "HASH"},
            {"AttributeName": TABLE_SK, "KeyType": "RANGE"},
        ],
        AttributeDefinitions=[
            {"AttributeName": TABLE_PK, "AttributeType": "S"},
            {"AttributeName": TABLE_SK, "AttributeType": "S"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    client.update_time_to_live(
        TableName=name, TimeToLiveSpecification={"Enabled": True, "AttributeName": TABLE_TTL}
    )


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """moto for every AWS call, one request at a time.

    DynamoDB applies each request atomically; moto does not when threads race (a failed
    transaction restores a copy of the whole table, undoing other threads' writes), so
    concurrent tests serialise moto's request handling, exactly what a request is on AWS.
    """
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION,
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    lock = threading.Lock()
    handle: Callable[..., Any] = BotocoreStubber.process_request

    def one_at_a_time(self: BotocoreStubber, request: Any) -> Any:
        with lock:
            return handle(self, request)

    monkeypatch.setattr(BotocoreStubber, "process_request", one_at_a_time)
    with mock_aws():
        yield


@dataclass(frozen=True)
class Dynamo:
    client: DynamoDBClient
    table: str


@pytest.fixture
def dynamo(aws: None) -> Dynamo:
    """A DynamoDB client on moto and the chatbatch table, created."""
    client = boto3.client("dynamodb", region_name=REGION)
    create_table(client)
    return Dynamo(client, TABLE)
