"""``llmcourse finetune ACTION``: adapt a pretrained GPT to a task; ``classify`` is the spam
filter of section 7.2, ``instruct`` the instruction following of section 7.3, ``prefer`` the
preference tuning (DPO) of section 7.4. Each action is one ``_register_*`` function below."""

from __future__ import annotations

import argparse
import copy
from collections.abc import Sequence
from pathlib import Path

import torch

from llmcourse import classification as cls
from llmcourse import instruction as inst
from llmcourse import preference as pref
from llmcourse.cli import options
from llmcourse.errors import CheckpointError, ConfigError, DataError, MissingFileError
from llmcourse.gpt2_weights import load_model_and_tokenizer
from llmcourse.instruction_scores import scores_table, scores_with_baselines
from llmcourse.model import GPT
from llmcourse.profiles import current_profile
from llmcourse.saving import write_json_atomic
from llmcourse.splits import Split
from llmcourse.story_instructions import TASKS, load_story_instructions
from llmcourse.tokenizers import Tokenizer
from llmcourse.tokenizers.files import end_of_text_id
from llmcourse.training import EvalRecord

INSTRUCTION_DATA = ("stories", "book")  # the named values of `finetune instruct --data`
STORY_CORPUS = "tinystories-2mib"  # the text that `--data stories` builds its instructions from
SPLIT_PARTS = ("train", "validation", "test")  # the keys of a JSON file that holds a split


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "finetune",
        help="fine-tune a pretrained GPT for a task",
        description="Fine-tune a pretrained GPT (a checkpoint directory, a GPT-2 directory in "
        "the Hugging Face layout, or a GPT-2 name) for a task.",
    )
    actions = parser.add_subparsers(dest="finetune_action", required=True, metavar="ACTION")
    _register_classify(actions)
    _register_instruct(actions)
    _register_prefer(actions)


def _add_common_arguments(parser: argparse.ArgumentParser, *, epochs: int) -> None:
    """The options both fine-tuning commands take: base model, output, optimizer, seed, device."""
    parser.add_argument("--base", required=True, metavar="MODEL",
                        help="checkpoint directory, GPT-2 directory or GPT-2 name (gpt2 ...)")
    parser.add_argument("--out", required=True, metavar="DIR", help="directory to save into")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the earlier output of this command in --out")
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--lr", type=float, default=5e-5, help="AdamW learning rate")
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=123)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, mps ...")


def _check_common_arguments(args: argparse.Namespace) -> None:
    """Refuse out-of-range values of the options ``_add_common_arguments`` adds (and of the
    evaluation and data options both actions have), naming the option, before any work."""
    for option in ("--epochs", "--batch-size", "--eval-every", "--eval-batches",
                   "--max-examples"):
        options.at_least(option, getattr(args, option[2:].replace("-", "_"), None))
    options.positive_number("--lr", args.lr)
    options.non_negative_number("--weight-decay", args.weight_decay)
    options.device(args.device)


def _register_classify(actions: argparse._SubParsersAction) -> None:
    parser = actions.add_parser(
        "classify",
        help="train a spam classifier on the SMS Spam Collection",
        description="Replace the model's output layer by a 2-class head and fine-tune it on a "
        "balanced 70/10/20 split of the SMS Spam Collection. Prints the accuracies after each "
        "epoch and on the whole training, validation and test sets at the end, and saves the "
        "classifier in --out (use it with `llmcourse classify OUT TEXT...`).",
    )
    _add_common_arguments(parser, epochs=5)
    parser.add_argument("--strategy", default="last_block", choices=cls.STRATEGIES,
                        help="what trains (default: last_block, the book's recipe)")
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
    parser.set_defaults(handler=run_classify)


