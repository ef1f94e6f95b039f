"""The course model's recipe against the earlier one, trained for the same wall-clock time.

The earlier cpu recipe used GPT-2's 50,257-token vocabulary; the current one uses the course
tokenizer (a BPE trained on the stories). Both train here, one after the other, for the same
number of seconds, through the package's own pretraining code (tokenizer, token cache, training
loop), and are scored on the whole held-out split in bits per byte, which does not depend on the
tokenizer (loss per token would favour the tokenizer with shorter tokens).

    python benchmarks/benchmark_recipes.py --seconds 600
    python benchmarks/benchmark_recipes.py --seconds 60 --json

Each run's step count is the number of its steps that fit in ``--seconds`` by a timing of a few
steps made just before it, so each gets a complete learning-rate schedule.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

import torch

from llmcourse.course_model import recipe_for
from llmcourse.evaluation import bits_per_byte, bytes_per_token_of, evaluate_loss
from llmcourse.model import GPT, GPTConfig
from llmcourse.optimizer import make_optimizer
from llmcourse.pretraining import PretrainingRun, make_loaders, run_tokenizer
from llmcourse.training import train

TIMED_STEPS = 8


def earlier_recipe(current: PretrainingRun) -> PretrainingRun:
    """The cpu recipe before the course tokenizer: GPT-2's vocabulary, 4 layers of 256,
    batches of 4 x 128 tokens, peak learning rate 2e-3 with 100 warmup steps."""
    model = GPTConfig.preset("course-small", context_length=128)
    training = replace(current.training, learning_rate=2e-3, warmup_steps=100)
    return replace(current, model=model, tokenizer="gpt2", batch_size=4, training=training)


def seconds_per_step(run: PretrainingRun, loader) -> float:
    """The median time of one optimizer step of ``run``'s model, after two warmup steps."""
    torch.manual_seed(0)
    model = GPT(run.model)
    optimizer = make_optimizer(model, run.training)
    timings = []
    for index, (inputs, targets) in enumerate(loader):
        start = time.perf_counter()
        _, loss = model(inputs, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        timings.append(time.perf_counter() - start)
        if index + 1 == TIMED_STEPS + 2:
            break
    return sorted(timings[2:])[len(timings[2:]) // 2]


def train_for(run: PretrainingRun, seconds: float, label: str) -> dict:
    tokenizer = run_tokenizer(run)
    train_loader, val_loader = make_loaders(run, tokenizer)
    steps = max(10, int(seconds / seconds_per_step(run, train_loader)))
    training = replace(run.training, max_steps=steps, eval_every=steps,
                       warmup_steps=min(run.training.warmup_steps, steps // 10))
    torch.manual_seed(training.seed)
    model = GPT(run.model)
    history = train(model, train_loader, val_loader, training)
    val_loss = evaluate_loss(model, val_loader)
    return {
        "recipe": label,
        "tokenizer": run.tokenizer,
        "vocab_size": tokenizer.n_vocab,
        "parameters": model.num_parameters(),
        "steps": steps,
        "tokens_seen": history.tokens_seen,
        "wall_seconds": round(history.elapsed_seconds, 1),
        "tokens_per_second": round(history.tokens_per_second),
        "val_loss": round(val_loss, 4),
        "validation_bits_per_byte": round(bits_per_byte(val_loss, bytes_per_token_of(val_loader)),
                                          4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600, help="training time of each")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    current = recipe_for("cpu").run
    results = [
        train_for(earlier_recipe(current), args.seconds, "earlier (GPT-2 vocabulary)"),
        train_for(current, args.seconds, "current (course tokenizer)"),
    ]
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"{'recipe':<28} {'vocab':>6} {'params':>11} {'steps':>6} {'train s':>8} "
          f"{'tokens/s':>9} {'val loss':>9} {'bits/byte':>10}")
    for row in results:
        print(f"{row['recipe']:<28} {row['vocab_size']:>6,} {row['parameters']:>11,} "
              f"{row['steps']:>6} {row['wall_seconds']:>8.0f} {row['tokens_per_second']:>9,} "
              f"{row['val_loss']:>9.3f} {row['validation_bits_per_byte']:>10.3f}")
    ratio = results[0]["validation_bits_per_byte"] / results[1]["validation_bits_per_byte"]
    print(f"earlier / current bits per byte: {ratio:.3f} (each given {args.seconds:.0f} s by a "
          "timing of its steps; the train s column is what they took)")


if __name__ == "__main__":
    main()
