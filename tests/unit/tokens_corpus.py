"""Texts of different kinds for measuring token estimates against real tokenizers."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CJK = [
    "请用三句话解释光合作用的过程，并说明它对地球生态系统的重要性。",
    "東京の天気は明日晴れるでしょうか？週末の予定を立てたいと思います。",
    "데이터 엔지니어는 매일 수백만 개의 프롬프트를 처리해야 합니다.",
    "深度求索的模型价格很低，适合大规模批处理任务。",
]
MIXED = [
    "Order #48213: 3 × USB-C cables @ $4.99 = $14.97 (tax 8.875%) — shipped 2026-11-28.",
    "😀🚀 Launch day! Ünïcödé test: naïve café résumé, Ελληνικά, русский текст.",
    "SELECT model, SUM(cost_usd) FROM costs WHERE dt >= '2026-11-01' GROUP BY 1;",
    "a" * 500,
    "0123456789" * 40,
    "lorem-ipsum_dolor.sit/amet?consectetur=adipiscing&elit=true" * 5,
]


def corpus() -> list[tuple[str, str]]:
    """(kind, text) pairs: prose, code, JSON, CJK, mixed symbols."""
    texts: list[tuple[str, str]] = []
    readme = (ROOT / "README.md").read_text()
    texts += [("prose", p) for p in readme.split("\n\n") if len(p) > 200][:40]
    modules = sorted((ROOT / "functions" / "chatbatch").rglob("*.py"))
    for path in [m for m in modules if m.name != "__init__.py"][:12]:
        source = path.read_text()
        texts += [("code", source[i : i + 1500]) for i in range(0, min(len(source), 6000), 1500)]
    for line in (ROOT / "examples" / "jobs.jsonl").read_text().splitlines()[:40]:
        texts.append(("json", line))
        try:
            prompt = json.loads(line).get("prompt")
        except json.JSONDecodeError:
            continue
        if prompt:
            texts.append(("prompt", prompt))
    texts += [("cjk", t) for t in CJK] + [("mixed", t) for t in MIXED]
    return texts
