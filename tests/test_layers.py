"""The package's shape, checked statically: no import cycles in src/softprompt, and lower layers never
import higher ones (docs/design.md draws the layers). Every import counts, also one inside a function or
under ``if TYPE_CHECKING``: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "softprompt"

# Group -> rank. A module may import its own group or groups of a lower rank; groups of one rank are peers
# and never import each other. A module belongs to the group of the longest matching name; the package's
# own name matches its __init__ only, so that a new top-level module must be given a layer.
LAYERS = {
    "softprompt.errors": 0,
    # plumbing
    "softprompt.io": 1, "softprompt.paths": 1, "softprompt.progress": 1, "softprompt.distributed": 1,
    "softprompt.tracking": 1,
    # models and numbers
    "softprompt.models": 2, "softprompt.metrics": 2, "softprompt.significance": 2,
    "softprompt.templates": 3,
    "softprompt.engine": 4,
    "softprompt.prompt_scorer": 5,
    "softprompt.prompts": 6,
    "softprompt.optimizers": 7,
    "softprompt.runs": 8,
    # applications
    "softprompt.probing": 9, "softprompt.tasks": 9,
    "softprompt.transfer": 10, "softprompt.analysis": 10, "softprompt.zeroprompt": 10, "softprompt.sweep": 10,
    "softprompt.cli": 11,
    # the public API (the package's own __init__) may import anything
    "softprompt": 12,
    # the console script's entry point
    "softprompt.launch": 13,
    # python -m softprompt (what launchers start), through the entry point
    "softprompt.__main__": 14,
}


def module_names(root: Path) -> dict[str, Path]:
    """Dotted name -> file of every module under the package directory ``root``."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = [root.name, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def imports(root: Path) -> dict[str, set[str]]:
    """Each module's imports of modules of the same package (relative ones resolved)."""
    modules = module_names(root)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                # "from a import b" depends on module a.b when b is a module, else on a.
                found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names}
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def group(module: str, layers: dict[str, int]) -> str | None:
    matches = [g for g in layers if module == g or ("." in g and module.startswith(g + "."))]
    return max(matches, key=len) if matches else None


def violations(graph: dict[str, set[str]], layers: dict[str, int]) -> list[str]:
    """Imports that go up a layer or sideways to a peer, and modules the table does not cover."""
    found = []
    for importer in sorted(graph):
        own = group(importer, layers)
        if own is None:
            found.append(f"{importer} is in no layer: add it to the layering table")
            continue
        for imported in sorted(graph[importer]):
            other = group(imported, layers)
            if other is not None and other != own and layers[other] >= layers[own]:
                found.append(f"{importer} ({own}, rank {layers[own]}) imports {imported} "
                             f"({other}, rank {layers[other]})")
    return found


def test_no_import_cycles():
    assert cycles(imports(PACKAGE)) == []


def test_lower_layers_never_import_higher_ones():
    assert violations(imports(PACKAGE), LAYERS) == []


def test_the_checks_see_what_they_must(tmp_path):
    """On a made-up package: a cycle through a lazy import, an upward TYPE_CHECKING import, a relative
    import, a peer import and an unlisted module are all found."""
    pkg = tmp_path / "pkg"
    (pkg / "low").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "low/__init__.py": "from .core import thing\n",
        "low/core.py": "def f():\n    from pkg.high import g\nthing = 1\n",
        "high.py": "from pkg.low import core\ndef g(): ...\n",
        "peer.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import high\n",
        "stray.py": "import pkg.low.core\n",
    }
    for name, text in files.items():
        (pkg / name).write_text(text)
    graph = imports(pkg)
    assert graph["pkg.low"] == {"pkg.low.core"}  # the relative import, resolved to the module
    assert graph["pkg.low.core"] == {"pkg.high"} and graph["pkg.high"] == {"pkg.low.core"}
    assert graph["pkg.stray"] == {"pkg.low.core"}
    assert cycles(graph) == [["pkg.high", "pkg.low.core"]]
    layers = {"pkg": 9, "pkg.low": 0, "pkg.high": 1, "pkg.peer": 1}
    assert violations(graph, layers) == [
        "pkg.low.core (pkg.low, rank 0) imports pkg.high (pkg.high, rank 1)",
        "pkg.peer (pkg.peer, rank 1) imports pkg.high (pkg.high, rank 1)",
        "pkg.stray is in no layer: add it to the layering table",
    ]