def run_classify(args: argparse.Namespace) -> int:
    _check_common_arguments(args)
    options.at_least("--rank", args.rank)
    options.positive_number("--alpha", args.alpha)
    cls.check_save_destination(args.out, overwrite=args.overwrite)
    torch.manual_seed(args.seed)
    model, tokenizer = load_model_and_tokenizer(args.base, device=args.device)
    split = cls.balanced_split(cls.load_sms_spam(), seed=args.seed).truncated(args.max_examples)
    loaders = cls.make_loaders(
        split, tokenizer, args.batch_size, model.config.context_length, seed=args.seed
    )
    cls.replace_head(model, num_classes=2)
    report = cls.freeze_for(model, args.strategy, rank=args.rank, alpha=args.alpha)
    print(f"{args.strategy}: {report.trainable:,} of {report.total:,} parameters train "
          f"({report.percent:.2f}%); {len(split.train)} training messages of up to "
          f"{loaders[0].dataset.max_length} tokens")
    epoch_accuracy = cls.EpochAccuracy(
        model, loaders[0], loaders[1], eval_batches=args.eval_batches,
        read_position=args.read_position, verbose=True,
    )
    cls.train_classifier(
        model,
        loaders[0],
        loaders[1],
        args.epochs,
        learning_rate=args.lr,
        weight_decay=args.weight_decay,
        eval_every=args.eval_every,
        eval_batches=args.eval_batches,
        read_position=args.read_position,
        seed=args.seed,
        callbacks=[epoch_accuracy],
    )
    for name, loader in zip(("train", "validation", "test"), loaders, strict=True):
        metrics = cls.evaluate(model, loader, read_position=args.read_position)
        print(f"{name} accuracy: {metrics.accuracy:.2%} (F1 {metrics.f1:.3f}, "
              f"{metrics.examples} messages)")
    classifier = cls.Classifier(model, loaders[0].dataset.max_length, args.read_position,
                                pad_id=loaders[0].dataset.pad_id, tokenizer=tokenizer)
    cls.save_classifier(args.out, classifier)
    print(f"saved the classifier to {args.out}")
    return 0


def _register_instruct(actions: argparse._SubParsersAction) -> None:
    parser = actions.add_parser(
        "instruct",
        help="instruction-tune on story instructions or the book's 1,100 examples",
        description="Fine-tune every weight of the model on instruction data (--data) with "
        f"prompts in the chosen format. Saves the model in --out ({inst.MODEL_DIR}/ and "
        f"{inst.INSTRUCTION_FILE}; chat with it using `llmcourse chat OUT`). The test entries "
        "are answered twice with the same settings: by the model before fine-tuning (the "
        f"pretrained baseline) and after it (saved in {inst.RESPONSES_FILE}). "
        f"{inst.SCORES_FILE} scores the fine-tuned answers beside three baselines, the "
        "pretrained model's answers and the instruction or the input repeated as the answer: "
        "ROUGE-L F1 and token F1 against the references and, for story instructions, the "
        "share of answers that do what their task asks (llmcourse.story_instructions). Score "
        "the answers with an LLM judge through llmcourse.response_scoring.OllamaJudge.",
    )
    _add_common_arguments(parser, epochs=2)
    parser.add_argument("--format", default="alpaca", choices=inst.PROMPT_FORMATS,
                        help="prompt format (default: alpaca, the book's)")
    parser.add_argument("--max-length", type=int, default=None, metavar="N",
                        help="cut training sequences to N tokens (default: the model's context)")
    parser.add_argument("--mask-prompt", action="store_true",
                        help="train on the response tokens only, not on the prompt's")
    parser.add_argument("--eval-every", type=int, default=5, help="steps between loss checks")
    parser.add_argument("--eval-batches", type=int, default=5, help="batches per loss check")
    parser.add_argument("--max-examples", type=int, default=None, metavar="N",
                        help="use at most N entries of each split (quick runs)")
    parser.add_argument("--max-new-tokens", type=int, default=256, metavar="N",
                        help="longest test-set answer, in tokens")
    parser.add_argument("--data", default=None, metavar="DATA",
                        help="stories: instructions built from the TinyStories sample, with "
                        "answers that can be checked (those whose prompt and answer fit "
                        "--max-length tokens); book: the course's 1,100 entries, split 85/5/10 "
                        "as in the book; or the path of a JSON file that holds a list of "
                        "{instruction, input, output} entries (split 85/5/10; an entry may also "
                        "name its story instruction task) or an object of \"train\", "
                        "\"validation\" and \"test\" lists, used as given (default: the run "
                        "profile's, from $LLMCOURSE_PROFILE: book in the gpt2 profile, else "
                        "stories)")
    parser.set_defaults(handler=run_instruct)


