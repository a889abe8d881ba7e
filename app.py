#!/usr/bin/env python3
"""CDK entry point: `python app.py` (or `npx aws-cdk@2 synth`) synthesizes into cdk.out.

No Docker: the worker's asset is bundled locally (infra/bundling.py). cdk-nag runs on
every synth; an unacknowledged finding fails it. Options via context:
`-c config=path/to/chatbatch.toml`, `-c alarm_email=ops@example.com`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path[:0] = [str(ROOT), str(ROOT / "functions")]  # runs without `pip install -e .` too

from infra.app import build_app  # noqa: E402


def main() -> None:
    # The CDK CLI says where to write (CDK_OUTDIR); run by hand, write to ./cdk.out.
    outdir = None if os.environ.get("CDK_OUTDIR") else str(ROOT / "cdk.out")
    app, _ = build_app(outdir=outdir)
    app.synth()


if __name__ == "__main__":
    main()
