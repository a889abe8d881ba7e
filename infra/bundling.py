"""The worker's Lambda asset, built on this machine without Docker.

The asset is the worker's part of the ``chatbatch`` package (``core``, ``provider``, ``state``,
``worker`` and the package's own ``__init__.py``; never ``client``, ``cli`` or ``local``),
``chatbatch.toml`` at the asset root, and the worker's dependencies (those of pyproject.toml's
``[project].dependencies`` named in ``[tool.chatbatch.lambda-asset].dependencies``; the
CLI's are left out) installed by pip *for the Lambda platform*: manylinux wheels of
the function's architecture and CPython version (``--only-binary=:all:``, so nothing is
compiled here and nothing built for this host can slip in).

pip runs once per set of requirements, Python version and architecture: its result is
cached in ``.asset-cache/deps-<hash>/`` (PyPI is needed only to fill it; later synths work
offline). The asset itself is named by a hash of every input (that install, the package's
files, the config file), so an unchanged asset is not even copied again into cdk.out.
CDK requires a Docker image for bundling options; ours is never run: local bundling either
succeeds or raises, and the image's command fails loudly if CDK ever tried it.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import aws_cdk as cdk
import jsii
from aws_cdk import aws_lambda as lambda_

Architecture = Literal["arm64", "x86_64"]

# Bump when the build recipe changes, so old cache entries are not reused.
BUNDLER_VERSION = "2"
PACKAGE = "chatbatch"
# What the Lambda runs. Left out: client/ (submit, costs), cli/ (typer, rich) and local/
# (moto, the simulator): they run on the user's machine.
ASSET_SUBPACKAGES = frozenset({"core", "provider", "state", "translate", "worker"})
ASSET_TOP_FILES = frozenset({"__init__.py", "py.typed"})
CONFIG_IN_ASSET = "chatbatch.toml"
LAMBDA_TASK_ROOT = "/var/task"
CACHE_ENTRIES_KEPT = 4

_MACHINE = {"arm64": "aarch64", "x86_64": "x86_64"}
# ELF e_machine values, to check that every shared object fits the function's CPU.
_ELF_MACHINE = {"aarch64": 183, "x86_64": 62}


@dataclass(frozen=True)
class AssetInputs:
    """Everything the asset is built from; its hash names the cache entry."""

    package_dir: Path
    config_file: Path
    requirements: Requirements
    python_version: str  # "3.12"
    architecture: Architecture

    @property
    def machine(self) -> str:
        return _MACHINE[self.architecture]

    @property
    def platforms(self) -> tuple[str, ...]:
        # manylinux2014 (glibc 2.17) covers most wheels; newer tags up to the glibc of the
        # Lambda Python 3.12+ runtimes (Amazon Linux 2023: glibc 2.34) are accepted too.
        return tuple(
            f"{tag}_{self.machine}" for tag in ("manylinux2014", "manylinux_2_28", "manylinux_2_34")
        )

    def package_files(self) -> list[Path]:
        """The package's files that ship, relative to the package directory, sorted."""
        files = []
        for path in sorted(self.package_dir.rglob("*")):
            rel = path.relative_to(self.package_dir)
            if not path.is_file() or not _ships(rel):
                continue
            if "__pycache__" in rel.parts or path.suffix in {".pyc", ".pyo"}:
                continue
            files.append(rel)
        return files

    def dependencies_digest(self) -> str:
        """Names the cached pip install: requirements, Python version, platform."""
        h = hashlib.sha256()
        for part in (
            BUNDLER_VERSION,
            self.python_version,
            self.architecture,
            *self.platforms,
            *sorted(self.requirements.with_deps),
            "--no-deps",
            *sorted(self.requirements.without_deps),
        ):
            h.update(part.encode() + b"\0")
        return h.hexdigest()

    def digest(self) -> str:
        """The asset's hash: its dependencies, every shipped package file and the config."""
        h = hashlib.sha256(self.dependencies_digest().encode())
        for rel in self.package_files():
            h.update(f"{PACKAGE}/{rel.as_posix()}".encode() + b"\0")
            h.update(hashlib.sha256((self.package_dir / rel).read_bytes()).digest())
        h.update(CONFIG_IN_ASSET.encode() + b"\0")
        h.update(hashlib.sha256(self.config_file.read_bytes()).digest())
        return h.hexdigest()


