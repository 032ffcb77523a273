"""The layer contract (DESIGN.md), read from the source with ast, so that it stays true.

imatrix/errors (0) < formats (1) < stats, live, ops, collect, plan (2) < printers (3) < tui (4) < cli (5).
A module imports only from its own layer or below; no import cycles, whether the import is at the top
of the module or inside a function (a lazy import hides a cycle, it does not remove it); imports
under `if TYPE_CHECKING:` count too. Core modules (layers 0-3) never import Textual.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "imatui"

LAYERS = {
    "imatui": 0, "imatui.imatrix": 0, "imatui.errors": 0, "imatui.forked": 0,
    "imatui.formats": 1,
    "imatui.stats": 2, "imatui.live": 2, "imatui.ops": 2, "imatui.collect": 2, "imatui.plan": 2,
    "imatui.printers": 3, "imatui.diff_printers": 3, "imatui.plan_printers": 3, "imatui.numfmt": 3,
    "imatui.tui": 4,
    "imatui.cli": 5, "imatui.__main__": 5, "imatui.serve": 5,
}
# Cycles being removed elsewhere; each names its issue. An entry that no longer holds fails the test,
# so that it is taken out the day the cycle goes.
KNOWN_CYCLES: set[frozenset[str]] = set()


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> int:
    parts = module.split(".")
    # down to the sub-package, never the bare "imatui" (that would place every new module at layer 0)
    for n in range(len(parts), 1 if len(parts) > 1 else 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in LAYERS:
            return LAYERS[prefix]
    raise AssertionError(f"{module}: no layer; add it to LAYERS in tests/test_layers.py (and DESIGN.md)")


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The imatui modules `module` imports anywhere in its text (`from pkg import sub` names the
    submodule when there is one, else the package)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for name in names:
            if name == "imatui" or name.startswith("imatui."):
                while name not in modules and "." in name:
                    name = name.rpartition(".")[0]
                if name != module:
                    found.add(name)
    return found


def graph() -> dict[str, set[str]]:
    modules = all_modules()
    return {m: imports_of(m, p, modules) for m, p in modules.items()}


def test_every_module_imports_only_its_layer_or_below():
    wrong = []
    for module, targets in graph().items():
        for target in sorted(targets):
            if layer_of(target) > layer_of(module):
                wrong.append(f"{module} (layer {layer_of(module)}) imports {target} (layer {layer_of(target)})")
    assert wrong == []


def test_core_layers_never_import_textual():
    wrong = []
    for module, path in all_modules().items():
        if layer_of(module) >= 4:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            wrong += [f"{module} imports {n}" for n in names if n.split(".")[0] in ("textual", "rich")]
    assert wrong == []


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    edges = graph()
    known = {pair for pair in KNOWN_CYCLES if all(b in edges.get(a, ()) for a in pair for b in pair - {a})}
    for pair in known:
        a, b = sorted(pair)
        edges[a] = edges[a] - {b}  # break the known edge in one direction; anything else still shows
    assert _cycles(edges) == []
    assert known == KNOWN_CYCLES, f"a known cycle is gone; remove it from KNOWN_CYCLES: {KNOWN_CYCLES - known}"


def test_the_contract_catches_a_cycle_and_an_upward_import():
    """The checks themselves: a made-up graph with a cycle, and a module of layer 2 naming layer 4."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
    assert layer_of("imatui.live.follow") == 2 and layer_of("imatui.tui.widgets.info_bar") == 4
    assert layer_of("imatui.formats.gguf") < layer_of("imatui.stats.tensor") < layer_of("imatui.printers")
