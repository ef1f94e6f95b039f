"""``llmcourse chat``: talk to an instruction-tuned model, one instruction per line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import tiktoken
import torch

from llmcourse import instruction as inst
from llmcourse.cli import options
from llmcourse.cli.generate import add_sampling_arguments
from llmcourse.generation import decode_stream, stream_generate
from llmcourse.gpt2_weights import load_model_and_tokenizer
from llmcourse.model import GPT
from llmcourse.tokenizers.files import end_of_text_id, load_tokenizer

QUIT = "/quit"


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "chat",
        help="chat with an instruction-tuned model",
        description="Read instructions from standard input, one per line, and stream the "
        "model's answer to each. Each instruction is answered on its own (the model does not "
        f"see earlier turns). Stop with {QUIT} or end of input (Ctrl-D). CHECKPOINT is a "
        "directory written by `llmcourse finetune instruct` (its prompt format is used), or any "
        "model `llmcourse generate` accepts (prompted in --format).",
    )
    parser.add_argument("checkpoint", metavar="CHECKPOINT",
                        help="directory from `llmcourse finetune instruct`, or any model")
    parser.add_argument("-n", "--max-new-tokens", type=int, default=256, metavar="N")
    add_sampling_arguments(parser)
    parser.add_argument("--format", default=None, choices=inst.PROMPT_FORMATS,
                        help="prompt format (default: the checkpoint's, else alpaca)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, mps ...")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    options.device(args.device)
    sampling = options.sampling(args, device=args.device)  # before the model is loaded
    model, tokenizer, prompt_format = load_chat_model(args.checkpoint, args.format, args.device)
    end_id = end_of_text_id(tokenizer)
    sampling = replace(sampling, eos_id=end_id)
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"Chatting with {args.checkpoint} ({prompt_format.name} prompts). Type an "
              f"instruction and press Enter; {QUIT} or Ctrl-D ends.", file=sys.stderr)
    for instruction in read_instructions(interactive):
        entry = {"instruction": instruction, "input": ""}
        ids = inst.generation_prompt(tokenizer, entry, prompt_format, model.config.context_length)
        new_ids = stream_generate(
            model, torch.tensor([ids], device=args.device), args.max_new_tokens, sampling
        )
        for piece in decode_stream(tokenizer, (token for token in new_ids if token != end_id)):
            sys.stdout.write(piece)
            sys.stdout.flush()
        print()
    return 0


def load_chat_model(
    checkpoint: str, format_name: str | None, device: str
) -> tuple[GPT, tiktoken.Encoding, inst.PromptFormat]:
    """The model of ``checkpoint``, its tokenizer and the prompt format to use: ``format_name``
    if given, else the one it was fine-tuned with, else alpaca."""
    if (Path(checkpoint) / inst.INSTRUCTION_FILE).is_file():
        tuned = inst.load_instruction_model(checkpoint, device=device)
        model, tokenizer, prompt_format = tuned.model, tuned.tokenizer, tuned.prompt_format
        if tokenizer is None:  # saved before checkpoints carried their tokenizer
            tokenizer = load_tokenizer(Path(checkpoint) / inst.MODEL_DIR,
                                       vocab_size=model.config.vocab_size)
    else:
        model, tokenizer = load_model_and_tokenizer(checkpoint, device=device)
        prompt_format = inst.PROMPT_FORMATS["alpaca"]
    if format_name is not None:
        prompt_format = inst.get_prompt_format(format_name)
    return model, tokenizer, prompt_format


def read_instructions(interactive: bool) -> Iterator[str]:
    """Non-empty lines of standard input, stripped, until end of input or ``/quit``. Shows a
    "> " prompt when a person types them."""
    while True:
        try:
            line = input("> " if interactive else "")
        except EOFError:
            if interactive:
                print(file=sys.stderr)
            return
        text = line.strip()
        if text == QUIT:
            return
        if text:
            yield text