def _ships(rel: Path) -> bool:
    """Whether a file of the package (path relative to it) belongs in the worker's asset."""
    if len(rel.parts) == 1:
        return rel.name in ASSET_TOP_FILES
    return rel.parts[0] in ASSET_SUBPACKAGES


@dataclass(frozen=True)
class Requirements:
    """What pip installs into the asset: most with their dependencies, a few without."""

    with_deps: tuple[str, ...]
    without_deps: tuple[str, ...] = ()


def _name(requirement: str) -> str:
    """A requirement's normalised project name: ``Foo_Bar[x]>=1`` -> ``foo-bar``."""
    name = re.split(r"[\s\[<>=!~;@]", requirement.strip(), maxsplit=1)[0]
    return name.lower().replace("_", "-")


def runtime_requirements(pyproject: Path) -> Requirements:
    """The Lambda's dependencies: those named in ``[tool.chatbatch.lambda-asset].dependencies``,
    as pinned in ``[project].dependencies``.

    ``[project].dependencies`` also holds the CLI's (boto3, typer, rich, matplotlib: a plain
    ``pip install chatbatch`` runs the command), which the worker never imports; only the
    named ones ship. Those listed in ``without-dependencies`` are installed with
    ``--no-deps``: their dependencies are provided by the Lambda runtime (botocore).
    """
    data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    asset = data.get("tool", {}).get("chatbatch", {}).get("lambda-asset", {})
    if "dependencies" not in asset:
        raise ValueError(
            f"{pyproject}: [tool.chatbatch.lambda-asset] has no `dependencies`: name the "
            "worker's dependencies there (those of [project].dependencies the asset ships)"
        )
    pins = {_name(r): r for r in data["project"]["dependencies"]}
    wanted = [_name(r) for r in asset["dependencies"]]
    unknown = [name for name in wanted if name not in pins]
    if unknown:
        raise ValueError(
            f"{pyproject}: [tool.chatbatch.lambda-asset] dependencies names {', '.join(unknown)}, "
            "which [project].dependencies does not list: add it there (pinned) or remove it"
        )
    without = tuple(asset.get("without-dependencies", ()))
    skipped = {_name(r) for r in without}
    with_deps = tuple(pins[name] for name in wanted if name not in skipped)
    return Requirements(with_deps=with_deps, without_deps=without)


def pip_commands(inputs: AssetInputs, target: Path) -> list[list[str]]:
    """One pip run for the requirements with dependencies, one for those without."""
    commands = [_pip_command(inputs, target, inputs.requirements.with_deps)]
    if inputs.requirements.without_deps:
        no_deps = ["--no-deps", *inputs.requirements.without_deps]
        commands.append(_pip_command(inputs, target, tuple(no_deps)))
    return commands


def _pip_command(inputs: AssetInputs, target: Path, requirements: tuple[str, ...]) -> list[str]:
    platforms = [arg for tag in inputs.platforms for arg in ("--platform", tag)]
    return [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--no-compile",  # .pyc files built by this Python would not match the runtime's
        "--target",
        str(target),
        "--implementation",
        "cp",
        "--python-version",
        inputs.python_version,
        "--only-binary=:all:",
        *platforms,
        *requirements,
    ]


