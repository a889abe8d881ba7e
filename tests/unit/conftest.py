"""Shared fixtures for unit tests against moto: the single DynamoDB table."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import boto3
import pytest

from chatbatch.local.aws import create_table, moto_in_process

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

TABLE = "chatbatch-test"
REGION = "us-east-1"


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """moto for every AWS call, one request at a time (``chatbatch.local.moto_fixes``).

    DynamoDB applies each request atomically; moto does not when threads race, so the
    local runtime's fixes serialise moto's request handling, exactly what a request is on
    AWS, and roll failed transactions back item by item.
    """
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with moto_in_process():
        yield


@dataclass(frozen=True)
class Dynamo:
    client: DynamoDBClient
    table: str


@pytest.fixture
def dynamo(aws: None) -> Dynamo:
    """A DynamoDB client on moto and the chatbatch table, created."""
    client = boto3.client("dynamodb", region_name=REGION)
    create_table(client, TABLE)
    return Dynamo(client, TABLE)
