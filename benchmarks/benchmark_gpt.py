"""Training and generation speed of llmcourse's GPT against transformers' GPT2LMHeadModel.

Both models live in this one process, with the same configuration and the same weights: ours is
saved in the hub's GPT-2 layout and read back by ``GPT2LMHeadModel.from_pretrained`` (with
``attn_implementation="sdpa"``, transformers' default). The contestants of a phase take turns,
one step or one generation each per round, so background load on a shared machine falls on all
of them alike; each reports the median of its rounds.

Measured:

- training tokens/s: forward + backward + AdamW step on (batch, sequence) tokens, float32.
  Ours runs ``llmcourse.training.train_step`` with ``make_optimizer`` (fused AdamW); theirs the
  usual ``loss = model(input_ids, labels=input_ids).loss`` step with the default
  ``torch.optim.AdamW``, and again with ``fused=True``. ``--bf16`` adds our step under bfloat16
  autocast.
- greedy generation tokens/s: new tokens / seconds for one prompt, prompt reading included.
  Ours is ``llmcourse.generation.generate`` with and without its KV cache, theirs
  ``model.generate(do_sample=False, ...)`` with and without theirs.
- the peak resident memory of the process (``ru_maxrss``) after each phase.

Run from the repository root: ``python benchmarks/benchmark_gpt.py [--quick] [--bf16]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from timing import cpu_name, race
from torch.optim.lr_scheduler import LambdaLR

from llmcourse.generation import generate
from llmcourse.gpt2_weights import save_gpt2_format
from llmcourse.model import GPT, GPTConfig
from llmcourse.optimizer import make_optimizer
from llmcourse.training import TrainingConfig, train_step

try:
    import transformers
    from transformers import GPT2LMHeadModel
except ImportError:  # a dev dependency, not one of the package's
    sys.exit("this benchmark needs transformers: pip install -e '.[dev]'")

LEARNING_RATE = 4e-4
WEIGHT_DECAY = 0.1
BUSY_LOAD = 1.0  # a 1-minute load average above this means other processes use the CPUs


@dataclass(frozen=True)
class Settings:
    """What one benchmark run measures. Token counts are per step or per generation."""

    preset: str = "gpt2-small"
    batch_size: int = 2
    sequence_length: int = 256
    warmup_steps: int = 1  # training rounds run first and not timed
    steps: int = 5  # timed training rounds
    prompt_length: int = 20
    new_tokens: int = 100
    cached_runs: int = 3  # timed generations with a cache, per contestant
    uncached_runs: int = 1  # timed generations without a cache, per contestant
    bf16: bool = False
    seed: int = 0


QUICK = Settings(
    preset="course-tiny", sequence_length=16, steps=1, prompt_length=4, new_tokens=8, cached_runs=1
)


@dataclass
class Contestant:
    """One side of a comparison: ``run()`` does one step (or one generation) of ``tokens``.

    ``seconds`` are wall-clock times of the timed rounds; ``cpu_seconds`` the processor time the
    process used in them (all its threads), which other processes on the machine disturb less.
    """

    name: str
    run: Callable[[], object]
    tokens: int
    seconds: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)
    last_output: object = None

    def result(self) -> dict[str, Any]:
        return {
            "tokens": self.tokens,
            "tokens_per_second": self.tokens / statistics.median(self.seconds),
            "best_tokens_per_second": self.tokens / min(self.seconds),
            "tokens_per_cpu_second": self.tokens / statistics.median(self.cpu_seconds),
            "median_seconds": statistics.median(self.seconds),
            "median_cpu_seconds": statistics.median(self.cpu_seconds),
            "seconds": self.seconds,
            "cpu_seconds": self.cpu_seconds,
        }




def native_bf16_matmul() -> bool:
    """Whether this CPU multiplies bfloat16 matrices in hardware (AVX512-BF16 or AMX); without
    that, oneDNN falls back to kernels many times slower than float32."""
    return torch.ops.mkldnn._is_mkldnn_bf16_supported()


def peak_rss_mib() -> float:
    """The largest resident set size this process has had so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes / KiB


# ---------------------------------------------------------------------------------------------
# The two models


