"""The worker's Lambda asset, built without Docker: what ships and what must not."""

from __future__ import annotations

import io
import shutil
import tomllib
import zipfile
from pathlib import Path

import pytest
from synth_support import ROOT, Synth

from chatbatch.core.config import Config
from infra.bundling import AssetInputs, _name, check_binaries, runtime_requirements
from infra.worker import HANDLER

MACHINE = {"arm64": "aarch64", "x86_64": "x86_64"}
ELF_MACHINE = {"aarch64": 183, "x86_64": 62}


def _inputs(config: Config, **changes: object) -> AssetInputs:
    fields: dict[str, object] = {
        "package_dir": ROOT / "functions" / "chatbatch",
        "config_file": ROOT / "chatbatch.toml",
        "requirements": runtime_requirements(ROOT / "pyproject.toml"),
        "python_version": config.worker.runtime,
        "architecture": config.worker.architecture,
    }
    return AssetInputs(**(fields | changes))  # type: ignore[arg-type]


def test_asset_holds_the_handler_and_runtime_dependencies(synth: Synth) -> None:
    root = synth.asset_dir
    module, _function = HANDLER.rsplit(".", 1)
    assert (root / (module.replace(".", "/") + ".py")).is_file()
    assert (root / "chatbatch" / "__init__.py").is_file()
    assert (root / "chatbatch.toml").read_bytes() == (ROOT / "chatbatch.toml").read_bytes()
    packages = ("httpx", "pydantic", "pydantic_core", "aws_lambda_powertools", "aws_xray_sdk")
    for package in (*packages, "wrapt"):
        assert (root / package / "__init__.py").is_file(), package
    # The versions pinned in pyproject.toml are the ones shipped, including those installed
    # without their dependencies (X-Ray's botocore comes with the Lambda runtime).
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    asset = project["tool"]["chatbatch"]["lambda-asset"]
    requirements = runtime_requirements(ROOT / "pyproject.toml")
    pins = [*requirements.with_deps, *requirements.without_deps]
    assert {_name(p) for p in pins} == {*asset["dependencies"], "wrapt"}
    for pin in pins:
        name, version = pin.split("==")
        assert (root / f"{name.replace('-', '_')}-{version}.dist-info").is_dir(), pin


def test_asset_leaves_out_the_cli_local_runtime_and_dev_dependencies(synth: Synth) -> None:
    root = synth.asset_dir
    top = {p.name.lower() for p in root.iterdir()}
    cli = ("boto3", "botocore", "s3transfer", "typer", "rich", "click", "matplotlib", "numpy")
    for absent in (*cli, "moto"):
        assert absent not in top, absent
        assert not [n for n in top if n.startswith(f"{absent}-")], absent
    package = root / "chatbatch"
    shipped = {p.relative_to(package).parts[0] for p in package.rglob("*.py")}
    assert shipped == {"__init__.py", "core", "provider", "state", "translate", "worker"}
    for absent in ("client", "cli", "local"):
        assert not (package / absent).exists(), absent
    assert not (root / "bin").exists()
    assert not list(root.rglob("__pycache__"))
    assert not list(root.rglob("*.pyc"))


def test_compiled_wheels_match_the_runtime_python_and_architecture(
    synth: Synth, config: Config
) -> None:
    machine = MACHINE[config.worker.architecture]
    tag = f"cpython-{config.worker.runtime.replace('.', '')}-{machine}-linux-gnu"
    (core,) = (synth.asset_dir / "pydantic_core").glob("*.so")
    assert tag in core.name
    for so in synth.asset_dir.rglob("*.so"):
        header = so.read_bytes()[:20]
        assert header[:4] == b"\x7fELF", so
        assert int.from_bytes(header[18:20], "little") == ELF_MACHINE[machine], so
        if ".cpython-" in so.name:
            assert tag in so.name, so
    assert check_binaries(synth.asset_dir, _inputs(config))


