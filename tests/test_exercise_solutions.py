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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from llmcourse.exercises import check, core, list_exercises

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
        imports = "\n".join(_top_level(source, IMPORTS) for source in cells)
        definitions = [_top_level(source, DEFINITIONS) for source in cells]
        for index, source in enumerate(cells):
            for exercise_id, name in CHECK_CALL.findall(source):
                definition = next(
                    cells[position] for position in range(index, -1, -1)
                    if _defines(cells[position], name)
                )
                earlier = "\n".join(definitions[:index])
                found[exercise_id] = (notebook.name, f"{imports}\n{earlier}", definition)
    return found


IMPORTS = (ast.Import, ast.ImportFrom)
DEFINITIONS = (ast.FunctionDef, ast.ClassDef)  # the solutions of earlier exercises


def _top_level(source: str, kinds: tuple[type[ast.stmt], ...]) -> str:
    """The top-level statements of a cell of the given kinds, as source (a cell that is not
    plain Python, such as one holding IPython magics, gives none)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return ""
    return "\n".join(ast.unparse(node) for node in tree.body if isinstance(node, kinds))


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
    result = check(exercise_id, solution(exercise_id), strict=False)
    assert result.status == "passed", result.summary


def _check_lines(notebook: str) -> list[str]:
    cells = json.loads((SOLUTIONS / notebook).read_text())["cells"]
    return [
        match.group(0)
        for cell in cells if cell["cell_type"] == "code"
        for match in CHECK_CALL.finditer("".join(cell["source"]))
    ]


# ----------------------------------------------------------------------------------------------
# The typical mistakes the engine rejects in every exercise they apply to, made on purpose to
# each solution: a forgotten return, an argument changed in place, a result of another dtype or
# with numbers of another type inside its containers.

OTHER_DTYPE = {
    torch.float32: torch.float64, torch.float64: torch.float32, torch.int64: torch.int32,
    torch.int32: torch.int64, torch.bool: torch.uint8,
}
# The references of these exercises return None for some inputs, so None is an answer there
# and is reported like any other wrong value, not as a forgotten return.
NONE_IS_AN_ANSWER = {"ch01.most_frequent_pair", "ch07.pick_answers"}
# This checker accepts a one-element tensor for its float on purpose (torch.exp(loss) is right).
TENSOR_FOR_A_FLOAT_IS_RIGHT = {"ch06.perplexity"}


def solution(exercise_id: str) -> Callable[..., Any]:
    notebook, imports, definition = SOURCES[exercise_id]
    namespace: dict[str, Any] = {}
    exec(compile(imports, f"{notebook} imports", "exec"), namespace)  # noqa: S102 (our notebooks)
    exec(compile(_definitions(definition), notebook, "exec"), namespace)  # noqa: S102
    name = next(
        found for checked, found in CHECK_CALL.findall("\n".join(_check_lines(notebook)))
        if checked == exercise_id
    )
    return namespace[name]


def _change_in_place(value: Any) -> bool:
    """Change the first tensor or list found in ``value`` in place; False if there is none."""
    if isinstance(value, torch.Tensor) and value.numel():
        with torch.no_grad():
            if value.dtype == torch.bool:
                value.logical_not_()
            else:
                value.add_(1)
        return True
    if isinstance(value, list):
        value.append(value[0] if value else 0)
        return True
    if isinstance(value, dict):
        value["changed in place"] = 1
        return True
    if isinstance(value, tuple):
        return any(_change_in_place(item) for item in value)
    return False


def _other_types(value: Any) -> Any:
    """``value`` with another dtype (tensors) or number type (ints, floats inside containers)."""
    if isinstance(value, torch.Tensor) and value.dtype in OTHER_DTYPE:
        return value.to(OTHER_DTYPE[value.dtype])
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return float(value)
    if isinstance(value, float):
        return torch.tensor(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_other_types(item) for item in value)
    if isinstance(value, dict):
        return {key: _other_types(item) for key, item in value.items()}
    return value


def _is_changed_by_other_types(value: Any) -> bool:
    try:
        return not core._equal(_other_types(value), value)
    except Exception:
        return False


@pytest.mark.parametrize("exercise_id", sorted(SOURCES))
def test_a_forgotten_return_is_rejected(exercise_id: str) -> None:
    right = solution(exercise_id)

    def forgets_return(*arguments: Any) -> None:
        right(*arguments)

    result = check(exercise_id, forgets_return, strict=False)
    assert result.status == "failed", result.summary
    if exercise_id not in NONE_IS_AN_ANSWER:
        assert result.hint == core.RETURNED_NONE_HINT, result.summary


@pytest.mark.parametrize("exercise_id", sorted(SOURCES))
def test_an_argument_changed_in_place_is_rejected(exercise_id: str) -> None:
    right = solution(exercise_id)
    changed: list[bool] = []

    def changes_its_input(*arguments: Any) -> Any:
        result = right(*arguments)
        changed.append(any(_change_in_place(argument) for argument in arguments))
        return result

    result = check(exercise_id, changes_its_input, strict=False)
    if not any(changed):
        pytest.skip("no argument can change in place (numbers, strings, configurations)")
    assert result.status == "failed", result.summary
    assert "in place; work on a copy" in result.hint, result.summary


@pytest.mark.parametrize("exercise_id", sorted(SOURCES))
def test_a_result_of_another_type_is_rejected(exercise_id: str) -> None:
    right = solution(exercise_id)
    applies: list[bool] = []

    def other_types(*arguments: Any) -> Any:
        result = right(*arguments)
        applies.append(_is_changed_by_other_types(result))
        return _other_types(result)

    result = check(exercise_id, other_types, strict=False)
    if exercise_id in TENSOR_FOR_A_FLOAT_IS_RIGHT:
        assert result.status == "passed", result.summary
        return
    if not any(applies):
        pytest.skip("the result holds no number or tensor whose type could change")
    assert result.status == "failed", result.summary
