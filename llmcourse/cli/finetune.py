"""``llmcourse finetune ACTION``: adapt a pretrained GPT to a task; ``classify`` is the spam
filter of chapter 7.1. Each action is one ``_register_*`` function below."""

from __future__ import annotations

import argparse

import torch

from llmcourse import classification as cls
from llmcourse.pretrained import load_any
from llmcourse.tokenizers import gpt2_tokenizer


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "finetune",
        help="fine-tune a pretrained GPT for a task",
        description="Fine-tune a pretrained GPT (a checkpoint directory, a GPT-2 directory in "
        "the Hugging Face layout, or a GPT-2 name) for a task.",
    )
    actions = parser.add_subparsers(dest="finetune_action", required=True, metavar="ACTION")
    _register_classify(actions)


def _register_classify(actions: argparse._SubParsersAction) -> None:
    parser = actions.add_parser(
        "classify",
        help="train a spam classifier on the SMS Spam Collection",
        description="Replace the model's output layer by a 2-class head and fine-tune it on a "
        "balanced 70/10/20 split of the SMS Spam Collection. Prints the accuracies after each "
        "epoch and on the whole training, validation and test sets at the end, and saves the "
        "classifier in --out (use it with `llmcourse classify OUT TEXT...`).",
    )
    parser.add_argument("--base", required=True, metavar="MODEL",
                        help="checkpoint directory, GPT-2 directory or GPT-2 name (gpt2 ...)")
    parser.add_argument("--out", required=True, metavar="DIR", help="directory to save into")
    parser.add_argument("--strategy", default="last_block", choices=cls.STRATEGIES,
                        help="what trains (default: last_block, the book's recipe)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--lr", type=float, default=5e-5, help="AdamW learning rate")
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank (--strategy lora)")
    parser.add_argument("--alpha", type=float, default=16,
                        help="LoRA alpha: the update is scaled by alpha / rank")
    parser.add_argument("--read-position", default="last", choices=cls.READ_POSITIONS,
                        help="classify from the last position (the book's) or the message's "
                        "last token (last_real)")
    parser.add_argument("--eval-every", type=int, default=50, help="steps between loss checks")
    parser.add_argument("--eval-batches", type=int, default=5,
                        help="batches per loss and per-epoch accuracy check")
    parser.add_argument("--max-examples", type=int, default=None, metavar="N",
                        help="use at most N examples of each split (quick runs)")
    parser.add_argument("--seed", type=int, default=123)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, mps ...")
    parser.set_defaults(handler=run_classify)


def run_classify(args: argparse.Namespace) -> int:
    cls.check_save_destination(args.out)
    torch.manual_seed(args.seed)
    model = load_any(args.base, device=args.device)
    split = cls.balanced_split(cls.load_sms_spam(), seed=args.seed).truncated(args.max_examples)
    tokenizer = gpt2_tokenizer()
    loaders = cls.make_loaders(
        split, tokenizer, args.batch_size, model.config.context_length, seed=args.seed
    )
    cls.replace_head(model, num_classes=2)
    report = cls.freeze_for(model, args.strategy, rank=args.rank, alpha=args.alpha)
    print(f"{args.strategy}: {report.trainable:,} of {report.total:,} parameters train "
          f"({report.percent:.2f}%); {len(split.train)} training messages of up to "
          f"{loaders[0].dataset.max_length} tokens")
    cls.train_classifier(
        model,
        loaders[0],
        loaders[1],
        args.epochs,
        lr=args.lr,
        weight_decay=args.weight_decay,
        eval_every=args.eval_every,
        eval_batches=args.eval_batches,
        read_position=args.read_position,
        callbacks=[_EpochPrinter()],
    )
    for name, loader in zip(("train", "validation", "test"), loaders, strict=True):
        metrics = cls.evaluate(model, loader, read_position=args.read_position)
        print(f"{name} accuracy: {metrics.accuracy:.2%} (F1 {metrics.f1:.3f}, "
              f"{metrics.examples} messages)")
    classifier = cls.Classifier(model, loaders[0].dataset.max_length, args.read_position)
    cls.save_classifier(args.out, classifier)
    print(f"saved the classifier to {args.out}")
    return 0


class _EpochPrinter:
    """Prints the latest losses and the accuracies after each epoch."""

    def __init__(self) -> None:
        self.last_losses: cls.LossRecord | None = None

    def on_eval(self, record: cls.LossRecord) -> None:
        self.last_losses = record

    def on_epoch(self, record: cls.EpochRecord) -> None:
        losses = ""
        if self.last_losses is not None:
            losses = (f", train loss {self.last_losses.train_loss:.3f}, "
                      f"val loss {self.last_losses.val_loss:.3f}")
        print(f"epoch {record.epoch} (step {record.step}): train accuracy "
              f"{record.train_accuracy:.2%}, val accuracy {record.val_accuracy:.2%}{losses}")