def run_instruct(args: argparse.Namespace) -> int:
    out = Path(args.out)
    _check_common_arguments(args)
    options.at_least("--max-new-tokens", args.max_new_tokens)
    options.at_least("--max-length", args.max_length)
    inst.check_save_destination(out, overwrite=args.overwrite)
    data = args.data if args.data is not None else current_profile().instruction_data
    # Every --data but stories is read and checked now, before the model is loaded.
    loaded = None if data == "stories" else _load_instruction_split(data)
    model, tokenizer = load_model_and_tokenizer(args.base, device=args.device)
    max_length = _instruct_max_length(args.max_length, model.config.context_length)
    if loaded is None:
        stories = load_story_instructions(
            STORY_CORPUS, fits=inst.fits_context(tokenizer, max_length, args.format))
        if not stories.train:
            raise ConfigError(
                f"no story instruction fits {max_length} tokens with {args.format} prompts; "
                "use a larger --max-length or a model with a longer context"
            )
        loaded = stories, (f"story instructions from {STORY_CORPUS} whose prompt and answer "
                           f"fit {max_length} tokens")
    split, description = loaded
    print(f"data: {data}, {description}: {_counts(split)}")
    split = split.truncated(args.max_examples)
    train_loader, val_loader, _ = inst.make_loaders(
        split, tokenizer, prompt_format=args.format, batch_size=args.batch_size,
        max_length=max_length, mask_prompt=args.mask_prompt, pad_id=end_of_text_id(tokenizer),
        seed=args.seed,
    )
    print(f"{_counts(split)}; {args.format} prompts of up to {max_length} tokens, "
          f"{len(train_loader)} steps per epoch")
    pretrained_responses = _test_responses(model, tokenizer, split.test, args)
    inst.train_instruction_model(
        model, train_loader, val_loader, epochs=args.epochs, learning_rate=args.lr,
        weight_decay=args.weight_decay, eval_every=args.eval_every,
        eval_batches=args.eval_batches, seed=args.seed, callbacks=[_LossPrinter()],
    )
    settings = {name: getattr(args, name) for name in (
        "base", "epochs", "lr", "weight_decay", "batch_size", "mask_prompt", "seed")}
    inst.save_instruction_model(
        out, model, args.format, {**settings, "max_length": max_length, "data": data},
        tokenizer=tokenizer,
    )
    print(f"saved the model to {out}")
    if split.test:
        responses = _test_responses(model, tokenizer, split.test, args)
        _save_test_answers(responses, pretrained_responses, out)
    return 0