def check_binaries(root: Path, inputs: AssetInputs) -> list[Path]:
    """Every shared object under ``root`` must be built for the runtime; returns them."""
    tag = f"cpython-{inputs.python_version.replace('.', '')}-{inputs.machine}-linux-gnu"
    found = sorted(root.rglob("*.so")) + sorted(root.rglob("*.so.*"))
    wrong = []
    for so in found:
        with so.open("rb") as f:
            header = f.read(20)
        machine = int.from_bytes(header[18:20], "little") if header[:4] == b"\x7fELF" else -1
        versioned = ".cpython-" in so.name
        if machine != _ELF_MACHINE[inputs.machine] or (versioned and tag not in so.name):
            wrong.append(so.relative_to(root))
    if wrong:
        raise RuntimeError(
            f"asset holds binaries not built for {inputs.architecture} / CPython "
            f"{inputs.python_version}: {', '.join(map(str, wrong))}"
        )
    return found


def install_dependencies(inputs: AssetInputs, cache_root: Path) -> Path:
    """The runtime dependencies installed for Lambda, from the cache or by pip into it."""
    entry = cache_root / f"deps-{inputs.dependencies_digest()}"
    if entry.is_dir():
        return entry
    cache_root.mkdir(parents=True, exist_ok=True)
    staging = cache_root / f"building-{entry.name}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        for command in pip_commands(inputs, staging):
            result = subprocess.run(command, capture_output=True, text=True, check=False)
            if result.returncode != 0:
                raise RuntimeError(
                    "pip could not install the worker's dependencies for "
                    f"{inputs.architecture} / Python {inputs.python_version} (PyPI is needed "
                    f"the first time; later builds come from {cache_root}):\n"
                    f"{result.stderr[-4000:]}"
                )
        # Console scripts carry this host's interpreter path; Lambda never runs them.
        shutil.rmtree(staging / "bin", ignore_errors=True)
        for cache_dir in list(staging.rglob("__pycache__")):
            shutil.rmtree(cache_dir, ignore_errors=True)
        check_binaries(staging, inputs)
        try:
            staging.rename(entry)
        except OSError:
            if not entry.is_dir():  # another synth finished first: use its entry
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _prune(cache_root, keep=entry)
    return entry


def assemble_asset(inputs: AssetInputs, cache_root: Path, output_dir: Path) -> None:
    """Dependencies + the runtime package + chatbatch.toml at the root, into ``output_dir``."""
    shutil.copytree(install_dependencies(inputs, cache_root), output_dir, dirs_exist_ok=True)
    for rel in inputs.package_files():
        dest = output_dir / PACKAGE / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(inputs.package_dir / rel, dest)
    shutil.copy2(inputs.config_file, output_dir / CONFIG_IN_ASSET)


def _prune(cache_root: Path, keep: Path) -> None:
    """Keep the newest few dependency installs (~15 MB each); drop older ones."""
    entries = sorted(
        (p for p in cache_root.iterdir() if p.name.startswith("deps-") and p != keep),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for old in entries[CACHE_ENTRIES_KEPT - 1 :]:
        shutil.rmtree(old, ignore_errors=True)


@jsii.implements(cdk.ILocalBundling)
class LocalBundler:
    """CDK local bundling: assemble the asset in CDK's output directory, no Docker."""

    def __init__(self, inputs: AssetInputs, cache_root: Path) -> None:
        self.inputs = inputs
        self.cache_root = cache_root

    def try_bundle(self, output_dir: str, *_args: Any, **_options: Any) -> bool:
        assemble_asset(self.inputs, self.cache_root, Path(output_dir))
        return True  # never False: False would make CDK fall back to Docker


def worker_code(inputs: AssetInputs, cache_root: Path, runtime: lambda_.Runtime) -> lambda_.Code:
    """The Lambda code asset, hashed by its inputs (a config change redeploys the code)."""
    return lambda_.Code.from_asset(
        str(inputs.package_dir),
        asset_hash_type=cdk.AssetHashType.CUSTOM,
        asset_hash=inputs.digest(),
        bundling=cdk.BundlingOptions(
            # Required by the API, never run: local bundling succeeds or raises.
            image=runtime.bundling_image,
            command=["sh", "-c", "echo 'chatbatch bundles locally, not in Docker' >&2; exit 1"],
            local=LocalBundler(inputs, cache_root),
        ),
    )
