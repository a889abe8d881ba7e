from __future__ import annotations

from pathlib import Path
from typing import Any

import botocore.session
import pytest

from chatbatch.core.config import Config, load_config
from chatbatch.local.sessions import LOADER

ROOT = Path(__file__).resolve().parent.parent


def _one_loader(session: Any) -> None:
    """Every botocore session of the test process reads the service models through one
    loader. A session's own loader parses each model's JSON again (0.1-0.3 s of CPU a
    service); the tests make thousands of sessions (each CLI call, each moto fixture), and
    that was a tenth of the suite's CPU. Loaded models are only read."""
    session._components.lazy_register_component("data_loader", lambda: LOADER)


botocore.session.Session._register_data_loader = _one_loader  # type: ignore[method-assign]


@pytest.fixture(scope="session")
def config() -> Config:
    """The shipped chatbatch.toml: tests run against the defaults users get."""
    return load_config(ROOT / "chatbatch.toml")
