"""Shared state in DynamoDB and S3: batches, the budget ledger, the rate limiter, the store."""
