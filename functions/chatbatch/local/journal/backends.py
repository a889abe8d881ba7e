"""moto's own S3 and DynamoDB backends, for what the local state reads and writes without
going through the API: a replay puts items and objects back as they were (no condition
or expression to evaluate; through the API each would cost ten times as much, botocore
on one side and moto's request parsing on the other), and a compaction reads the items
while it holds the lock that moto's request handling takes. moto's server runs in this
process, so these are its backends for ``local up`` too."""

from __future__ import annotations

from moto.core.models import DEFAULT_ACCOUNT_ID
from moto.dynamodb.models import DynamoDBBackend, dynamodb_backends
from moto.s3.models import S3Backend, s3_backends

from chatbatch.local.aws import REGION

PARTITION = "aws"


def s3() -> S3Backend:
    return s3_backends[DEFAULT_ACCOUNT_ID][PARTITION]


def dynamodb() -> DynamoDBBackend:
    return dynamodb_backends[DEFAULT_ACCOUNT_ID][REGION]
