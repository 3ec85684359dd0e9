"""The layering rules of docs/design.md, kept by the fast tier: no import loop in orchestrator (counting imports made
inside functions, which a top-level-only checker would miss), no function in orchestrator over 50 lines, the method
free of Ray, MLflow and Optuna, and the linters in pyproject.toml passing where they are installed."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_FUNCTION_LINES = 50


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, module: str | None = None) -> list[str]:
    """Every module a file imports, at any depth of its code, relative imports resolved; TYPE_CHECKING blocks skipped
    because they never run."""
    tree = ast.parse(path.read_text(), str(path))
    package = (module or _module_name(path)).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found: list[str] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            found.append(module)
            found.extend(f"{module}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _graph(package: str) -> dict[str, set[str]]:
    files = {_module_name(p): p for p in (ROOT / package).rglob("*.py")}
    return {name: {m for m in _imports(path) if m in files and m != name} for name, path in files.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt.startswith(node + "."):  # a package importing its own submodule is how packages are built
                continue
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (loop := walk(nxt)):
                return loop
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (loop := walk(node)):
            return loop
    return None


def test_the_cycle_finder_sees_a_loop_made_inside_a_function(tmp_path):
    graph = {"p.a": {"p.b"}, "p.b": {"p.c"}, "p.c": {"p.a"}, "p.d": set()}
    assert _cycle(graph) == ["p.a", "p.b", "p.c", "p.a"]
    assert _cycle({"p.a": {"p.b"}, "p.b": set()}) is None
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from .other import g\n    import json\n")
    assert {"json", "p.other", "p.other.g"} <= set(_imports(src, "p.m"))


def test_no_import_loop_in_orchestrator_counting_imports_inside_functions():
    assert _cycle(_graph("orchestrator")) is None


def test_the_ray_trial_is_imported_only_by_what_runs_trials():
    graph = _graph("orchestrator")
    users = {name for name, deps in graph.items() if "orchestrator.trial" in deps}
    assert users <= {"orchestrator.search", "orchestrator.verify"}, users


def test_the_method_imports_neither_the_orchestrator_nor_ray_mlflow_or_optuna():
    banned = ("orchestrator", "ray", "mlflow", "optuna")
    for path in (ROOT / "adin_core").rglob("*.py"):
        bad = [m for m in _imports(path) if m.split(".")[0] in banned]
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_no_function_in_orchestrator_is_longer_than_a_screen():
    long = []
    for path in (ROOT / "orchestrator").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, long


def test_the_product_points_nowhere_outside_the_repository():
    outside = "../" + "shared"
    product = [*ROOT.glob("*.md"), ROOT / "pyproject.toml", *ROOT.glob("docs/*.md"), *ROOT.glob("search_spaces/*")]
    for folder in ("adin_core", "orchestrator", "bench", "cluster", "scripts"):
        product += [p for p in (ROOT / folder).rglob("*") if p.is_file() and p.suffix in (".py", ".sh", ".md", ".yaml")]
    for path in product:
        assert outside not in path.read_text(), path


def _tool(name: str) -> str:
    found = shutil.which(name) or str(Path(sys.executable).with_name(name))
    if not Path(found).exists():
        pytest.skip(f"{name} is not installed: pip install -e '.[test]' installs it")
    return found


@pytest.mark.parametrize(
    "command",
    [["ruff", "check", "."], ["ruff", "format", "--check", "."], ["lint-imports"]],
    ids=["ruff-check", "ruff-format", "import-contracts"],
)
def test_the_linters_in_pyproject_pass(command):
    proc = subprocess.run([_tool(command[0]), *command[1:]], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
