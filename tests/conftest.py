from __future__ import annotations

from pathlib import Path

import pytest

from chatbatch.core.config import Config, load_config

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def config() -> Config:
    """The shipped chatbatch.toml: tests run against the defaults users get."""
    return load_config(ROOT / "chatbatch.toml")