def build_models(config: GPTConfig, seed: int) -> tuple[GPT, GPT2LMHeadModel]:
    """Our GPT, randomly initialised from ``seed``, and transformers' GPT-2 with its weights."""
    torch.manual_seed(seed)
    ours = GPT(config)
    with tempfile.TemporaryDirectory() as directory:
        save_gpt2_format(ours, directory)
        theirs = GPT2LMHeadModel.from_pretrained(
            directory, attn_implementation="sdpa", dtype=torch.float32
        )
    return ours, theirs


@torch.no_grad()
def max_logit_difference(ours: GPT, theirs: GPT2LMHeadModel, idx: torch.Tensor) -> float:
    """The largest |logit difference| of the two models (in eval mode) on token ids (B, T)."""
    ours.eval()
    theirs.eval()
    return (ours(idx) - theirs(idx).logits).abs().max().item()


# ---------------------------------------------------------------------------------------------
# Training


def our_training_step(
    model: GPT,
    optimizer: torch.optim.Optimizer,
    batch: tuple[torch.Tensor, torch.Tensor],
    autocast_dtype: torch.dtype | None,
) -> Callable[[], float]:
    """The package's training step (no gradient clipping, constant learning rate)."""
    config = TrainingConfig(
        max_steps=1, grad_clip=None, autocast_dtype=autocast_dtype, progress=False
    )
    scheduler = LambdaLR(optimizer, lambda step: 1.0)
    device = torch.device("cpu")
    return lambda: train_step(model, optimizer, scheduler, batch, config, device)


def their_training_step(
    model: GPT2LMHeadModel, optimizer: torch.optim.Optimizer, input_ids: torch.Tensor
) -> Callable[[], float]:
    """A transformers user's training step: the model shifts the labels itself."""

    def step() -> float:
        loss = model(input_ids=input_ids, labels=input_ids).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


def training_contestants(
    ours: GPT, theirs: GPT2LMHeadModel, settings: Settings
) -> list[Contestant]:
    """Our step (fused AdamW, and with ``settings.bf16`` also under bfloat16 autocast) and
    theirs with the default and with the fused AdamW, each on its own optimizer."""
    generator = torch.Generator().manual_seed(settings.seed)
    shape = (settings.batch_size, settings.sequence_length + 1)
    tokens = torch.randint(0, ours.config.vocab_size, shape, generator=generator)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    n_tokens = inputs.numel()
    ours.train()
    theirs.train()
    our_optimizer = make_optimizer(
        ours,
        TrainingConfig(
            max_steps=1, learning_rate=LEARNING_RATE, weight_decay=WEIGHT_DECAY,
            fused_optimizer=True, progress=False,
        ),
    )
    default_adamw = torch.optim.AdamW(
        theirs.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY
    )
    fused_adamw = torch.optim.AdamW(
        theirs.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY, fused=True
    )
    contestants = [
        Contestant(
            "ours, fused AdamW",
            our_training_step(ours, our_optimizer, (inputs, targets), None),
            n_tokens,
        ),
        Contestant(
            "transformers, default AdamW",
            their_training_step(theirs, default_adamw, inputs),
            n_tokens,
        ),
        Contestant(
            "transformers, fused AdamW",
            their_training_step(theirs, fused_adamw, inputs),
            n_tokens,
        ),
    ]
    if settings.bf16:
        contestants.append(
            Contestant(
                "ours, fused AdamW, bf16 autocast",
                our_training_step(ours, our_optimizer, (inputs, targets), torch.bfloat16),
                n_tokens,
            )
        )
    return contestants


# ---------------------------------------------------------------------------------------------
# Generation


def our_generation(
    model: GPT, prompt: torch.Tensor, new_tokens: int, use_cache: bool
) -> Callable[[], torch.Tensor]:
    """Greedy decoding (``generate``'s default) of ``new_tokens`` tokens; no end token is given."""
    return lambda: generate(model, prompt, new_tokens, use_cache=use_cache)


def their_generation(
    model: GPT2LMHeadModel, prompt: torch.Tensor, new_tokens: int, use_cache: bool
) -> Callable[[], torch.Tensor]:
    """Greedy decoding of exactly ``new_tokens`` tokens (no early stop at an end token)."""
    return lambda: model.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        do_sample=False,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        use_cache=use_cache,
        pad_token_id=model.config.eos_token_id,
    )


