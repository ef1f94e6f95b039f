"""``llmcourse data``: list the course's data files and fetch them into the cache."""

from __future__ import annotations

import argparse

from llmcourse import datasets
from llmcourse.errors import CourseError

_COLUMNS = ("name", "bytes", "license", "local copy", "url")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``data list`` and ``data fetch`` to the ``llmcourse`` command."""
    parser = subparsers.add_parser("data", help="list and fetch the course's data files")
    actions = parser.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    list_parser = actions.add_parser("list", help="show every data file and where it is")
    list_parser.set_defaults(handler=list_files)

    fetch_parser = actions.add_parser(
        "fetch",
        help="get data files (mirror, cache or download) and print their paths",
        description=f"Each file comes from ${datasets.MIRROR_ENV} if it holds it, else from "
        f"the cache ${datasets.CACHE_ENV}/data (default {datasets.DEFAULT_CACHE_ROOT}/data), "
        "else from its URL; every copy is checked against its sha256.",
    )
    fetch_parser.add_argument("names", nargs="*", metavar="NAME", help="data files to fetch")
    fetch_parser.add_argument("--all", action="store_true", help="fetch every data file")
    fetch_parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    fetch_parser.set_defaults(handler=fetch_files)


def local_copy(entry: datasets.DataFile) -> str:
    """Where a verified copy of ``entry`` is: 'mirror', 'cache', 'corrupt ...' or '-'."""
    for place, path in (
        ("mirror", datasets.mirror_path(entry.name)),
        ("cache", datasets.cache_path(entry.name)),
    ):
        if path is not None and path.is_file():
            return place if datasets.is_intact(path, entry) else f"corrupt {place} copy"
    return "-"


def list_files(args: argparse.Namespace) -> int:
    """Print a table of the registry: name, size, license, local copy, URL."""
    rows = [_COLUMNS] + [
        (e.name, f"{e.size:,}", e.license, local_copy(e), e.url) for e in datasets.registry()
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(len(_COLUMNS) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)] + [row[-1]]
        print("  ".join(cells))
    return 0


def fetch_files(args: argparse.Namespace) -> int:
    """Fetch the named files (or all) and print ``name  path`` for each; stops at a failure."""
    if args.all == bool(args.names):
        known = ", ".join(entry.name for entry in datasets.registry())
        raise CourseError(f"name the data files to fetch or pass --all (not both); known: {known}")
    names = [entry.name for entry in datasets.registry()] if args.all else args.names
    for name in names:
        datasets.get(name)  # unknown names fail before anything is downloaded
    width = max(map(len, names))
    for name in names:
        print(f"{name.ljust(width)}  {datasets.fetch(name, quiet=args.quiet)}", flush=True)
    return 0
