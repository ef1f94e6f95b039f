"""``llmcourse data``: list the course's data files, fetch them into the cache, and build the
story instruction data set from TinyStories."""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from llmcourse import data_files
from llmcourse.errors import ConfigError, DestinationError
from llmcourse.saving import write_json_atomic
from llmcourse.story_instructions import TASKS, load_story_instructions

_COLUMNS = ("name", "bytes", "license", "local copy", "url")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``data list``, ``data fetch`` and ``data story-instructions`` to the ``llmcourse``
    command."""
    parser = subparsers.add_parser(
        "data", help="list and fetch the course's data files, build story instructions"
    )
    actions = parser.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    list_parser = actions.add_parser("list", help="show every data file and where it is")
    list_parser.set_defaults(handler=list_files)

    fetch_parser = actions.add_parser(
        "fetch",
        help="get data files (mirror, cache or download) and print their paths",
        description=f"Each file comes from ${data_files.MIRROR_ENV} if it holds it, else from "
        f"the cache ${data_files.CACHE_ENV}/data (default {data_files.DEFAULT_CACHE_ROOT}/data), "
        "else from its URL; every copy is checked against its sha256.",
    )
    fetch_parser.add_argument("names", nargs="*", metavar="NAME", help="data files to fetch")
    fetch_parser.add_argument("--all", action="store_true", help="fetch every data file")
    fetch_parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    fetch_parser.set_defaults(handler=fetch_files)

    stories_parser = actions.add_parser(
        "story-instructions",
        help="build the story instruction data set and write it as JSON",
        description="Build instructions with checkable answers from a TinyStories text "
        "(llmcourse.story_instructions): training entries from the stories pretraining trains "
        "on, validation and test entries from the held-out stories. Writes an object of "
        "\"train\", \"validation\" and \"test\" lists of {instruction, input, output, task} "
        "entries, which `llmcourse finetune instruct --data FILE` uses as given, and prints "
        "the number of entries of each part and task.",
    )
    stories_parser.add_argument("--out", required=True, metavar="FILE",
                                help="the JSON file to write")
    stories_parser.add_argument("--corpus", default="tinystories-2mib", metavar="NAME",
                                help="a data file of the registry or a local text file of "
                                "stories separated by <|endoftext|> (default: tinystories-2mib)")
    stories_parser.add_argument("--seed", type=int, default=123,
                                help="seed of the chosen words, new names and training order")
    stories_parser.add_argument("--val-fraction", type=float, default=0.1, metavar="F",
                                help="share of the text held out, as pretraining holds it out "
                                "(default: 0.1)")
    stories_parser.add_argument("--overwrite", action="store_true",
                                help="replace FILE if it exists")
    stories_parser.set_defaults(handler=write_story_instructions)


def local_copy(entry: data_files.DataFile) -> str:
    """Where a verified copy of ``entry`` is: 'mirror', 'cache', 'corrupt ...' or '-'."""
    for place, path in (
        ("mirror", data_files.mirror_path(entry.name)),
        ("cache", data_files.cache_path(entry.name)),
    ):
        if path is not None and path.is_file():
            return place if data_files.is_intact(path, entry) else f"corrupt {place} copy"
    return "-"


def list_files(args: argparse.Namespace) -> int:
    """Print a table of the registry: name, size, license, local copy, URL."""
    rows = [_COLUMNS] + [
        (e.name, f"{e.size:,}", e.license, local_copy(e), e.url) for e in data_files.registry()
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(len(_COLUMNS) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)] + [row[-1]]
        print("  ".join(cells))
    return 0


def fetch_files(args: argparse.Namespace) -> int:
    """Fetch the named files (or all) and print ``name  path`` for each; stops at a failure."""
    if args.all == bool(args.names):
        known = ", ".join(entry.name for entry in data_files.registry())
        raise ConfigError(f"name the data files to fetch or pass --all (not both); known: {known}")
    names = [entry.name for entry in data_files.registry()] if args.all else args.names
    for name in names:
        data_files.get(name)  # unknown names fail before anything is downloaded
    width = max(map(len, names))
    for name in names:
        print(f"{name.ljust(width)}  {data_files.fetch(name, quiet=args.quiet)}", flush=True)
    return 0


def write_story_instructions(args: argparse.Namespace) -> int:
    """Build the story instructions of ``args.corpus``, write them to ``args.out`` and print
    the entries per part and per task."""
    out = Path(args.out)
    if out.is_dir():
        raise DestinationError(f"cannot write the story instructions to {out}: it is a directory")
    if out.exists() and not args.overwrite:
        raise DestinationError(f"{out} exists; pass --overwrite to replace it")
    if not 0.0 < args.val_fraction < 1.0:
        raise ConfigError(f"--val-fraction must be between 0 and 1, got {args.val_fraction}")
    split = load_story_instructions(args.corpus, val_fraction=args.val_fraction, seed=args.seed)
    parts = {"train": split.train, "validation": split.validation, "test": split.test}
    write_json_atomic(out, parts)
    print(f"wrote {out}: {len(split.train)} training, {len(split.validation)} validation and "
          f"{len(split.test)} test entries")
    counts = {name: Counter(entry["task"] for entry in part) for name, part in parts.items()}
    rows = [("task", *parts)] + [
        (task, *(str(counts[name][task]) for name in parts)) for task in TASKS
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) if column == 0 else cell.rjust(width)
                        for column, (cell, width) in enumerate(zip(row, widths, strict=True))))
    return 0
