"""Integration tests share their scenarios with the benchmarks (``bench/``): the fault
suite runs them small here and large in ``make bench``. Put the repository root on the
import path so ``bench`` imports under any pytest entry point."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
