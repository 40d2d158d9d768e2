"""The house, drawn from the code: protege's import graph among its rooms (packages, and each
student kind on its own), as a Mermaid picture, with the first line of each room's docstring
saying what it owns. `python tools/house.py --write` puts it in README.md between the
`house:begin` / `house:end` markers; tests/test_architecture.py checks that it is current and
that the module graph underneath has no circle.

Edges into the shared core (formats, config, errors, paths, io: what every room uses) are left
out of the picture, so that what is left shows who calls whom.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BEGIN, END = "<!-- house:begin -->", "<!-- house:end -->"
KIND_PACKAGE = "protege.students."
CORE = {"protege.core"}
"""Rooms every other room uses; their incoming edges are not drawn."""
TOP = {  # protege's top-level modules, grouped into rooms of the picture
    "protege.pipeline": "protege.run",
    "protege.recipe": "protege.run",
    "protege.plan": "protege.run",
    "protege.stages": "protege.run",
}
SKIP = ("protege.testing", "protege.__main__", "protege")


# ---- the module graph ---------------------------------------------------------------------


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def sources() -> dict[str, Path]:
    files = [*ROOT.joinpath("protege").rglob("*.py"), *ROOT.joinpath("benchmarks").rglob("*.py")]
    return {module_name(p): p for p in files}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Modules of `known` that `name` imports anywhere in its body (to the deepest module
    named: `from a.b import c` is a.b.c when that is a module, else a.b), the student
    registry's "module:Class" entries included; in benchmarks/, a bare `import x` of a sibling
    script is `benchmarks.x`."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    sibling = name.startswith("benchmarks.")
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                       for a in node.names]  # fmt: skip
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            m = re.fullmatch(r"(protege(?:\.\w+)+):\w+", node.value)  # a registry entry
            targets = [m.group(1)] if m else []
        for t in targets:
            if sibling and f"benchmarks.{t}" in known:
                t = f"benchmarks.{t}"
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def import_graph() -> dict[str, set[str]]:
    mods = sources()
    known = set(mods)
    return {name: imports_of(name, path, known) for name, path in mods.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


# ---- the picture --------------------------------------------------------------------------


def room(module: str) -> str | None:
    """The room of the picture a module belongs to (None: not drawn)."""
    if not module.startswith("protege") or module.startswith(SKIP[0]) or module in SKIP[1:]:
        return None
    parts = module.split(".")
    if module.startswith(KIND_PACKAGE) and len(parts) > 2:
        kind = ".".join(parts[:3])
        return kind if ROOT.joinpath(*parts[:3]).is_dir() else "protege.students"
    if len(parts) >= 2 and ROOT.joinpath("protege", parts[1]).is_dir():
        return ".".join(parts[:2])
    return TOP.get(module, "protege.core")


def rooms_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for src, dsts in graph.items():
        a = room(src)
        if a is None:
            continue
        edges.setdefault(a, set())
        for dst in dsts:
            b = room(dst)
            if b and b != a and b not in CORE:
                edges[a].add(b)
    return edges


def owns(name: str) -> str:
    """The first line of the room's docstring (a package's __init__, or the core's list)."""
    if name == "protege.core":
        return "formats, config, errors, paths, digest, redact, targets: what every room uses"
    if name == "protege.run":
        return "`protege run`: recipe, plan, stages and the pipeline that runs them"
    path = ROOT.joinpath(*name.split("."), "__init__.py")
    doc = ast.get_docstring(ast.parse(path.read_text())) if path.exists() else None
    return (doc or "").split("\n\n")[0].replace("\n", " ").strip()


def label(name: str) -> str:
    return name.removeprefix("protege.").replace("students.", "students/")


def picture(graph: dict[str, set[str]] | None = None) -> str:
    edges = rooms_graph(graph or import_graph())
    kinds = sorted(r for r in edges if r.startswith(KIND_PACKAGE))
    ids = {r: label(r).replace("/", "_") for r in edges}
    lines = ["```mermaid", "flowchart LR"]
    for r in sorted(edges):
        if r not in kinds:
            lines.append(f'  {ids[r]}["{label(r)}"]')
    lines.append('  subgraph kinds["one package per student kind"]')
    lines += [f'    {ids[r]}["{label(r)}"]' for r in kinds]
    lines.append("  end")
    for a in sorted(edges):
        lines += [f"  {ids[a]} --> {ids[b]}" for b in sorted(edges[a])]
    lines.append("```")
    table = ["| room | what it owns |", "| --- | --- |"]
    table += [f"| `{label(r)}` | {owns(r)} |" for r in sorted(edges)]
    return "\n".join([*lines, "", *table])


def readme_block(text: str) -> str:
    a, b = text.index(BEGIN) + len(BEGIN), text.index(END)
    return text[a:b].strip()


def write_readme() -> None:
    text = README.read_text()
    a, b = text.index(BEGIN) + len(BEGIN), text.index(END)
    README.write_text(text[:a] + "\n" + picture() + "\n" + text[b:])


if __name__ == "__main__":
    if "--write" in sys.argv:
        write_readme()
    else:
        print(picture())
