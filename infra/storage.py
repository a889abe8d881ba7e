"""The S3 bucket for results, errors, cost records, the response cache and claim checks."""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_s3 as s3
from constructs import Construct

from infra.queues import DLQ_RETENTION

# Key prefixes written by chatbatch.state.store that have a lifecycle of their own.
CACHE_PREFIX = "cache/"  # cached chat.completion bodies: a cache, not a record
CLAIMS_PREFIX = "claims/"  # jobs too large for an SQS message
CACHE_EXPIRY = Duration.days(30)
# A claim is read by the worker while its message is alive; no message outlives a DLQ's
# retention (age counts from the first enqueue), so a day past that nothing reads it.
CLAIMS_EXPIRY = Duration.days(DLQ_RETENTION.to_days() + 1)
NONCURRENT_EXPIRY = Duration.days(30)
ACCESS_LOG_EXPIRY = Duration.days(365)


class DataBucket(Construct):
    """Private, encrypted, TLS-only, versioned; access logged to a separate bucket."""

    def __init__(self, scope: Construct, construct_id: str) -> None:
        super().__init__(scope, construct_id)
        # The log bucket itself is not access-logged (that would only log the log delivery);
        # cdk-nag's S1 recognises it as a log target.
        self.access_logs = s3.Bucket(
            self,
            "AccessLogs",
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            # S3 server access logging can only deliver to SSE-S3 buckets.
            encryption=s3.BucketEncryption.S3_MANAGED,
            enforce_ssl=True,
            lifecycle_rules=[
                s3.LifecycleRule(id="expire-access-logs", expiration=ACCESS_LOG_EXPIRY),
                s3.LifecycleRule(
                    id="abort-incomplete-uploads",
                    abort_incomplete_multipart_upload_after=Duration.days(7),
                ),
            ],
            removal_policy=RemovalPolicy.RETAIN,
        )
        self.bucket = s3.Bucket(
            self,
            "Data",
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            encryption=s3.BucketEncryption.S3_MANAGED,
            enforce_ssl=True,
            versioned=True,
            server_access_logs_bucket=self.access_logs,
            server_access_logs_prefix="data/",
            lifecycle_rules=[
                s3.LifecycleRule(id="expire-cache", prefix=CACHE_PREFIX, expiration=CACHE_EXPIRY),
                s3.LifecycleRule(
                    id="expire-claims", prefix=CLAIMS_PREFIX, expiration=CLAIMS_EXPIRY
                ),
                s3.LifecycleRule(
                    id="expire-noncurrent-versions",
                    noncurrent_version_expiration=NONCURRENT_EXPIRY,
                    expired_object_delete_marker=True,
                ),
                s3.LifecycleRule(
                    id="abort-incomplete-uploads",
                    abort_incomplete_multipart_upload_after=Duration.days(7),
                ),
            ],
            # Results and cost records are what the user paid for: never deleted with the
            # stack. `cdk destroy` leaves the bucket; empty and delete it by hand.
            removal_policy=RemovalPolicy.RETAIN,
        )
