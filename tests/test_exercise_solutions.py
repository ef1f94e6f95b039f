"""Every solution in ``solutions/*.ipynb`` passes its checker, and every exercise has one.

The solutions notebooks run strictly in CI, so a checker that rejects a correct solution breaks
the book. Running the notebooks is slow; instead each solution function is taken from the
notebook's JSON (the cell above ``check("id", name)`` that defines ``name``, with the imports
of every cell) and checked here.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

from llmcourse.exercises import check, list_exercises

SOLUTIONS = Path(__file__).resolve().parent.parent / "solutions"
CHECK_CALL = re.compile(r"""check\(\s*["']([a-z0-9_.]+)["']\s*,\s*(\w+)""")


def solution_sources() -> dict[str, tuple[str, str, str]]:
    """exercise id -> (notebook name, the imports of every cell and the functions and classes
    of the cells before the defining one, the defining cell's source)."""
    found = {}
    for notebook in sorted(SOLUTIONS.glob("*.ipynb")):
        cells = [
            "".join(cell["source"])
            for cell in json.loads(notebook.read_text())["cells"]
            if cell["cell_type"] == "code"
        ]
        imports = "\n".join(_imports(source) for source in cells)
        for index, source in enumerate(cells):
            for exercise_id, name in CHECK_CALL.findall(source):
                definition = next(
                    cells[position] for position in range(index, -1, -1)
                    if _defines(cells[position], name)
                )
                earlier = "\n".join(_functions(cells[position]) for position in range(index))
                found[exercise_id] = (notebook.name, f"{imports}\n{earlier}", definition)
    return found


def _imports(source: str) -> str:
    """The top-level import statements of a cell (the cells may also hold IPython magics)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return ""
    return "\n".join(
        ast.unparse(node) for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))
    )


def _functions(source: str) -> str:
    """The functions and classes a cell defines (the solutions of earlier exercises)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return ""
    return "\n".join(
        ast.unparse(node) for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))
    )


def _defines(source: str, name: str) -> bool:
    return re.search(rf"^(def|class) {name}\b|^{name}\s*=", source, re.MULTILINE) is not None


def _definitions(source: str) -> str:
    """The functions, classes and assignments of a cell, without the calls that use them."""
    tree = ast.parse(source)
    kept = (ast.FunctionDef, ast.ClassDef, ast.Assign, ast.AnnAssign, ast.Import, ast.ImportFrom)
    return "\n".join(ast.unparse(node) for node in tree.body if isinstance(node, kept))


SOURCES = solution_sources()


def test_every_registered_exercise_has_a_solution() -> None:
    registered = {entry.exercise_id for entry in list_exercises()}
    assert registered - SOURCES.keys() == set()
    assert SOURCES.keys() - registered == set()


@pytest.mark.parametrize("exercise_id", sorted(SOURCES))
def test_the_solution_passes_its_checker(exercise_id: str) -> None:
    notebook, imports, definition = SOURCES[exercise_id]
    namespace: dict[str, object] = {}
    exec(compile(imports, f"{notebook} imports", "exec"), namespace)  # noqa: S102 (our notebooks)
    exec(compile(_definitions(definition), notebook, "exec"), namespace)  # noqa: S102
    name = CHECK_CALL.search(
        next(line for line in _check_lines(notebook) if exercise_id in line)
    ).group(2)
    result = check(exercise_id, namespace[name], strict=False)
    assert result.status == "passed", result.summary


def _check_lines(notebook: str) -> list[str]:
    cells = json.loads((SOLUTIONS / notebook).read_text())["cells"]
    return [
        match.group(0)
        for cell in cells if cell["cell_type"] == "code"
        for match in CHECK_CALL.finditer("".join(cell["source"]))
    ]