def generation_contestants(
    ours: GPT, theirs: GPT2LMHeadModel, prompt: torch.Tensor, new_tokens: int, use_cache: bool
) -> list[Contestant]:
    """Ours and theirs, each generating ``new_tokens`` after ``prompt`` (1, T)."""
    cache = "KV cache" if use_cache else "no cache"
    return [
        Contestant(f"ours, {cache}", our_generation(ours, prompt, new_tokens, use_cache),
                   new_tokens),
        Contestant(f"transformers, {cache}",
                   their_generation(theirs, prompt, new_tokens, use_cache), new_tokens),
    ]


def same_greedy_tokens(contestants: list[Contestant]) -> bool:
    """Whether every contestant generated the same tokens in its last run."""
    first = contestants[0].last_output
    return all(torch.equal(first, contestant.last_output) for contestant in contestants[1:])


# ---------------------------------------------------------------------------------------------
# The run


def run_benchmark(settings: Settings) -> dict[str, Any]:
    """Measure everything ``settings`` asks for; returns the results as plain values."""
    load_at_start = os.getloadavg()
    config = GPTConfig.preset(settings.preset, dropout=0.0)
    ours, theirs = build_models(config, settings.seed)
    generator = torch.Generator().manual_seed(settings.seed + 1)
    prompt = torch.randint(0, config.vocab_size, (1, settings.prompt_length), generator=generator)
    logit_difference = max_logit_difference(ours, theirs, prompt)
    peak_rss = {"models built": peak_rss_mib()}

    cached = generation_contestants(ours, theirs, prompt, settings.new_tokens, use_cache=True)
    uncached = generation_contestants(ours, theirs, prompt, settings.new_tokens, use_cache=False)
    short = generation_contestants(ours, theirs, prompt, min(8, settings.new_tokens), True)
    short += generation_contestants(ours, theirs, prompt, min(8, settings.new_tokens), False)
    race(short, rounds=0, warmup_rounds=1, desc="generation warm-up")
    race(cached, settings.cached_runs, warmup_rounds=0, desc="generation, cache")
    race(uncached, settings.uncached_runs, warmup_rounds=0, desc="generation, no cache")
    same_tokens = same_greedy_tokens(cached + uncached)
    peak_rss["generation"] = peak_rss_mib()

    training = training_contestants(ours, theirs, settings)
    race(training, settings.steps, settings.warmup_steps, desc="training")
    peak_rss["training"] = peak_rss_mib()

    measured = {c.name: c.result() for c in training + cached + uncached}
    return {
        "machine": machine_description(load_at_start, os.getloadavg()),
        "settings": asdict(settings),
        "model": {**asdict(config), "parameters": ours.num_parameters()},
        "training": {c.name: measured[c.name] for c in training},
        "generation": {c.name: measured[c.name] for c in cached + uncached},
        "ratios": ratios({name: r["tokens_per_second"] for name, r in measured.items()}),
        "cpu_time_ratios": ratios(
            {name: r["tokens_per_cpu_second"] for name, r in measured.items()}
        ),
        "peak_rss_mib": peak_rss,
        "checks": {"max_logit_difference": logit_difference, "same_greedy_tokens": same_tokens},
    }


def ratios(speed: dict[str, float]) -> dict[str, float]:
    """Ratios of the contestants' ``speed`` (tokens per second, by name), as labelled; above 1
    means the first is faster."""
    result = {
        "training, ours / transformers (default AdamW)":
            speed["ours, fused AdamW"] / speed["transformers, default AdamW"],
        "training, ours / transformers (fused AdamW)":
            speed["ours, fused AdamW"] / speed["transformers, fused AdamW"],
        "generation with cache, ours / transformers":
            speed["ours, KV cache"] / speed["transformers, KV cache"],
        "generation without cache, ours / transformers":
            speed["ours, no cache"] / speed["transformers, no cache"],
        "generation, ours with cache / ours without":
            speed["ours, KV cache"] / speed["ours, no cache"],
    }
    if "ours, fused AdamW, bf16 autocast" in speed:
        result["training, ours bf16 autocast / ours float32"] = (
            speed["ours, fused AdamW, bf16 autocast"] / speed["ours, fused AdamW"]
        )
    return result


