"""A local run's files as its jobs finish: a stored error record that carries the
provider's HTTP answer goes to ``results.jsonl`` (OpenAI's output file), one without an
HTTP answer to ``errors.jsonl``."""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path

from anthropic.types.messages import MessageBatchIndividualResponse

from chatbatch.core.output_lines import OutputLine
from chatbatch.local.journal.appender import SyncedAppender
from chatbatch.local.live_outputs import FILES, LiveOutputs
from chatbatch.local.outputs import Figures

REFUSAL = {"error": {"message": "no", "type": "invalid_request_error", "param": "n", "code": None}}


def test_a_stored_refusal_is_appended_to_the_results_file(tmp_path: Path) -> None:
    refused = OutputLine.answered("b1", "r1", 400, REFUSAL, "req_1")
    failed = OutputLine.failure("b1", "r2", "dead_lettered", "HTTP 503 on every delivery")
    with ExitStack() as stack:
        files = {
            kind: stack.enter_context(SyncedAppender(tmp_path / name, truncate=True))
            for kind, name in FILES.items()
        }
        live = LiveOutputs(tmp_path, "bucket", "b1", files)
        live.s3_put("bucket", "errors/b1/r1.json", refused.to_line().encode())
        live.s3_put("bucket", "errors/b1/r2.json", failed.to_line().encode())

    def custom_ids(name: str) -> list[str]:
        text = (tmp_path / name).read_text()
        return [json.loads(line)["custom_id"] for line in text.splitlines()]

    assert custom_ids("results.jsonl") == ["r1"]
    assert custom_ids("errors.jsonl") == ["r2"]


def test_an_anthropic_batch_appends_every_line_to_its_one_results_file(tmp_path: Path) -> None:
    """As Anthropic's: no error file, every line a ``MessageBatchIndividualResponse``; the
    summary's figures read the file back."""
    refused = OutputLine.answered("b1", "r1", 400, REFUSAL, "req_1")
    failed = OutputLine.failure("b1", "r2", "dead_lettered", "HTTP 503 on every delivery")
    invalid = OutputLine.failure("b1", "line-3", "invalid_job", "line 3: params: bad")
    with SyncedAppender(tmp_path / "results.jsonl", truncate=True) as results:
        live = LiveOutputs(tmp_path, "bucket", "b1", {"results": results}, "anthropic")
        live.add_lines([invalid])
        live.s3_put("bucket", "errors/b1/r1.json", refused.to_line().encode())
        live.s3_put("bucket", "errors/b1/r2.json", failed.to_line().encode())
    assert not (tmp_path / "errors.jsonl").exists()
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    read = [MessageBatchIndividualResponse.model_validate_json(line) for line in lines]
    assert [(r.custom_id, r.result.type) for r in read] == [
        ("line-3", "errored"),
        ("r1", "errored"),
        ("r2", "errored"),
    ]
    assert Figures.of_file(tmp_path / "results.jsonl").latencies == []
