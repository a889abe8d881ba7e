"""X-Ray tracing through Powertools' Tracer, made safe for jobs that run concurrently.

Deployed, the function has active tracing: each invocation is a trace segment, the
handler a ``## handler`` subsegment (cold start annotated by Powertools), and under it
one ``job`` subsegment per record (annotated with batch, custom_id, priority, model and
outcome, so a job's trace can be searched for) with a ``provider`` subsegment for the
chat call (status, attempts, 429s). AWS calls are traced by Powertools' botocore patch.

Why the job and provider subsegments are built by hand (``Span``) instead of with
``capture_method`` or ``in_subsegment_async``: the X-Ray SDK keeps the open subsegments
on one stack per thread, and a batch's jobs are asyncio tasks on one thread; a stack
shared by interleaved tasks nests one job under another and closes them out of order
(aws-xray-sdk-python#164). A ``Span`` is attached to its parent explicitly and never goes
on that stack. For the same reason httpx is not patched (its async patch uses the
stack); the ``provider`` span stands in for it. The blocking AWS calls run in worker
threads, whose stacks are their own, so they hang off the invocation's segment.

No prompt text, answer or key goes into a trace: only ids, model names, counts, statuses.
Outside Lambda the Tracer disables itself; the local runtime keeps it off unless
``POWERTOOLS_TRACE_DISABLED=false`` (then traces go to ``AWS_XRAY_DAEMON_ADDRESS``).
"""

from __future__ import annotations

import traceback
from collections.abc import Iterator
from contextlib import contextmanager

from aws_lambda_powertools import Tracer
from aws_xray_sdk.core import xray_recorder
from aws_xray_sdk.core.models.subsegment import Subsegment

# botocore only: see above for httpx
tracer = Tracer(service="chatbatch", patch_modules=("botocore",))

Annotation = str | int | float | bool


class Span:
    """A subsegment attached explicitly to its parent, or nothing when not tracing."""

    def __init__(self, subsegment: Subsegment | None = None) -> None:
        self._sub = subsegment

    @classmethod
    def current(cls) -> Span:
        """The thread's open subsegment (the handler's), to hang job spans from."""
        if tracer.disabled:
            return cls()
        sub = xray_recorder.current_subsegment()  # what tracer.provider is
        return cls(sub if sub is not None and sub.sampled else None)

    @contextmanager
    def child(self, name: str, namespace: str = "local") -> Iterator[Span]:
        """A child span, open for the ``with`` block; an exception is recorded on it."""
        if self._sub is None:
            yield Span()
            return
        sub = Subsegment(name, namespace, self._sub.parent_segment)
        self._sub.add_subsegment(sub)
        try:
            yield Span(sub)
        except Exception as err:
            sub.add_exception(err, traceback.extract_tb(err.__traceback__, limit=10))
            raise
        finally:
            sub.close()

    def annotate(self, **values: Annotation | None) -> None:
        """Indexed, searchable values (ids, names, counts); ``None`` values are skipped."""
        if self._sub is not None:
            for key, value in values.items():
                if value is not None:
                    self._sub.put_annotation(key, value)

    def http(self, url: str, status: int | None) -> None:
        if self._sub is not None:
            self._sub.put_http_meta("url", url)
            self._sub.put_http_meta("method", "POST")
            if status is not None:
                self._sub.put_http_meta("status", status)
                self._sub.apply_status_code(status)
