"""The package's layout, read from its source with `ast`: no import cycle, every layer imports only the
layers below it (ARCHITECTURE.md draws the same table), DESIGN's rules on Prefect, vLLM and the loss
module, no private name imported across modules, no function over 60 lines, at most five root modules.

A stage module's `if __name__ == "__main__":` block is its command-line entry, not a dependency: it runs
only when the module is the program (`python -m rebelflow.stages.NAME`), so it is left out of the graph.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "rebelflow"

# Each layer and the layers it may import (besides itself). Lower layers never import higher ones.
ALLOWED = {
    "config": set(),
    "losses": set(),
    "store": {"config"},
    "loading": {"config", "store"},  # config.loading: YAML, overrides, and reward.artifact ids found in the store
    "ml": {"config", "store", "losses"},
    "engines": {"config", "ml"},
    "rewards": {"config", "store", "ml"},
    "users": {"config", "store", "ml", "engines"},
    "judges": {"config", "store", "ml", "engines", "rewards"},  # LLM judges of two answers (evaluation)
    "stages": {"config", "store", "losses", "ml", "engines", "rewards", "users", "judges"},
    "planning": {"config", "store", "ml", "engines", "rewards", "users", "judges", "stages"},
    "running": {"config", "loading", "store", "planning", "stages"},
    "tasks": {"config", "store", "planning", "running"},
    "flows": {"config", "loading", "store", "ml", "planning", "tasks", "stages"},
    "ops": {"config", "loading", "store", "planning", "flows"},
    "rehearsal": {"config", "loading", "store", "ml"},  # a preset's CPU rehearsal: tiny models, generated data
    "cli": {"config", "loading", "store", "planning", "flows", "ops", "stages", "rehearsal"},
}
PREFECT_LAYERS = {"tasks", "flows", "ops", "cli"}  # nothing below the tasks imports Prefect


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
TREES = {name: ast.parse(path.read_text(), str(path)) for name, path in MODULES.items()}


LAYER_OF_MODULE = {"rebelflow.config.loading": "loading"}  # the one module above its package's layer


def layer(module: str) -> str:
    if module in LAYER_OF_MODULE:
        return LAYER_OF_MODULE[module]
    return module.split(".")[1] if module.count(".") else "root"


def is_main_block(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Compare) and isinstance(test.left, ast.Name) and test.left.id == "__name__"
            and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in test.comparators))


def import_nodes(tree: ast.AST):
    """Import statements anywhere in the module (function bodies too), except under `__main__` blocks."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if is_main_block(node):
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def imports(module: str) -> list[tuple[str, list[str]]]:
    """(imported module, names taken from it) for every import of `module`, relative ones resolved."""
    out = []
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    for node in import_nodes(TREES[module]):
        if isinstance(node, ast.Import):
            out += [(alias.name, []) for alias in node.names]
            continue
        base = node.module or ""
        if node.level:
            base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1], *filter(None, [base])])
        out.append((base, [alias.name for alias in node.names]))
    return out


def internal_edges(module: str) -> set[str]:
    """The rebelflow modules `module` imports (`from pkg import submodule` counts as the submodule)."""
    edges = set()
    for target, names in imports(module):
        if not target.startswith("rebelflow"):
            continue
        subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES]
        edges.update(subs or [target])
    edges.discard(module)
    return edges


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_package_has_no_import_cycle():
    graph = {m: internal_edges(m) for m in MODULES}
    assert find_cycle(graph) is None, " → ".join(find_cycle(graph))


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_layer_table_itself_has_no_cycle():
    assert find_cycle({k: set(v) for k, v in ALLOWED.items()}) is None


def test_every_layer_imports_only_the_layers_below_it():
    broken = []
    for module in MODULES:
        if module in ("rebelflow",):
            continue
        mine = layer(module)
        mine = {"root": module.split(".")[-1]}.get(mine, mine)  # root modules are layers of their own
        assert mine in ALLOWED, f"{module}: its layer {mine!r} is not in the layer table"
        for target in internal_edges(module):
            theirs = layer(target)
            theirs = {"root": target.split(".")[-1]}.get(theirs, theirs)
            if theirs != mine and theirs not in ALLOWED[mine]:
                broken.append(f"{module} imports {target} ({mine} → {theirs})")
    assert not broken, "\n".join(broken)


def third_party(module: str) -> set[str]:
    return {target.split(".")[0] for target, _ in imports(module) if target and not target.startswith("rebelflow")}


def test_prefect_vllm_and_the_loss_module_stay_where_design_puts_them():
    prefect = [m for m in MODULES if "prefect" in third_party(m) and layer(m) not in PREFECT_LAYERS
               and m != "rebelflow.cli"]
    assert not prefect, f"below the tasks, these import Prefect: {prefect}"
    vllm = [m for m in MODULES if "vllm" in third_party(m)]
    assert vllm == ["rebelflow.engines.vllm"]
    stages_up = [m for m in MODULES if layer(m) == "stages"
                 and any(layer(t) in ("flows", "tasks", "planning", "running") for t in internal_edges(m))]
    assert not stages_up
    assert third_party("rebelflow.losses") <= {"torch", "__future__"}
    assert not internal_edges("rebelflow.losses")


def test_no_module_imports_a_private_name_of_another():
    found = []
    for module in MODULES:
        for target, names in imports(module):
            if target.startswith("rebelflow"):
                found += [f"{module}: from {target} import {n}" for n in names if n.startswith("_")]
        aliases = {a.asname or a.name for node in import_nodes(TREES[module]) if isinstance(node, ast.ImportFrom)
                   and (node.module or "").startswith("rebelflow") for a in node.names}
        for node in ast.walk(TREES[module]):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                found.append(f"{module}: {node.value.id}.{node.attr}")
    assert not found, "\n".join(found)


def test_no_function_is_longer_than_60_lines():
    long = [f"{module}.{node.name}: {node.end_lineno - node.lineno + 1} lines"
            for module, tree in TREES.items() for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 60]
    assert not long, "\n".join(long)


def test_at_most_five_modules_sit_at_the_package_root():
    root = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(root) <= 5, root
    assert "losses.py" in root and (PACKAGE / "cli" / "__init__.py").is_file()  # the command line is a package


@pytest.mark.parametrize("rule", ["cycle", "layer"])
def test_the_rules_catch_a_planted_violation(rule):
    """The checks above are not vacuous: a stage that imported the planner would be caught by both."""
    graph = {m: internal_edges(m) for m in MODULES}
    graph["rebelflow.stages.generate"] = graph["rebelflow.stages.generate"] | {"rebelflow.planning.campaign"}
    if rule == "cycle":
        assert find_cycle(graph) is not None
    else:
        assert "planning" not in ALLOWED["stages"]
