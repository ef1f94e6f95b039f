"""``llmcourse book``: build the course's Jupyter Book into static HTML that works offline."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``book build`` to the ``llmcourse`` command."""
    parser = subparsers.add_parser("book", help="build the course's book")
    actions = parser.add_subparsers(dest="book_command", required=True, metavar="ACTION")

    build_parser = actions.add_parser(
        "build",
        help="build the HTML book from the notebooks' saved outputs",
        description="Fetch the book's local JavaScript (plotly.js, MathJax, widgets) into "
        "book_assets/, then run jupyter-book with warnings as errors. Notebooks are not run.",
    )
    build_parser.add_argument(
        "--root", type=Path, default=Path("."), help="folder holding _config.yml (default: .)"
    )
    build_parser.set_defaults(handler=build)


def build(args: argparse.Namespace) -> int:
    """Build the book and print the address of its first page."""
    from llmcourse.book_build import build_book  # plotly and IPython: imported only to build

    index = build_book(args.root)
    print(f"The book is built: open {index.as_uri()}")
    return 0