def _register_prefer(actions: argparse._SubParsersAction) -> None:
    parser = actions.add_parser(
        "prefer",
        help="preference-tune an instruction-tuned model with DPO on its own answers",
        description="Starting from a directory of `llmcourse finetune instruct`, sample "
        "--samples answers to each of --instructions story instructions, keep a preference "
        "pair where one answer meets the task's criterion and another does not (the reference "
        "answer is chosen when none does), and train with DPO against a frozen copy of the "
        f"model. Saves the model in --out like `finetune instruct` ({inst.MODEL_DIR}/ and "
        f"{inst.INSTRUCTION_FILE}), answers the story test instructions into "
        f"{inst.RESPONSES_FILE}, and scores them in {inst.SCORES_FILE} beside the "
        "instruction-tuned model's answers (baseline instruction_tuned) and the two echo "
        "baselines.",
    )
    _add_common_arguments(parser, epochs=1)
    parser.set_defaults(lr=5e-5, weight_decay=0.0, handler=run_prefer)
    parser.add_argument("--instructions", type=int, default=None, metavar="N",
                        help="training instructions to sample answers for (default: the run "
                        "profile's, 600 in the cpu profile)")
    parser.add_argument("--samples", type=int, default=4, help="answers sampled per instruction")
    parser.add_argument("--beta", type=float, default=0.5,
                        help="DPO's beta: how far the model may move from the reference")
    parser.add_argument("--max-new-tokens", type=int, default=64, metavar="N",
                        help="longest sampled or test answer, in tokens")
    parser.add_argument("--max-examples", type=int, default=None, metavar="N",
                        help="use at most N test instructions (quick runs)")


def run_prefer(args: argparse.Namespace) -> int:
    out = Path(args.out)
    _check_common_arguments(args)
    options.at_least("--samples", args.samples)
    options.at_least("--instructions", args.instructions)
    options.at_least("--max-new-tokens", args.max_new_tokens)
    options.positive_number("--beta", args.beta)
    inst.check_save_destination(out, overwrite=args.overwrite)
    tuned = inst.load_instruction_model(args.base, device=args.device)
    model, fmt, tokenizer = tuned.model, tuned.prompt_format, tuned.tokenizer
    if tokenizer is None:
        raise CheckpointError(f"{args.base} holds no tokenizer file; fine-tune it again with "
                          "`llmcourse finetune instruct`")
    context = model.config.context_length
    split = load_story_instructions(STORY_CORPUS, fits=inst.fits_context(tokenizer, context, fmt))
    test = split.test[:args.max_examples]
    count = args.instructions or current_profile().preference_instructions
    instructions = pref.subsample(split.train, count, seed=args.seed)
    print(f"sampling {args.samples} answers to each of {len(instructions)} story instructions")
    pairs = pref.build_preference_pairs(
        model, tokenizer, instructions, samples=args.samples, max_new_tokens=args.max_new_tokens,
        prompt_format=fmt, seed=args.seed)
    print(f"{len(pairs)} preference pairs ({sum(p.chosen_is_reference for p in pairs)} with the "
          "reference answer as the chosen one)")
    before = inst.generate_responses(model, tokenizer, test, args.max_new_tokens,
                                     prompt_format=fmt)
    loader = pref.pair_loader(pairs, tokenizer, batch_size=args.batch_size, max_length=context,
                              prompt_format=fmt, seed=args.seed)
    _, metrics = pref.train_dpo(
        model, copy.deepcopy(model), loader, beta=args.beta, epochs=args.epochs,
        learning_rate=args.lr, weight_decay=args.weight_decay, eval_every=len(loader),
        eval_batches=1, seed=args.seed)
    margins = metrics.values["reward_margin"]
    print(f"{len(metrics.steps)} DPO steps; reward margin of the last steps "
          f"{sum(margins[-10:]) / len(margins[-10:]):.3f}")
    settings = {name: getattr(args, name) for name in (
        "base", "epochs", "lr", "weight_decay", "batch_size", "seed", "samples", "beta")}
    inst.save_instruction_model(out, model, fmt, {**settings, "data": "stories",
                                                  "preference_pairs": len(pairs)},
                                tokenizer=tokenizer)
    print(f"saved the model to {out}")
    after = inst.generate_responses(model, tokenizer, test, args.max_new_tokens,
                                    prompt_format=fmt)
    inst.save_responses(out / inst.RESPONSES_FILE, after)
    scores = scores_with_baselines(after, instruction_tuned=before)
    write_json_atomic(out / inst.SCORES_FILE, scores)
    print(f"test set: {len(after)} responses, scored beside the instruction-tuned model's (in "
          f"{out / inst.SCORES_FILE}):")
    print(scores_table(scores, model_name="after DPO"))
    return 0


