"""Synthesize the real app once per session (jsii is slow); tests read the result."""

from __future__ import annotations

import pytest
from synth_support import Synth, synthesize


@pytest.fixture(scope="session")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Synth:
    return synthesize(tmp_path_factory.mktemp("cdk.out"))