def machine_description(
    load_at_start: tuple[float, ...], load_at_end: tuple[float, ...]
) -> dict[str, Any]:
    """The processor, library versions, threads and the load averages around the run."""
    return {
        "processor": cpu_name(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "native_bf16_matmul": native_bf16_matmul(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "load_average_1min_at_start": load_at_start[0],
        "load_average_1min_at_end": load_at_end[0],
    }




# ---------------------------------------------------------------------------------------------
# Report


def report(results: dict[str, Any]) -> str:
    """The results as a table for a terminal."""
    settings, model, machine = results["settings"], results["model"], results["machine"]
    peak_rss = results["peak_rss_mib"]
    lines = [
        f"llmcourse GPT vs transformers {machine['transformers']} GPT2LMHeadModel "
        '(attn_implementation="sdpa"), float32 unless marked',
        f"model: {settings['preset']}, {model['n_layer']} layers, {model['n_head']} heads, "
        f"width {model['n_embd']}, vocabulary {model['vocab_size']}, "
        f"{model['parameters'] / 1e6:.1f}M parameters, same weights in both",
        f"machine: {machine['processor']}, {machine['logical_cpus']} logical CPUs, "
        f"native bf16 matmul: {'yes' if machine['native_bf16_matmul'] else 'no'}, "
        f"torch {machine['torch']} with {machine['torch_threads']} threads; 1-minute load "
        f"average {machine['load_average_1min_at_start']:.1f} at start, "
        f"{machine['load_average_1min_at_end']:.1f} at end",
        "",
        f"Training: forward + backward + AdamW step on {settings['batch_size']} x "
        f"{settings['sequence_length']} tokens; median of {settings['steps']} steps after "
        f"{settings['warmup_steps']} warm-up",
        *table(results["training"], "step"),
        "",
        f"Greedy generation: {settings['new_tokens']} new tokens after a "
        f"{settings['prompt_length']}-token prompt, batch 1; median of "
        f"{settings['cached_runs']} runs with a cache, {settings['uncached_runs']} without",
        *table(results["generation"], "run"),
        "",
        "Ratios of tokens/s, and of tokens per CPU-second (above 1: the first is faster)",
        *(
            f"ratio {name}: {value:.2f}x wall-clock, "
            f"{results['cpu_time_ratios'][name]:.2f}x CPU time"
            for name, value in results["ratios"].items()
        ),
        "",
        "Peak resident memory of the process: "
        + ", ".join(f"after {phase} {mib:,.0f} MiB" for phase, mib in peak_rss.items()),
        f"Checks: max |logit difference| {results['checks']['max_logit_difference']:.1e}; "
        f"same greedy tokens from all four generators: "
        f"{'yes' if results['checks']['same_greedy_tokens'] else 'NO'}",
    ]
    if machine["load_average_1min_at_start"] > BUSY_LOAD:
        lines.append(
            "Note: the machine was busy when the run started: other processes shared the cores, "
            "so the times are noisy. Compare the ratios, or run again when it is idle."
        )
    return "\n".join(lines)


def table(results: dict[str, dict[str, Any]], unit: str) -> list[str]:
    """Rows of median tokens/s, the best round's tokens/s, and the median wall-clock and CPU
    seconds of a round (a ``unit``)."""
    rows = [f"  {'':34} {'tokens/s':>9} {'(best)':>9} {'s/' + unit:>9} {'CPU s/' + unit:>11}"]
    for name, result in results.items():
        rows.append(
            f"  {name:34} {result['tokens_per_second']:9.1f} "
            f"{result['best_tokens_per_second']:9.1f} {result['median_seconds']:9.3f} "
            f"{result['median_cpu_seconds']:11.3f}"
        )
    return rows


def parse_args(argv: list[str] | None) -> tuple[Settings, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="a tiny model and few steps: proves the script works in seconds")
    parser.add_argument("--bf16", action="store_true",
                        help="also time our training step under bfloat16 autocast")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--steps", type=int, help="timed training steps per contestant")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else Settings()
    settings = replace(settings, bf16=args.bf16)
    if args.steps is not None:
        if args.steps < 1:
            parser.error(f"--steps must be at least 1, got {args.steps}")
        settings = replace(settings, steps=args.steps)
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    return settings, args


def main(argv: list[str] | None = None) -> None:
    settings, args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    if settings.bf16 and not native_bf16_matmul():
        print(
            "warning: this CPU has no bfloat16 matrix instructions (AVX512-BF16 or AMX), so each "
            "bf16 autocast step runs on fallback kernels and takes many times longer than a "
            "float32 step (see benchmarks/README.md)",
            file=sys.stderr,
        )
    results = run_benchmark(settings)
    print(report(results))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"results written to {args.json}")


if __name__ == "__main__":
    main()
