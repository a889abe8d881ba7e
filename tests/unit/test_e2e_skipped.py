"""The real-account test is collected by every run of the suite and skipped here, saying
what to set; `make e2e` is the one way in (it sets CHATBATCH_E2E=1)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_e2e_test_is_collected_and_skipped_with_what_to_set() -> None:
    env = {k: v for k, v in os.environ.items() if k != "CHATBATCH_E2E"}
    command = [sys.executable, "-m", "pytest", "tests/e2e", "-p", "no:xdist", "-rs", "-q"]
    run = subprocess.run(command, check=False, capture_output=True, text=True, cwd=ROOT, env=env)
    assert run.returncode == 0, run.stdout + run.stderr  # 5 would be: nothing collected
    assert "1 skipped" in run.stdout, run.stdout
    for needed in ("CHATBATCH_E2E=1", "make e2e", "AWS credentials", "DEEPSEEK_API_KEY"):
        assert needed in run.stdout, run.stdout


def test_make_e2e_runs_the_real_account_test_and_readme_says_so() -> None:
    makefile = (ROOT / "Makefile").read_text()
    target = re.search(r"(?m)^e2e:.*\n((?:\t.*\n)+)", makefile)
    assert target, "no e2e target in the Makefile"
    assert "CHATBATCH_E2E=1" in target[1] and "tests/e2e" in target[1]
    readme = (ROOT / "README.md").read_text()
    assert "make e2e" in readme and "tests/e2e" in readme
