"""ARCHITECTURE.md names every module of the package, and only modules that exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "llmcourse"


def package_modules() -> set[str]:
    """Top-level modules and subpackages of llmcourse, as ARCHITECTURE.md names them."""
    skipped = {"__init__", "__main__"}
    modules = {path.stem for path in PACKAGE.glob("*.py") if path.stem not in skipped}
    packages = {path.parent.name for path in PACKAGE.glob("*/__init__.py")}
    return modules | packages


def table_modules() -> set[str]:
    """The modules listed in the first column of the "What each module owns" table."""
    text = (ROOT / "ARCHITECTURE.md").read_text()
    table = text.split("## What each module owns", 1)[1].split("\n## ", 1)[0]
    names: set[str] = set()
    for row in table.splitlines():
        if row.startswith("| `"):
            first_column = row.split("|")[1]
            names |= {name.rstrip("/") for name in re.findall(r"`([\w/]+)`", first_column)}
    return names


def test_the_table_lists_every_module_that_owns_something():
    beside = {"figures", "widgets", "exercises", "cli", "book_build"}  # drawn in the diagram
    missing = package_modules() - table_modules() - beside
    assert not missing, f"ARCHITECTURE.md does not say what these modules own: {sorted(missing)}"


def test_every_module_the_table_names_exists():
    unknown = table_modules() - package_modules()
    assert not unknown, f"ARCHITECTURE.md names modules that do not exist: {sorted(unknown)}"
