"""What each install brings, and the version it reports (``chatbatch --version``).

A plain ``pip install chatbatch`` runs the CLI against a deployment, ``chatbatch[local]``
adds what ``local run`` and ``local up`` need (moto's server at the version its fixes were
written for), and the Lambda asset holds only the worker's.

The imports of every module are read from the source (``if TYPE_CHECKING:`` blocks left
out) and each third-party one must come from the install that runs it: its requirements
and theirs, as the installed distributions declare them.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import tomllib
from collections.abc import Iterable
from functools import cache
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from typer.testing import CliRunner

import chatbatch
from chatbatch.cli import app as cli_app
from chatbatch.cli.app import app
from chatbatch.local import extra, moto_fixes
from chatbatch.local.aws import moto_in_process
from chatbatch.local.extra import LOCAL_INSTALL, SUPPORTED_MOTO, UnsupportedMoto
from infra.bundling import runtime_requirements

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "functions" / "chatbatch"
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
WORKER = ("__init__.py", "core", "provider", "state", "translate", "worker")
# what the Lambda runtime provides: the asset leaves them out on purpose
LAMBDA_RUNTIME = {"boto3", "botocore", "s3transfer", "jmespath", "urllib3", "python-dateutil"}


def _norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


@cache
def _requires(dist: str, extras: frozenset[str]) -> frozenset[str]:
    """The distribution's own requirements (with the given extras) that apply here."""
    found = set()
    for line in metadata.requires(dist) or ():
        req = Requirement(line)
        marker = req.marker
        if marker is None or any(marker.evaluate({"extra": e}) for e in (*extras, "")):
            found.add(line)
    return frozenset(found)


def closure(requirements: Iterable[str]) -> set[str]:
    """The distributions these requirements install, theirs included (normalised names)."""
    seen: set[str] = set()
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        name = _norm(req.name)
        key = f"{name}[{','.join(sorted(req.extras))}]"
        if key in seen:
            continue
        seen.add(key)
        if name == "chatbatch":
            todo += [Requirement(r) for r in _extras_of_project(req.extras)]
            continue
        todo += [Requirement(r) for r in _requires(name, frozenset(req.extras))]
    return {key.split("[")[0] for key in seen}


def _extras_of_project(extras: Iterable[str]) -> list[str]:
    optional = PROJECT["optional-dependencies"]
    return [*PROJECT["dependencies"], *(r for e in extras for r in optional[e])]


def third_party_imports(paths: Iterable[Path]) -> dict[str, Path]:
    """Top-level modules imported at run time (not under TYPE_CHECKING), not ours or stdlib."""
    found: dict[str, Path] = {}
    for path in paths:
        tree = ast.parse(path.read_text(), str(path))
        typing_only = {
            id(node)
            for block in ast.walk(tree)
            if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
            for stmt in block.body
            for node in ast.walk(stmt)
        }
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != "chatbatch":
                    found.setdefault(top, path)
    return found


def files(*parts: str) -> list[Path]:
    out: list[Path] = []
    for part in parts:
        target = PACKAGE / part
        out += [target] if target.is_file() else sorted(target.rglob("*.py"))
    return out


def distributions(module: str) -> set[str]:
    return {_norm(d) for d in metadata.packages_distributions().get(module, [])}


def _missing(modules: dict[str, Path], installed: set[str]) -> dict[str, str]:
    return {
        module: str(path.relative_to(ROOT))
        for module, path in modules.items()
        if not distributions(module) & installed
    }


def test_the_worker_imports_only_what_the_asset_ships_and_the_runtime_provides() -> None:
    requirements = runtime_requirements(ROOT / "pyproject.toml")
    shipped = closure(requirements.with_deps) | {
        _norm(r.split("==")[0]) for r in requirements.without_deps
    }
    assert _missing(third_party_imports(files(*WORKER)), shipped | LAMBDA_RUNTIME) == {}
    assert not {"typer", "rich", "matplotlib", "moto"} & shipped


