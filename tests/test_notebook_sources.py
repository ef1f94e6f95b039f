"""The chapter and solution notebooks' sources follow the book's conventions.

* nbval is steered by cell tags, never by ``# NBVAL_...`` comments, which would show in the book;
* headings carry no numbers of their own: Jupyter Book numbers chapters, sections and headings
  from ``_toc.yml``. The appendix's title is the one exception ("Appendix A: ..."), as Jupyter
  Book cannot letter a part.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(
    path.relative_to(REPO_ROOT)
    for folder in ("chapters", "solutions")
    for path in (REPO_ROOT / folder).glob("*.ipynb")
)

# Tags a cell may carry. nbval's four (with --nbval-lax only "nbval-check-output" cells have
# their output compared); "raises-exception" also tells nbclient and myst-nb that the cell's
# error is expected. Add a tag here only with a reason.
# nbval's tags, and Jupyter Book's remove-output: a live widget (the training dashboard) whose
# static copy would repeat the figure drawn after it
KNOWN_TAGS = {
    "nbval-check-output", "nbval-ignore-output", "nbval-skip", "raises-exception", "remove-output",
}

HEADING = re.compile(r"^(#{1,6})\s+(.*)$")
# "5. ", "5.3 ", "7.2.6 ", "A.1 " at the start of a heading, or "Exercise A.1:".
HAND_NUMBER = re.compile(r"^(?:\d+(?:\.\d+)*\.?|[A-Z]\.\d+(?:\.\d+)*\.?)\s|\b[A-Z]\.\d+\b")
APPENDIX_TITLE = re.compile(r"^Appendix [A-Z]: \S")


def cells(notebook: Path) -> list[nbformat.NotebookNode]:
    return nbformat.read(REPO_ROOT / notebook, as_version=4).cells


def markdown_headings(source: str) -> list[tuple[int, str]]:
    """(level, text) of each Markdown heading, skipping fenced code blocks."""
    found, fenced = [], False
    for line in source.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        elif not fenced and (heading := HEADING.match(line)):
            found.append((len(heading[1]), heading[2].strip()))
    return found


def test_there_are_notebooks_to_check() -> None:
    assert any(str(path).startswith("chapters/") for path in NOTEBOOKS)
    assert any(str(path).startswith("solutions/") for path in NOTEBOOKS)


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=str)
def test_no_cell_carries_an_nbval_comment(notebook: Path) -> None:
    marked = [index for index, cell in enumerate(cells(notebook)) if "NBVAL_" in cell.source]

    assert marked == [], f"cells {marked}: use a cell tag (nbval-check-output...), not a comment"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=str)
def test_cells_use_known_tags_on_code_only(notebook: Path) -> None:
    problems = []
    for index, cell in enumerate(cells(notebook)):
        tags = cell.metadata.get("tags", [])
        unknown = sorted(set(tags) - KNOWN_TAGS)
        if unknown:
            problems.append(f"cell {index}: unknown tags {unknown}")
        if tags and cell.cell_type != "code":
            problems.append(f"cell {index}: a {cell.cell_type} cell with tags {tags}")
        if len(tags) != len(set(tags)):
            problems.append(f"cell {index}: repeated tags {tags}")
        if {"nbval-check-output", "nbval-ignore-output"} <= set(tags):
            problems.append(f"cell {index}: both checks and ignores its output")
    assert problems == []


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=str)
def test_headings_carry_no_hand_written_numbers(notebook: Path) -> None:
    problems, titles = [], []
    for index, cell in enumerate(cells(notebook)):
        if cell.cell_type != "markdown":
            continue
        for level, text in markdown_headings(cell.source):
            if level == 1:
                titles.append(text)
            if level == 1 and APPENDIX_TITLE.match(text) and "appendix" in notebook.name:
                continue  # the one hand-lettered title
            if HAND_NUMBER.search(text.removeprefix("Solutions: ")):
                problems.append(f"cell {index}: {'#' * level} {text}")
    assert problems == []
    assert len(titles) == 1, f"one title (# heading) per notebook, found {titles}"
    if notebook.parts[0] == "solutions":
        assert titles[0].startswith("Solutions: "), titles[0]


# "same as the package's Block: False", "fused == explicit to 1e-6: False" ...
FAILED_COMPARISON = re.compile(
    r"\b(same|identical|match|matches|equal to|to 1e-\d+)\b[^\n]*:\s*False\s*$", re.I
)


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=str)
def test_no_saved_output_reports_a_failed_comparison(notebook: Path) -> None:
    """A cell that prints "same as the package's Block: True" shows the reader a check; saved
    with False, the page teaches something the code contradicts (nbval does not compare
    outputs, so only this test notices)."""
    failed = []
    for index, cell in enumerate(cells(notebook)):
        for output in cell.get("outputs", []):
            text = output.get("text", "") if output.get("output_type") == "stream" else ""
            failed += [f"cell {index}: {line}" for line in text.splitlines()
                       if FAILED_COMPARISON.search(line)]
    assert not failed, f"{notebook} was saved with failed comparisons: {failed}"
