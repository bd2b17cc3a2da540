"""The layering of ln_deploy (issue 23): stages sit on a shared layer and never import each other.

Imports are read with ``ast`` from the source, at module level and inside functions (a lazy import
is still a dependency); ``if TYPE_CHECKING:`` blocks are skipped. What composes stages lives above
them: ``ln_deploy.pipeline_steps`` (convert fuses first, build converts first), ``ln_deploy.deploy``
and the top-level ``ln_deploy.cli``.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "ln_deploy"
STAGES = ("export", "fuse", "convert", "build", "check", "serve")
# Above the stages: allowed to import them.
COMPOSERS = ("ln_deploy.pipeline_steps", "ln_deploy.deploy", "ln_deploy.cli", "ln_deploy.__main__", "ln_deploy.demo")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in ROOT.rglob("*.py") if "__pycache__" not in p.parts}


def _imports(path: Path, *, module_level_only: bool) -> list[tuple[str, int]]:
    """(imported module, line) for every import of ``path``; ``from X import name`` also yields
    ``X.name`` when that is a module."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[str, int]] = []

    def visit(node):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) and module_level_only:
                continue
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.Import):
                found.extend((a.name, child.lineno) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module
                found.append((target, child.lineno))
                found.extend((f"{target}.{a.name}", child.lineno) for a in child.names
                             if f"{target}.{a.name}" in MODULES)
            else:
                visit(child)

    visit(ast.parse(path.read_text(), filename=str(path)))
    return found


def _stage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "ln_deploy" and parts[1] in STAGES else None


def _is_composer(module: str) -> bool:
    return any(module == c or module.startswith(c + ".") for c in COMPOSERS)


def test_the_import_reader_sees_lazy_and_relative_imports(tmp_path):
    """The reader itself: a function-level relative import is found and resolved (else the test below
    could pass by reading nothing)."""
    edges = dict(_imports(MODULES["ln_deploy.convert.cli"], module_level_only=False))
    assert "ln_deploy.pipeline_steps" in edges  # `from ..pipeline_steps import convert_model` inside run()
    assert "ln_deploy.pipeline_steps" not in dict(_imports(MODULES["ln_deploy.convert.cli"], module_level_only=True))
    assert len(MODULES) > 50 and all(_stage(f"ln_deploy.{s}") == s for s in STAGES)


def test_no_stage_imports_another_stage():
    bad = []
    for name, path in sorted(MODULES.items()):
        stage = _stage(name)
        if stage is None:
            continue
        for target, line in _imports(path, module_level_only=False):
            other = _stage(target)
            if other and other != stage:
                bad.append(f"{path.relative_to(ROOT.parent)}:{line} ({stage}) imports {target}")
    assert not bad, "stages must not import each other; move the shared piece to ln_deploy/ or pass it " \
                    "in (see ln_deploy/pipeline_steps.py):\n" + "\n".join(bad)


def test_shared_layer_imports_no_stage_and_stages_do_not_import_composers():
    """Top-level modules other than the composers are the shared layer: they import no stage. Stage
    libraries never reach up to a composer; only their command-line front ends (``*cli.py``) do."""
    bad = []
    for name, path in sorted(MODULES.items()):
        if _is_composer(name):
            continue
        stage = _stage(name)
        for target, line in _imports(path, module_level_only=False):
            where = f"{path.relative_to(ROOT.parent)}:{line} imports {target}"
            if stage is None and _stage(target):
                bad.append(where + " (the shared layer imports no stage)")
            elif stage and _is_composer(target) and not path.name.endswith("cli.py"):
                bad.append(where + " (a stage library imports a composer)")
    assert not bad, "\n".join(bad)


def test_no_module_level_import_cycle():
    """Strongly connected components of the module-level import graph. Importing ``a.b.c`` imports
    the packages ``a.b`` too; a module's reference to its own parent package is not a cycle (Python
    initialises the parent first)."""
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in MODULES.items():
        for target, _ in _imports(path, module_level_only=True):
            if not target or not target.startswith("ln_deploy"):
                continue
            parts = target.split(".")
            for i in range(2, len(parts) + 1):
                dep = ".".join(parts[:i])
                if dep in MODULES and dep != name and not name.startswith(dep + "."):
                    graph[name].add(dep)

    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def connect(v):  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(MODULES):
        if v not in index:
            connect(v)
    assert not cycles, f"module-level import cycles: {cycles}"
