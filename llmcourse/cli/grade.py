"""``llmcourse grade``: run a learner's notebook and print the scorecard of its exercises."""

from __future__ import annotations

import argparse

from llmcourse.errors import ConfigError, ToolError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``grade`` to the ``llmcourse`` command."""
    parser = subparsers.add_parser(
        "grade",
        help="run a notebook and print the scorecard of its exercises",
        description="Runs NOTEBOOK from top to bottom in a fresh kernel (in the notebook's "
        "folder, non-strict checks, $LLMCOURSE_PROFILE inherited) and prints the result of "
        "every exercise of its chapter, as the checks reported it while they ran (an exercise "
        "never checked is 'missing'), and the cells that raised. The notebook file is not "
        "changed. Exit status: 0 when nothing failed, 1 when an exercise failed, errored or "
        "timed out or a cell raised (or, with --require-all, an exercise was not attempted or "
        "is missing), 2 for bad input.",
    )
    parser.add_argument("notebook", metavar="NOTEBOOK", help="path of the .ipynb file")
    parser.add_argument(
        "--timeout", type=int, metavar="S",
        help="seconds one cell may run before it is interrupted and counts as raising; a cell "
        "that ignores the interrupt has its kernel killed 10 s later (default: 600)",
    )
    parser.add_argument(
        "--require-all", action="store_true",
        help="count an exercise that was not attempted or is missing as a failure",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(handler=grade)


def grade(args: argparse.Namespace) -> int:
    """Grade ``args.notebook``, print its scorecard; 0 when it succeeded, else 1."""
    if args.timeout is not None and args.timeout <= 0:
        raise ConfigError(f"--timeout must be a positive number of seconds, got {args.timeout}")
    try:  # the Jupyter packages are needed only here, so every other command starts faster
        from llmcourse.exercises.grading import grade_notebook
    except ImportError as error:
        raise ToolError(
            f"grading notebooks needs nbclient, nbformat and ipykernel ({error}); "
            "install them with: pip install nbclient nbformat ipykernel"
        ) from error
    card = grade_notebook(args.notebook, timeout=args.timeout, progress=not args.quiet)
    print(card.table())
    return 0 if card.succeeded(require_all=args.require_all) else 1
