"""Reading many S3 objects from the client: listing a prefix, fetching on a thread pool."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

T = TypeVar("T")
R = TypeVar("R")


def in_order(items: Iterable[T], fetch: Callable[[T], R], threads: int) -> Iterator[R]:
    """``fetch`` of every item on a bounded thread pool, yielded in the items' order.

    At most ``4 * threads`` fetches are in flight, so a long input is streamed, not held.
    """
    with ThreadPoolExecutor(threads) as pool:
        window: deque[Future[R]] = deque()
        for item in items:
            window.append(pool.submit(fetch, item))
            if len(window) >= 4 * threads:
                yield window.popleft().result()
        for future in window:
            yield future.result()


def list_keys(s3: S3Client, bucket: str, prefix: str) -> Iterator[str]:
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            yield obj["Key"]