def test_the_binary_check_rejects_another_platform(synth: Synth, config: Config) -> None:
    other = "x86_64" if config.worker.architecture == "arm64" else "arm64"
    with pytest.raises(RuntimeError, match="not built for"):
        check_binaries(synth.asset_dir, _inputs(config, architecture=other))
    other_python = "3.13" if config.worker.runtime == "3.12" else "3.12"
    with pytest.raises(RuntimeError, match="not built for"):
        check_binaries(synth.asset_dir, _inputs(config, python_version=other_python))


def test_requirements_without_dependencies_leave_the_first_pip_run(tmp_path: Path) -> None:
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(
        '[project]\ndependencies = ["httpx==0.28.1", "Aws_Xray_SDK[extra]>=2", "wrapt"]\n'
        '[tool.chatbatch.lambda-asset]\ndependencies = ["httpx", "aws-xray-sdk", "wrapt"]\n'
        'without-dependencies = ["aws-xray-sdk==2.15.0"]\n'
    )
    requirements = runtime_requirements(pyproject)
    assert requirements.with_deps == ("httpx==0.28.1", "wrapt")
    assert requirements.without_deps == ("aws-xray-sdk==2.15.0",)


def test_only_the_workers_dependencies_go_into_the_asset(tmp_path: Path) -> None:
    # the project's own list: the CLI's dependencies are in a plain install, not in the asset
    names = {_name(r) for r in runtime_requirements(ROOT / "pyproject.toml").with_deps}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    everything = {_name(r) for r in project["project"]["dependencies"]}
    assert {"boto3", "typer", "rich", "matplotlib"} <= everything - names
    assert {"httpx", "pydantic", "aws-lambda-powertools"} <= names
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(
        '[project]\ndependencies = ["httpx==0.28.1", "typer>=0.29", "boto3>=1.40"]\n'
        '[tool.chatbatch.lambda-asset]\ndependencies = ["httpx"]\n'
    )
    assert runtime_requirements(pyproject).with_deps == ("httpx==0.28.1",)
    # a name the project does not list, or no list at all: a clear error, never everything
    pyproject.write_text(pyproject.read_text().replace('["httpx"]', '["httpx", "Orjson"]'))
    with pytest.raises(ValueError, match=r"names orjson, which \[project\]\.dependencies"):
        runtime_requirements(pyproject)
    pyproject.write_text('[project]\ndependencies = ["httpx==0.28.1", "typer>=0.29"]\n')
    with pytest.raises(ValueError, match="has no `dependencies`"):
        runtime_requirements(pyproject)


def test_asset_hash_follows_its_inputs(config: Config, tmp_path: Path) -> None:
    base = _inputs(config)
    shipped = {p.as_posix() for p in base.package_files()}
    assert "worker/handler.py" in shipped
    assert not [p for p in shipped if p.split("/")[0] in {"client", "cli", "local"}]
    other_config = tmp_path / "chatbatch.toml"
    shutil.copy(base.config_file, other_config)
    assert _inputs(config, config_file=other_config).digest() == base.digest()
    other_config.write_text(other_config.read_text() + "\n# changed\n")
    assert _inputs(config, config_file=other_config).digest() != base.digest()
    other_arch = _inputs(config, architecture="x86_64")
    assert other_arch.dependencies_digest() != base.dependencies_digest()


def test_print_asset_size(synth: Synth) -> None:
    files = [p for p in synth.asset_dir.rglob("*") if p.is_file()]
    unzipped = sum(p.stat().st_size for p in files)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in files:
            zf.write(p, p.relative_to(synth.asset_dir).as_posix())
    zipped = buffer.tell()
    print(
        f"\nworker asset: {len(files)} files, {unzipped / 1e6:.1f} MB unzipped "
        f"(Lambda limit 250 MB), {zipped / 1e6:.1f} MB zipped (direct upload limit 50 MB)"
    )
    assert unzipped < 250e6
    assert zipped < 50e6
