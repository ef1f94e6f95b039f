"""``llmcourse classify``: label texts with a classifier from ``llmcourse finetune classify``."""

from __future__ import annotations

import argparse

from llmcourse.classification import load_classifier
from llmcourse.cli import options


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "classify",
        help="label texts with a fine-tuned classifier",
        description="Print the predicted label and its probability for each TEXT, one line "
        "each: LABEL<TAB>PROBABILITY<TAB>TEXT.",
    )
    parser.add_argument("checkpoint", metavar="CHECKPOINT",
                        help="directory written by `llmcourse finetune classify`")
    parser.add_argument("texts", nargs="+", metavar="TEXT")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, mps ...")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    options.device(args.device)
    classifier = load_classifier(args.checkpoint, device=args.device)
    for text in args.texts:
        label, probability = classifier.classify(text)
        print(f"{label}\t{probability:.3f}\t{text}")
    return 0
