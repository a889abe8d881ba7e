"""README's commands work as written: every example file it sends validates cleanly, and
it names one Node version (the one the CDK CLI is run with)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from chatbatch.cli.app import app
from chatbatch.client.submit import plan_file
from chatbatch.core.config import Config, Priority

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
NODE_VERSION = "20"
# a `chatbatch submit examples/...` command, up to the end of its line or a comment
SUBMIT = re.compile(r"chatbatch submit (examples/[^\s`]+)([^\n`#]*)")


def sent_examples() -> list[tuple[str, list[str]]]:
    """Each README command that sends an example file (a ``--dry-run`` only shows it)."""
    found = [(m[1], shlex.split(m[2])) for m in SUBMIT.finditer(README)]
    return [(path, args) for path, args in found if "--dry-run" not in args]


def test_the_deploy_walkthrough_sends_an_example_file() -> None:
    deploy = README[README.index("\n## Deploy") : README.index("\n## Submitting and collecting")]
    assert SUBMIT.search(deploy), "the walkthrough submits no example file"
    assert sent_examples()


@pytest.mark.parametrize(("path", "args"), sent_examples())
def test_every_example_file_readme_sends_validates_cleanly(
    path: str, args: list[str], config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = plan_file(ROOT / path, config, "readme", Priority.normal)
    assert (plan.invalid, plan.errors) == (0, []), f"{path}: {plan.errors}"
    assert plan.valid > 0
    # the command itself, as README writes it, with --dry-run: exit 0, nothing sent
    monkeypatch.chdir(ROOT)
    result = CliRunner().invoke(app, ["submit", path, *args, "--dry-run"])
    assert result.exit_code == 0, result.stderr


def test_readme_makefile_and_docs_name_one_node_version() -> None:
    texts = {p: p.read_text() for p in [ROOT / "README.md", ROOT / "Makefile"]}
    texts |= {p: p.read_text() for p in (ROOT / "docs").glob("*.md")}
    named = {
        (path.name, version)
        for path, text in texts.items()
        for version in re.findall(r"\bNode(?:\.js)? (\d+)", text)
    }
    assert named, "README names no Node version"
    assert {version for _, version in named} == {NODE_VERSION}, sorted(named)
