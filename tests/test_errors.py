"""The error hierarchy: one small set of classes, all in ``llmcourse/errors.py``."""

from __future__ import annotations

import ast
from pathlib import Path

from llmcourse import errors
from llmcourse.cli import main
from llmcourse.errors import CourseError, MissingFileError

PACKAGE = Path(errors.__file__).parent


def test_every_error_class_of_the_package_is_in_errors_py() -> None:
    elsewhere = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and any(
                getattr(base, "id", "").endswith("Error") for base in node.bases
            ):
                elsewhere.append(f"{path.relative_to(PACKAGE)}: {node.name}")
    assert elsewhere == []


def test_each_class_has_a_concern_and_a_standard_base() -> None:
    classes = [value for value in vars(errors).values()
               if isinstance(value, type) and issubclass(value, CourseError)
               and value is not CourseError]
    assert len(classes) == 9
    for cls in classes:
        assert cls.__doc__ and len(cls.__doc__) > 40, cls
        assert cls.__bases__[0] is CourseError and len(cls.__bases__) == 2, cls
    assert issubclass(MissingFileError, FileNotFoundError)


def test_a_course_error_is_one_line_and_exit_status_2(tmp_path, capsys) -> None:
    assert main(["generate", str(tmp_path / "nowhere"), "Hello"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1
    assert str(tmp_path / "nowhere") in captured.err
