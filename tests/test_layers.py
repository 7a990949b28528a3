"""The library's imports go one way: no module of nlp/ imports, directly or through others, a module that
imports it (issue 36). Read from the source with ast, so a function-level import counts as much as one at the
top: a lazy import that only hides a circle is a circle."""

import ast
from pathlib import Path

NLP = Path(__file__).resolve().parent.parent / "nlp"


def imports_of(path: Path) -> set[str]:
    """The nlp modules a file imports, anywhere in it."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("nlp"):
            if node.module == "nlp":
                out |= {f"nlp.{a.name}" for a in node.names}
            else:
                out.add(node.module)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("nlp.")}
    return out


def test_no_module_of_nlp_imports_itself_through_others():
    graph = {f"nlp.{p.stem}": imports_of(p) for p in NLP.glob("*.py")}
    assert "nlp.serve" in graph and graph["nlp.serve"]  # the reader sees the imports

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen
    circles = sorted(m for m in graph if m in reach(m))
    assert not circles, f"modules that import themselves through others: {circles}"


def test_each_module_of_nlp_stays_readable_in_one_sitting():
    long = {p.name: n for p in NLP.glob("*.py") if (n := len(p.read_text().splitlines())) > 450}
    assert not long, f"modules over 450 lines: {long}"