def _load_instruction_split(data: str) -> tuple[Split, str]:
    """The split that ``--data`` names when it is not ``stories`` (which needs the model's
    tokenizer), and a few words on it: ``book`` or the path of a JSON file (see the option's
    help). A missing or malformed file raises ``CourseError``, with a one-line message except
    for malformed entries, which ``inst.validate_entries`` lists one a line."""
    if data == "book":
        entries = inst.load_instruction_data()
        return inst.split_entries(entries), f"the course's {len(entries):,} entries split 85/5/10"
    path = Path(data)
    if not path.is_file():
        raise MissingFileError(
            f"--data must be {', '.join(INSTRUCTION_DATA)} or the path of a JSON file of "
            f"instruction entries; there is no file at {data}"
        )
    value = inst.read_json(path)
    if isinstance(value, dict):
        if sorted(value) != sorted(SPLIT_PARTS):
            keys = ", ".join(repr(key) for key in value) or "none"
            raise DataError(
                f"{path} holds an object with the keys {keys}; a split is an object with "
                "exactly the lists \"train\", \"validation\" and \"test\""
            )
        parts = [_checked_entries(value[name], f"{path} ({name!r})", may_be_empty=name != "train")
                 for name in SPLIT_PARTS]
        return Split(*parts), "train, validation and test parts as given"
    entries = _checked_entries(value, str(path))
    return inst.split_entries(entries), f"{len(entries):,} entries split 85/5/10"


def _checked_entries(value: object, source: str, may_be_empty: bool = False
                     ) -> list[inst.Entry]:
    """``value`` when it is a list of entries (``inst.validate_entries``) whose tasks, where
    they have one, are story instruction tasks; an empty list only when ``may_be_empty``."""
    if may_be_empty and value == []:
        return []
    entries = inst.validate_entries(value, source=source)
    for index, entry in enumerate(entries):
        if "task" in entry and entry["task"] not in TASKS:
            raise DataError(
                f"{source}: entry {index} has the task {entry['task']!r}; story instruction "
                f"tasks are {', '.join(TASKS)} (entries without a task need no \"task\" field)"
            )
    return entries


def _counts(split: Split) -> str:
    return (f"{len(split.train)} training, {len(split.validation)} validation and "
            f"{len(split.test)} test entries")


def _instruct_max_length(requested: int | None, context_length: int) -> int:
    if requested is None:
        return context_length
    if not 1 <= requested <= context_length:
        raise ConfigError(
            f"--max-length must be between 1 and the model's context of {context_length} "
            f"tokens, got {requested}"
        )
    return requested


def _test_responses(
    model: GPT, tokenizer: Tokenizer, entries: Sequence[inst.Entry],
    args: argparse.Namespace,
) -> list[dict[str, str]]:
    """The model's answers to the test entries, with the command's generation settings."""
    return inst.generate_responses(
        model, tokenizer, entries, args.max_new_tokens, prompt_format=args.format
    )


def _save_test_answers(
    responses: list[dict[str, str]], pretrained_responses: list[dict[str, str]], out: Path
) -> None:
    """Save the fine-tuned model's test answers, then their scores beside the baselines', and
    print the scores."""
    inst.save_responses(out / inst.RESPONSES_FILE, responses)
    scores = scores_with_baselines(responses, pretrained_responses)
    write_json_atomic(out / inst.SCORES_FILE, scores)
    print(f"test set: {len(responses)} responses (in {out / inst.RESPONSES_FILE}), scored beside "
          f"the baselines (in {out / inst.SCORES_FILE}):")
    print(scores_table(scores))


class _LossPrinter:
    """Prints the losses of every evaluation."""

    def on_eval(self, record: EvalRecord) -> None:
        val_loss = f"{record.val_loss:.3f}" if record.val_loss is not None else "-"
        print(f"step {record.step}: train loss {record.train_loss:.3f}, val loss {val_loss}")
