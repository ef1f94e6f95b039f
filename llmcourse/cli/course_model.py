"""``llmcourse course-model``: train (once) or load the course's pretrained GPT, and show it."""

from __future__ import annotations

import argparse
import json
from typing import Any

from llmcourse.course_model import (
    course_model,
    course_model_dir,
    course_model_report,
    course_tokenizer,
    recipe_for,
    sample_generations,
)
from llmcourse.profiles import PROFILES, current_profile

# The report's fields that `--json` prints, beside the checkpoint directory and the samples.
JSON_FIELDS = (
    "recipe_name", "recipe_hash", "profile", "recipe", "vocab_size", "parameters",
    "non_embedding_parameters", "steps", "tokens_seen", "epochs", "train_loss", "val_loss",
    "val_perplexity", "validation_bits_per_byte", "validation_bytes_per_token", "wall_seconds",
    "tokens_per_second", "torch_threads", "total_seconds",
)


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "course-model",
        help="train or load the course's own pretrained GPT and print its report",
        description="Load the course's small GPT pretrained on the TinyStories sample from the "
        "cache, training it first when it is not there (minutes in the cpu profile, seconds in "
        "smoke). Prints its training report and greedy and top-k samples. Later chapters load "
        "the same model with llmcourse.course_model.course_model().",
    )
    parser.add_argument("--profile", choices=list(PROFILES), default=None,
                        help="run profile of the recipe (default: $LLMCOURSE_PROFILE, else cpu)")
    parser.add_argument("--retrain", action="store_true",
                        help="train again and replace the cached model")
    parser.add_argument("--json", action="store_true",
                        help="print the report as JSON: bits per byte, time, throughput, the "
                        "checkpoint directory, the recipe and seeded samples")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    profile = args.profile or current_profile().name
    recipe = recipe_for(profile)  # fails early, with advice, for a profile without a recipe
    model = course_model(profile, retrain=args.retrain)
    report, directory = course_model_report(profile), str(course_model_dir(profile))
    samples = sample_generations(model, course_tokenizer(profile), seed=recipe.run.training.seed)
    if args.json:
        summary = {key: report[key] for key in JSON_FIELDS}
        print(json.dumps({**summary, "checkpoint": directory, "samples": samples}, indent=2))
        return 0
    print(format_report(report, directory))
    print()
    print("Samples from the loaded model:")
    for sample in samples:
        print(format_sample(sample))
    return 0


def format_sample(sample: dict[str, str]) -> str:
    """``[decoding] prompt + continuation``, later lines of the text indented."""
    text = f"{sample['prompt']}{sample['text']}".rstrip().replace("\n", "\n    ")
    return f"[{sample['decoding']}] {text}"


def format_report(report: dict[str, Any], directory: str) -> str:
    """The report's main numbers, one per line."""
    model = report["recipe"]["model"]
    training = report["recipe"]["training"]
    return "\n".join([
        f"course model {report['recipe_name']}-{report['recipe_hash']} "
        f"(profile {report['profile']})",
        f"  cached in:   {directory}",
        f"  model:       {model['n_layer']} layers, {model['n_head']} heads, {model['n_embd']} "
        f"dims, context {model['context_length']}; {report['parameters']:,} parameters "
        f"({report['non_embedding_parameters']:,} without embeddings)",
        f"  tokenizer:   {report['recipe']['tokenizer']} ({report['vocab_size']:,} tokens, "
        f"{report['validation_bytes_per_token']:.2f} bytes per token of held-out text)",
        f"  data:        {report['recipe']['corpus']}, batch {report['recipe']['batch_size']}, "
        f"peak learning rate {training['learning_rate']:g}, seed {training['seed']}",
        f"  trained:     {report['steps']} steps, {report['tokens_seen']:,} tokens "
        f"({report['epochs']:.2f} epochs) in {report['wall_seconds']:.0f} s "
        f"({report['tokens_per_second']:,.0f} tokens/s, torch threads: {report['torch_threads']})",
        f"  final loss:  train {report['train_loss']:.3f}, validation {report['val_loss']:.3f} "
        f"(perplexity {report['val_perplexity']:.1f}); validation "
        f"{report['validation_bits_per_byte']:.3f} bits per byte",
    ])
