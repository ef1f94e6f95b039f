"""The ``llmcourse`` command: one sub-command module per task."""

from __future__ import annotations

import argparse
import sys

from llmcourse.cli import (
    book,
    chat,
    classify,
    course_model,
    data,
    finetune,
    generate,
    grade,
    pretrain,
)
from llmcourse.errors import CourseError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llmcourse",
        description="Build, train, fine-tune and run the course's GPT models.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (
        data, pretrain, course_model, finetune, classify, generate, chat, grade, book
    ):
        module.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``llmcourse`` console script; returns the exit status.

    The handlers see the arguments as given in ``args.command_line`` (to print a command to
    run next). A KeyboardInterrupt's message, when it has one, says what was saved and how to
    continue."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.command_line = argv
    try:
        return args.handler(args) or 0
    except CourseError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        print(str(interrupt) or "interrupted", file=sys.stderr)
        return 130