def test_a_plain_install_brings_everything_the_cli_imports() -> None:
    plain = closure(PROJECT["dependencies"])
    modules = third_party_imports(files(*WORKER, "client", "cli"))
    # matplotlib: imported inside `costs --chart`; moto: only by `local` (below)
    assert {"boto3", "typer", "rich", "matplotlib"} <= set(modules)
    assert _missing(modules, plain) == {}
    assert {"boto3", "typer", "rich", "matplotlib"} <= plain
    assert "moto" not in plain


def test_the_local_extra_brings_moto_at_the_version_of_its_fixes() -> None:
    local = closure(["chatbatch[local]"])
    modules = third_party_imports(files("local"))
    assert "moto" in modules
    assert _missing(modules, local) == {}
    # moto's server runs on flask and werkzeug: the extra brings them too, importably
    assert {"moto", "flask", "werkzeug", "flask-cors"} <= local
    assert f"moto[server]=={SUPPORTED_MOTO}" in PROJECT["optional-dependencies"]["local"]
    for module in sorted(extra.LOCAL_MODULES):
        __import__(module)
    __import__("moto.server")
    # `make test` installs dev, which holds local; the cli and cdk extras still exist
    assert "chatbatch[local]" in PROJECT["optional-dependencies"]["dev"]
    assert {"cli", "cdk", "dev", "local"} <= set(PROJECT["optional-dependencies"])


def test_the_moto_fixes_refuse_another_moto_version(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    moto_fixes.apply()  # the supported version: applies
    monkeypatch.setattr(extra, "installed_moto", lambda: "5.2.1")
    with pytest.raises(UnsupportedMoto) as refused:
        moto_fixes.apply()
    message = str(refused.value)
    assert f"written for moto {SUPPORTED_MOTO}, but moto 5.2.1 is installed" in message
    assert f"pip install 'moto[server]=={SUPPORTED_MOTO}'" in message
    with pytest.raises(UnsupportedMoto), moto_in_process():
        pass
    # through the command: one line, exit 2, nothing started
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"custom_id": "a", "prompt": "hi"}\n')
    config = str(ROOT / "chatbatch.toml")
    args = ["local", "run", str(jobs), "--out", str(tmp_path / "out"), "--config", config]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, (result.stdout, result.stderr, result.exception)
    assert result.stderr.strip().splitlines() == [f"error: {message}"]


def run_chatbatch(*args: str, before: str = "") -> subprocess.CompletedProcess[str]:
    """``chatbatch ARGS`` in a fresh interpreter on this checkout; ``before``: Python run
    first (to take a module away)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "functions"), str(ROOT)])}
    script = f"{before}\nfrom chatbatch.cli.app import main; main()"
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        env=env | {"COLUMNS": "300"},
        check=False,
        timeout=120,
    )


def test_local_run_without_moto_names_the_local_extra(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"custom_id": "a", "prompt": "hi"}\n')
    args = ["local", "run", str(jobs), "--out", str(tmp_path / "out")]
    done = run_chatbatch(
        *args,
        "--config",
        str(ROOT / "chatbatch.toml"),
        before="import sys; sys.modules['moto'] = None",
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        f"error: the local runtime needs moto, which is not installed: {LOCAL_INSTALL} "
        "(moto's server and the version its fixes were written for)"
    ]


def test_version_prints_the_installed_version_and_exits_0() -> None:
    done = run_chatbatch("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"chatbatch {metadata.version('chatbatch')}\n"


def test_version_falls_back_to_the_package_when_not_installed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def not_installed(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(cli_app.metadata, "version", not_installed)
    monkeypatch.setattr(chatbatch, "__version__", "9.8.7")
    result = CliRunner().invoke(cli_app.app, ["--version"])
    assert (result.exit_code, result.stdout) == (0, "chatbatch 9.8.7\n")
    # eager: no command needed, and a command after it is not run
    result = CliRunner().invoke(cli_app.app, ["--version", "status"])
    assert (result.exit_code, result.stdout) == (0, "chatbatch 9.8.7\n")
