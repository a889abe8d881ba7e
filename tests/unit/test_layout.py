"""The layout's rules: dependencies point one way, and the stack needs only ``core``.

core <- provider, state <- worker <- batchroute; client uses core and state; local and
cli sit on top;
nothing imports cli. Every import counts: module level, inside functions (lazy) and under
``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "functions" / "chatbatch"
LAYERS = (
    "core",
    "translate",
    "provider",
    "state",
    "worker",
    "batchroute",
    "client",
    "local",
    "cli",
)
ALLOWED = {
    "core": {"core"},
    "translate": {"core", "translate"},
    "provider": {"core", "provider"},
    "state": {"core", "state"},
    "worker": {"core", "translate", "provider", "state", "worker"},
    # the gatherer, a function beside the worker: it stores and settles as the worker does
    "batchroute": {"core", "translate", "provider", "state", "worker", "batchroute"},
    "client": {"core", "translate", "state", "client"},
    "local": {"core", "translate", "provider", "state", "worker", "batchroute", "client", "local"},
    "cli": set(LAYERS),
}


def imported_layers(path: Path) -> set[tuple[str, int]]:
    """The chatbatch subpackages a file imports, with the line of each import."""
    found: set[tuple[str, int]] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}:{node.lineno}: relative import")
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "chatbatch":  # from chatbatch import worker
                names = [f"chatbatch.{alias.name}" for alias in node.names]
            else:
                names = [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] == "chatbatch" and len(parts) > 1:
                found.add((parts[1], node.lineno))
    return found


def edges() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {layer: set() for layer in LAYERS}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        if len(rel.parts) == 1:
            continue
        graph[rel.parts[0]] |= {layer for layer, _ in imported_layers(path)}
    return graph


def test_every_module_sits_in_a_layer() -> None:
    top = {p.name for p in PACKAGE.iterdir() if p.name != "__pycache__"}
    assert top == {"__init__.py", "py.typed", *LAYERS}
    assert imported_layers(PACKAGE / "__init__.py") == set()


def test_dependencies_point_one_way() -> None:
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if len(rel.parts) == 1:
            continue
        layer = rel.parts[0]
        for imported, line in sorted(imported_layers(path)):
            if imported not in ALLOWED[layer]:
                wrong.append(f"functions/chatbatch/{rel}:{line} ({layer}) imports {imported}")
    assert not wrong, "\n".join(wrong)
    # the scan sees real imports (a scanner that found nothing would pass the check above)
    graph = edges()
    assert {"core", "provider", "state"} <= graph["worker"]
    assert {"core", "state"} <= graph["client"]


def test_nothing_imports_the_cli() -> None:
    graph = edges()
    assert not [layer for layer, uses in graph.items() if "cli" in uses and layer != "cli"]


def test_the_stack_needs_only_core() -> None:
    """infra/ (CDK) reads names, config and the metric contract, never the worker's code."""
    for path in sorted((ROOT / "infra").glob("*.py")):
        used = {layer for layer, _ in imported_layers(path)}
        assert used <= {"core"}, f"{path.name} imports {used - {'core'}}"


def test_the_handler_loads_without_client_cli_or_local() -> None:
    """What the asset leaves out is never needed: the handler imports with those three
    packages made unimportable (in a fresh interpreter)."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[:2] in (['chatbatch', p] for p in ('client', 'cli', 'local')):"
        "\n"
        "            raise ImportError(f'{name} is not in the Lambda asset')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import chatbatch.worker.handler\n"
        "assert 'chatbatch.worker.pipeline' in sys.modules\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "functions")}
    run = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    assert run.returncode == 0, run.stderr[-2000:]
