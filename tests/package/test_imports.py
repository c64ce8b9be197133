"""The package's shape: imports flow one way through the stages, no two modules import each other
(directly or round a loop), and every module stays small. Read from the source (ast), nothing is run."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers.paths import PACKAGE

# The stages, lowest first: a module may import its own stage and the ones before it, never a later one.
# `tl_cli` is the package root (it holds only __version__); check/ is the stage of `tl check`.
STAGES = ("tl_cli", "errors", "runtime", "data", "backbones", "runs", "features", "head", "check", "finetune",
          "inference", "suggest", "cli", "__main__")


def modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    out = {}
    for f in sorted(PACKAGE.rglob("*.py")):
        parts = f.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


MODULES = modules()


def imports(f: Path) -> set[str]:
    """The tl_cli modules `f` imports anywhere (top level, functions, TYPE_CHECKING blocks)."""
    found = set()
    for node in ast.walk(ast.parse(f.read_text(), str(f))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from pkg import name`: the submodule pkg.name where there is one, else pkg itself
            found.update(f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module
                         for a in node.names)
    return {m for m in found if m == "tl_cli" or m.startswith("tl_cli.")}


def stage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def test_every_module_belongs_to_a_stage():
    assert {stage(m) for m in MODULES} <= set(STAGES), {stage(m) for m in MODULES} - set(STAGES)


def test_lower_stages_never_import_higher_ones():
    upward = [f"{m} ({stage(m)}) imports {dep} ({stage(dep)})"
              for m, f in MODULES.items() for dep in sorted(imports(f))
              if STAGES.index(stage(dep)) > STAGES.index(stage(m))]
    assert not upward, "\n".join(upward)


def test_no_import_cycles():
    graph = {m: {d for d in imports(f) if d in MODULES and d != m} for m, f in MODULES.items()}
    cycles, state = [], {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = "open"
        for d in sorted(graph[m]):
            if state.get(d) == "open":
                cycles.append(" -> ".join(path[path.index(d):] + [d]))
            elif d not in state:
                visit(d, path + [d])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "\n".join(cycles)


def test_modules_are_at_most_400_lines():
    long = {m: n for m, f in MODULES.items() if (n := len(f.read_text().splitlines())) > 400}
    assert not long, long
