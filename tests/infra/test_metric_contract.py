"""The worker's EMF metrics follow the metric contract (core/metrics.py) the stack reads."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from types import SimpleNamespace

import pytest

from chatbatch.core.metrics import METRICS, Metric
from chatbatch.worker.emf import emit_metrics


def test_one_blob_per_model_and_priority_and_service_totals(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.delenv("POWERTOOLS_METRICS_DISABLED", raising=False)
    monkeypatch.delenv("POWERTOOLS_DEV", raising=False)
    tallies = Counter(
        {
            (Metric.JOBS_SUCCEEDED, "deepseek-chat", "high"): 3,
            (Metric.COST_USD, "deepseek-chat", "high"): 1_500_000,  # tallied in nanodollars
            (Metric.JOBS_FAILED, "gpt-4.1", "low"): 1,
            (Metric.PROVIDER_RATE_LIMITED, "gpt-4.1", "low"): 2,
        }
    )
    latencies = defaultdict(list, {("deepseek-chat", "high"): [120, 340, 95]})
    emit_metrics(SimpleNamespace(tallies=tallies, latencies=latencies))  # type: ignore[arg-type]
    blobs = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line]
    by_dims = {(b.get("model"), b.get("priority")): b for b in blobs}
    high = by_dims[("deepseek-chat", "high")]
    assert high["JobsSucceeded"] == [3] and high["CostUSD"] == [0.0015]  # EMF value lists
    assert high["Latency"] == [120, 340, 95]
    assert by_dims[("gpt-4.1", "low")]["ProviderRateLimited"] == [2]
    service = by_dims[(None, None)]
    assert service["service"] == "chatbatch"
    totals = (service["JobsSucceeded"], service["JobsFailed"], service["CostUSD"])
    assert totals == ([3], [1], [0.0015])
    emitted = {
        m["Name"] for b in blobs for d in b["_aws"]["CloudWatchMetrics"] for m in d["Metrics"]
    }
    assert emitted <= set(METRICS), emitted - set(METRICS)
