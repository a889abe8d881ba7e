"""cfn-lint on the synthesized template: no errors (warnings are printed)."""

from __future__ import annotations

import json

from cfnlint.api import ManualArgs, lint  # type: ignore[import-untyped]
from synth_support import Synth


def test_cfn_lint_reports_no_errors(synth: Synth) -> None:
    matches = lint(
        json.dumps(synth.template),
        config=ManualArgs(regions=["us-east-1", "eu-west-1", "ap-southeast-1"]),
    )
    for match in matches:
        print(match)
    errors = [m for m in matches if m.rule.id.startswith("E")]
    assert errors == []
