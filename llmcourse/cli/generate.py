"""``llmcourse generate``: continue a prompt with a trained checkpoint or OpenAI's GPT-2."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

from llmcourse.cli import options
from llmcourse.generation import generate_text
from llmcourse.gpt2_weights import load_model_and_tokenizer
from llmcourse.tokenizers.files import end_of_text_id


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "generate",
        help="continue a prompt with a model, streaming the text",
        description="Continue PROMPT with MODEL: a checkpoint directory written by "
        "`llmcourse pretrain` (text is encoded with the tokenizer saved in it), a GPT-2 "
        "checkpoint directory in the Hugging Face layout, or a GPT-2 name (gpt2, gpt2-medium, "
        "gpt2-large, gpt2-xl) downloaded from the hub. "
        "Temperature 0 (the default) decodes greedily.",
    )
    parser.add_argument("model", metavar="MODEL", help="checkpoint directory or GPT-2 name")
    parser.add_argument("prompt", metavar="PROMPT", help="the text to continue")
    parser.add_argument("-n", "--max-new-tokens", type=int, default=50, metavar="N")
    add_sampling_arguments(parser)
    parser.add_argument("--no-cache", action="store_true", help="recompute every position")
    parser.add_argument("--no-stream", action="store_true",
                        help="print the text once it is complete")
    parser.add_argument("--keep-going", action="store_true",
                        help="do not stop at the <|endoftext|> token")
    parser.set_defaults(handler=run)


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    """The decoding options of `generate` and `chat`: temperature, top-k, top-p and seed."""
    parser.add_argument("-t", "--temperature", type=float, default=0.0, metavar="T",
                        help="0 = greedy; higher = more varied (default 0)")
    parser.add_argument("-k", "--top-k", type=int, default=None, metavar="K",
                        help="sample only from the K most likely tokens")
    parser.add_argument("-p", "--top-p", type=float, default=None, metavar="P",
                        help="sample only from the smallest set of tokens with probability >= P")
    parser.add_argument("--seed", type=int, default=None, help="seed for reproducible sampling")


def run(args: argparse.Namespace) -> int:
    sampling = options.sampling(args)  # before the model is loaded and the prompt printed
    model, tokenizer = load_model_and_tokenizer(args.model)
    if not args.keep_going:
        sampling = replace(sampling, eos_id=end_of_text_id(tokenizer))
    stream = None if args.no_stream else _print_piece
    if stream is not None:
        _print_piece(args.prompt)
    text = generate_text(
        model,
        tokenizer,
        args.prompt,
        args.max_new_tokens,
        sampling,
        use_cache=not args.no_cache,
        stream=stream or False,
    )
    if stream is None:
        print(args.prompt + text)
    else:
        print()  # end the streamed line
    return 0


def _print_piece(piece: str) -> None:
    sys.stdout.write(piece)
    sys.stdout.flush()
