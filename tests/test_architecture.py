"""The house's rules, read from the code: no import circle among protege's modules (lazy
imports inside functions count, and so does the student registry's "module:Class" table),
`serve/` names no student kind, no runtime and no marker file, and no file is over 450 lines."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 450
sys.path.insert(0, str(ROOT / "tools"))
from house import README, circles, import_graph, picture, readme_block  # noqa: E402


def test_the_import_graph_has_no_circle():
    assert circles(import_graph()) == []


def test_the_circle_finder_finds_a_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert circles(graph) == [["a", "b", "c"]]


def test_the_graph_sees_lazy_imports_registry_entries_and_benchmark_siblings(tmp_path):
    from house import imports_of

    code = (
        "def f():\n    from protege.serve import predictor\n"
        "REG = {'k': 'protege.students.seq2seq:Seq2SeqStudent'}\n"
        "import teacher_parts\n"
    )
    path = tmp_path / "x.py"
    path.write_text(code)
    known = {"protege.serve.predictor", "protege.students.seq2seq", "benchmarks.teacher_parts"}
    assert imports_of("benchmarks.x", path, known) == known


def test_the_readme_picture_is_drawn_from_the_code_as_it_is():
    """`make house` redraws it; a room or an arrow that changed makes this fail."""
    assert readme_block(README.read_text()) == picture(import_graph())


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
