"""``llmcourse pretrain``: train a GPT from scratch on a corpus and save a checkpoint."""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import replace

import torch

from llmcourse.cli import options
from llmcourse.distributed import DistributedContext, cleanup, init_distributed
from llmcourse.model import PRESETS, GPTConfig
from llmcourse.pretraining import PretrainingRun, check_output, pretrain, run_tokenizer
from llmcourse.training import TrainingConfig, TrainingInterrupted


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "pretrain",
        help="train a GPT from scratch on a text corpus",
        description="Train a GPT on CORPUS (a data registry name such as tinystories-2mib or "
        "the-verdict, or a UTF-8 text file) and save the checkpoint, with its tokenizer, in "
        "--out. The corpus is tokenized once and cached. The checkpoint is rewritten every "
        "--checkpoint-every steps, so an interrupted "
        "run continues exactly with --resume; a checkpoint already in --out is replaced only "
        "with --overwrite. Under torchrun --nproc_per_node=N it trains with "
        "DistributedDataParallel on N processes (NCCL on GPUs, gloo on CPUs); --batch-size is "
        "then the global batch, split among them.",
    )
    parser.add_argument("corpus", metavar="CORPUS")
    parser.add_argument("--out", required=True, help="checkpoint directory to write")
    parser.add_argument("--preset", default="course-small", choices=list(PRESETS))
    parser.add_argument(
        "--tokenizer", default="gpt2", metavar="SPEC",
        help="gpt2 (GPT-2's BPE, the default), bpe-N (a BPE of N tokens trained on the "
        "corpus' training text, e.g. bpe-4096) or a tokenizer file; the model's vocabulary "
        "follows it",
    )
    parser.add_argument("--context-length", type=int, help="override the preset's context")
    parser.add_argument("--dropout", type=float, default=0.0)
    length = parser.add_mutually_exclusive_group(required=True)
    length.add_argument("--steps", type=int, help="number of optimizer steps")
    length.add_argument("--epochs", type=int, help="number of passes over the training text")
    parser.add_argument(
        "--batch-size", type=int, default=8, help="windows per step, over all processes"
    )
    parser.add_argument("--lr", type=float, default=4e-4, help="peak learning rate")
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--warmup-steps", type=int, default=0)
    parser.add_argument("--grad-clip", type=float, default=1.0)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--eval-batches", type=int, default=10)
    parser.add_argument("--checkpoint-every", type=int, default=None)
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--max-characters", type=int, help="use only the corpus' first N chars")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast (CPU or GPU)")
    parser.add_argument("--seed", type=int, default=0)
    existing = parser.add_mutually_exclusive_group()
    existing.add_argument("--resume", action="store_true", help="continue the run in --out")
    existing.add_argument("--overwrite", action="store_true",
                          help="start a new run in --out, replacing the checkpoint there")
    parser.set_defaults(handler=run)


def check_options(args: argparse.Namespace) -> None:
    """Refuse option values out of range, naming the option, before any work is done."""
    options.at_least("--context-length", args.context_length)
    options.between("--dropout", args.dropout, 0, 1, include_low=True,
                    meaning=" (the probability of dropping an activation)")
    for option in ("--steps", "--epochs", "--batch-size", "--eval-every", "--eval-batches",
                   "--checkpoint-every", "--max-characters"):
        options.at_least(option, getattr(args, option[2:].replace("-", "_")))
    options.at_least("--warmup-steps", args.warmup_steps, 0)
    options.positive_number("--lr", args.lr)
    options.non_negative_number("--weight-decay", args.weight_decay)
    options.positive_number("--grad-clip", args.grad_clip)
    options.between("--val-fraction", args.val_fraction, 0, 1,
                    meaning=" (the share of the corpus held out for validation, such as 0.1)")


def run(args: argparse.Namespace) -> int:
    check_options(args)
    check_output(args.out, resume=args.resume, overwrite=args.overwrite)
    overrides = {"dropout": args.dropout}
    if args.context_length is not None:
        overrides["context_length"] = args.context_length
    training = TrainingConfig(
        learning_rate=args.lr,
        weight_decay=args.weight_decay,
        max_steps=args.steps,
        epochs=args.epochs,
        warmup_steps=args.warmup_steps,
        grad_clip=args.grad_clip,
        eval_every=args.eval_every,
        eval_batches=args.eval_batches,
        seed=args.seed,
        autocast_dtype=torch.bfloat16 if args.bf16 else None,
        checkpoint_every=args.checkpoint_every,
        checkpoint_dir=args.out,
    )
    spec = PretrainingRun(
        corpus=args.corpus,
        model=GPTConfig.preset(args.preset, **overrides),
        tokenizer=args.tokenizer,
        batch_size=args.batch_size,
        val_fraction=args.val_fraction,
        max_characters=args.max_characters,
        training=training,
    )
    vocab_size = run_tokenizer(spec).n_vocab
    spec = replace(spec, model=replace(spec.model, vocab_size=vocab_size))
    context = init_distributed()
    try:
        _, history = pretrain(spec, args.out, resume=args.resume, overwrite=args.overwrite)
    except TrainingInterrupted as interrupt:
        if not context.is_main:
            raise KeyboardInterrupt from None
        raise KeyboardInterrupt(interrupted_message(interrupt, args, context)) from None
    finally:
        cleanup()
    if not context.is_main:
        return 0
    last = history.evals[-1]
    bits = f" ({last.val_bits_per_byte:.3f} bits/byte)" if last.val_bits_per_byte else ""
    print(
        f"step {last.step}: train loss {last.train_loss:.3f}, val loss {last.val_loss:.3f}{bits}; "
        f"{history.tokens_seen:,} tokens in {history.elapsed_seconds:.0f} s "
        f"({history.tokens_per_second:,.0f} tokens/s); checkpoint: {args.out}"
    )
    return 0


def interrupted_message(
    interrupt: TrainingInterrupted, args: argparse.Namespace, context: DistributedContext
) -> str:
    """Where the interrupted run's last checkpoint is, and the command that continues it (or,
    without a checkpoint, the one that starts it again)."""
    command_line = list(getattr(args, "command_line", sys.argv[1:]))
    launcher = ["llmcourse"]
    if context.world_size > 1:
        launcher = ["torchrun", f"--nproc_per_node={context.world_size}", "-m", "llmcourse"]
    progress = f"interrupted after step {interrupt.steps_done} of {interrupt.total_steps}"
    if interrupt.checkpoint_step is None:
        if args.checkpoint_every is None:
            when = ("this run saves only after its last step; add --checkpoint-every N to save "
                    "every N steps")
        else:
            when = f"the first comes after step {args.checkpoint_every}"
        return (f"{progress}, before the run's first checkpoint ({when}); nothing to resume. "
                f"Start again with: {shlex.join([*launcher, *command_line])}")
    if not args.resume:  # --overwrite would start the run again: continue it instead
        command_line = [*(arg for arg in command_line if arg != "--overwrite"), "--resume"]
    return (f"{progress}; the last checkpoint, of step {interrupt.checkpoint_step}, is in "
            f"{args.out}. Continue the run with: {shlex.join([*launcher, *command_line])}")
