"""The house's rules, read from the code: no import circle among protege's modules (lazy
imports inside functions count, and so does the student registry's "module:Class" table),
`serve/` names no student kind, no runtime and no marker file, and no file is over 450 lines."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 450


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
    named: `from a.b import c` is a.b.c when that is a module, else a.b)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_import_graph_has_no_circle():
    assert circles(import_graph()) == []


def test_the_circle_finder_finds_a_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert circles(graph) == [["a", "b", "c"]]


KIND_WORDS = re.compile(
    r"\b(seq2seq|causal|classifier|classical|ct2|ctranslate2|onnx|onnxruntime|"
    r"CT2_MARKER|CT2_CAUSAL_MARKER|ONNX_MARKER|protege_ct2\w*\.json|protege_onnx\.json)\b",
    re.IGNORECASE,
)


def test_serve_names_no_kind_runtime_or_marker():
    """Code only: serve/ may say what a student does in its docs, not branch on what it is."""
    found = []
    for path in sorted(ROOT.joinpath("protege", "serve").glob("*.py")):
        tree = ast.parse(path.read_text())
        docs = {  # what the code says in words, not what it does
            id(n.body[0].value)
            for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and n.body
            and isinstance(n.body[0], ast.Expr)
            and isinstance(n.body[0].value, ast.Constant)
        }
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [getattr(node, "module", None) or ""] + [a.name for a in node.names]
            elif isinstance(node, ast.Name):
                names = [node.id]
            elif isinstance(node, ast.Attribute):
                names = [node.attr]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                if id(node) not in docs:
                    names = [node.value]
            for n in names:
                if KIND_WORDS.search(n):
                    found.append(f"{path.name}:{getattr(node, 'lineno', '?')}: {n[:60]}")
    assert found == []


def test_no_file_is_over_450_lines():
    long = [
        f"{p.relative_to(ROOT)}: {n}"
        for p in sorted([*ROOT.joinpath("protege").rglob("*.py"), *ROOT.glob("benchmarks/*.py")])
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    ]
    assert long == []
