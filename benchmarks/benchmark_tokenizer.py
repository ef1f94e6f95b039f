"""Training and encoding speed of llmcourse's BPETokenizer against Hugging Face ``tokenizers``.

On the 2 MiB TinyStories sample (``llmcourse.data_files.fetch("tinystories-2mib")``; offline, set
``LLMCOURSE_DATA_MIRROR`` to a copy of the course's data), in one process:

- training seconds, wall-clock and CPU, for each vocabulary size: ``BPETokenizer.train`` (pure
  Python) and Hugging Face's ``BpeTrainer`` (Rust) with a byte-level pre-tokenizer that cuts
  text with GPT-2's pattern, the same vocabulary size and ``<|endoftext|>``, on one thread
  (``RAYON_NUM_THREADS=1``);
- encoding MB/s (10^6 bytes of UTF-8 text per second) of the whole sample with the tokenizers of
  the first vocabulary size: ``BPETokenizer.encode`` on a new tokenizer (empty chunk cache) and
  again with its cache filled, its ``to_tiktoken()`` Encoding, and Hugging Face's
  ``Tokenizer.encode`` (and its batch call on the lines of the text);
- checks: the tiktoken export gives the ids of ``BPETokenizer.encode``; ours and Hugging Face's
  have the same tokens; bytes per token of each.

The contestants of a phase take turns, one run each per round, so background load on a shared
machine falls on all of them alike; each reports the median of its rounds.

Run from the repository root: ``python benchmarks/benchmark_tokenizer.py [--quick] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import tiktoken
from timing import cpu_name, race

from llmcourse.data_files import fetch
from llmcourse.errors import MissingFileError
from llmcourse.tokenizers import BPETokenizer
from llmcourse.tokenizers.bpe import gpt2_byte_characters
from llmcourse.tokenizers.word import END_OF_TEXT

try:
    import tokenizers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
except ImportError:  # installed with transformers, a dev dependency
    sys.exit("this benchmark needs Hugging Face tokenizers: pip install -e '.[dev]'")

BUSY_LOAD = 1.0  # a 1-minute load average above this means other processes use the CPUs


@dataclass(frozen=True)
class Settings:
    """What one run measures. ``characters`` cuts the sample (None: all of it)."""

    vocab_sizes: tuple[int, ...] = (4096, 8192)
    training_rounds: int = 2  # timed trainings per contestant and vocabulary size
    encoding_rounds: int = 3  # timed encodings per contestant, after one warm-up round
    characters: int | None = None


QUICK = Settings(vocab_sizes=(300, 400), training_rounds=1, encoding_rounds=1,
                 characters=50_000)


@dataclass
class Contestant:
    """One side of a comparison: ``run()`` trains or encodes once, on ``n_bytes`` of text.

    ``seconds`` are wall-clock times of the timed rounds; ``cpu_seconds`` the processor time of
    the process in them, which other processes on the machine disturb less.
    """

    name: str
    run: Callable[[], object]
    n_bytes: int
    seconds: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)
    last_output: Any = None

    def result(self) -> dict[str, Any]:
        median, median_cpu = statistics.median(self.seconds), statistics.median(self.cpu_seconds)
        return {
            "median_seconds": median,
            "median_cpu_seconds": median_cpu,
            "megabytes_per_second": self.n_bytes / 1e6 / median,
            "megabytes_per_cpu_second": self.n_bytes / 1e6 / median_cpu,
            "seconds": self.seconds,
            "cpu_seconds": self.cpu_seconds,
        }




# ---------------------------------------------------------------------------------------------
# The contestants


def train_hugging_face(text: str, vocab_size: int) -> Tokenizer:
    """A byte-level BPE trained by Hugging Face ``tokenizers`` the way GPT-2's was: the text cut
    with GPT-2's pattern, the 256 bytes as alphabet, ``<|endoftext|>`` as special token.

    Its trainer would learn merges inside ``<|endoftext|>`` in the text; like
    ``BPETokenizer.train``, it gets the text between them only (one sequence per story)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[END_OF_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(text.split(END_OF_TEXT), trainer)
    return tokenizer


def training_contestants(text: str, vocab_size: int) -> list[Contestant]:
    n_bytes = len(text.encode("utf-8"))
    return [
        Contestant(f"ours, {vocab_size}", lambda: BPETokenizer.train(text, vocab_size), n_bytes),
        Contestant(f"Hugging Face, {vocab_size}", lambda: train_hugging_face(text, vocab_size),
                   n_bytes),
    ]


def encoding_contestants(
    text: str, ours: BPETokenizer, exported: tiktoken.Encoding, theirs: Tokenizer
) -> list[Contestant]:
    """Each tokenizer encoding all of ``text``, special tokens allowed; "new" builds a new
    BPETokenizer from the merges each round (milliseconds), so that its chunk cache is empty.
    Hugging Face's batch call encodes the lines separately: its ids may differ slightly at line
    ends (a run of blank lines is cut differently), so it is timed but not checked."""
    merges = [pair for pair, _ in ours.merges]
    lines = text.splitlines(keepends=True)
    n_bytes = len(text.encode("utf-8"))
    return [
        Contestant("ours, pure Python, new",
                   lambda: BPETokenizer(merges).encode(text, allowed_special="all"), n_bytes),
        Contestant("ours, pure Python, cache filled",
                   lambda: ours.encode(text, allowed_special="all"), n_bytes),
        Contestant("ours exported to tiktoken",
                   lambda: exported.encode(text, allowed_special="all"), n_bytes),
        Contestant("Hugging Face", lambda: theirs.encode(text).ids, n_bytes),
        Contestant("Hugging Face, batch of lines",
                   lambda: [ids for line in encode_lines(theirs, lines) for ids in line],
                   n_bytes),
    ]


def encode_lines(tokenizer: Tokenizer, lines: list[str]) -> list[list[int]]:
    """The ids of each line, from the fastest batch call this version of tokenizers has
    (``encode_batch_fast`` computes no character offsets)."""
    encode_batch = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
    return [encoding.ids for encoding in encode_batch(lines)]


# ---------------------------------------------------------------------------------------------
# The run


def run_benchmark(settings: Settings, text: str) -> dict[str, Any]:
    """Measure everything ``settings`` asks for on ``text``; returns plain values."""
    load_at_start = os.getloadavg()
    text = text[: settings.characters]
    n_bytes = len(text.encode("utf-8"))

    training: dict[str, dict[str, Any]] = {}
    trained: dict[str, Any] = {}
    for vocab_size in settings.vocab_sizes:
        contestants = training_contestants(text, vocab_size)
        race(contestants, settings.training_rounds)
        for contestant in contestants:
            training[contestant.name] = contestant.result()
            trained[contestant.name] = contestant.last_output

    first = settings.vocab_sizes[0]
    ours, theirs = trained[f"ours, {first}"], trained[f"Hugging Face, {first}"]
    exported = ours.to_tiktoken()
    encoders = encoding_contestants(text, ours, exported, theirs)
    race(encoders, settings.encoding_rounds, warmup_rounds=1)
    encoding = {contestant.name: contestant.result() for contestant in encoders}
    ids = {contestant.name: contestant.last_output for contestant in encoders}

    return {
        "machine": machine_description(load_at_start, os.getloadavg()),
        "settings": asdict(settings),
        "text": {"name": "tinystories-2mib", "characters": len(text), "bytes": n_bytes},
        "training": training,
        "encoding": encoding,
        "ratios": ratios(settings.vocab_sizes, training, encoding),
        "checks": {
            "same_ids_as_tiktoken_export": ids["ours exported to tiktoken"]
            == ids["ours, pure Python, cache filled"] == ids["ours, pure Python, new"],
            "bytes_per_token": {
                f"ours, {first}": n_bytes / len(ids["ours, pure Python, new"]),
                f"Hugging Face, {first}": n_bytes / len(ids["Hugging Face"]),
            },
            "same_tokens_as_hugging_face": {
                size: same_tokens(trained[f"ours, {size}"], trained[f"Hugging Face, {size}"])
                for size in settings.vocab_sizes
            },
            "vocab_sizes": {
                name: tokens_in_vocabulary(tokenizer) for name, tokenizer in trained.items()
            },
        },
    }


def same_tokens(ours: BPETokenizer, theirs: Tokenizer) -> bool:
    """Whether both tokenizers have the same ordinary tokens (as bytes), whatever their ids."""
    byte_of = {character: byte for byte, character in enumerate(gpt2_byte_characters())}
    their_tokens = {
        bytes(byte_of[character] for character in token)
        for token in theirs.get_vocab() if token != END_OF_TEXT
    }
    n_ordinary = ours.vocab_size - len(ours.special_tokens)
    return their_tokens == {ours.token_bytes(token_id) for token_id in range(n_ordinary)}


def tokens_in_vocabulary(tokenizer: BPETokenizer | Tokenizer) -> int:
    if isinstance(tokenizer, BPETokenizer):
        return tokenizer.vocab_size
    return tokenizer.get_vocab_size(with_added_tokens=True)


def ratios(
    vocab_sizes: tuple[int, ...], training: dict[str, Any], encoding: dict[str, Any]
) -> dict[str, dict[str, float]]:
    """Ratios of seconds (training: above 1, ours takes longer) and of MB/s (encoding: above 1,
    the first is faster), each from wall-clock and from CPU time."""
    result = {}
    for size in vocab_sizes:
        ours, theirs = training[f"ours, {size}"], training[f"Hugging Face, {size}"]
        result[f"training {size}, time of ours / Hugging Face"] = {
            "wall": ours["median_seconds"] / theirs["median_seconds"],
            "cpu": ours["median_cpu_seconds"] / theirs["median_cpu_seconds"],
        }
    pairs = [
        ("ours exported to tiktoken", "ours, pure Python, new"),
        ("ours exported to tiktoken", "Hugging Face"),
        ("ours exported to tiktoken", "Hugging Face, batch of lines"),
        ("Hugging Face", "ours, pure Python, new"),
        ("ours, pure Python, cache filled", "ours, pure Python, new"),
    ]
    for first, second in pairs:
        result[f"encoding MB/s, {first} / {second}"] = {
            "wall": encoding[first]["megabytes_per_second"]
            / encoding[second]["megabytes_per_second"],
            "cpu": encoding[first]["megabytes_per_cpu_second"]
            / encoding[second]["megabytes_per_cpu_second"],
        }
    return result


def machine_description(
    load_at_start: tuple[float, ...], load_at_end: tuple[float, ...]
) -> dict[str, Any]:
    """The processor, library versions, the date and the load averages around the run."""
    return {
        "processor": cpu_name(),
        "logical_cpus": os.cpu_count(),
        "rayon_threads": os.environ["RAYON_NUM_THREADS"],
        "python": platform.python_version(),
        "tokenizers": tokenizers.__version__,
        "tiktoken": tiktoken.__version__,
        "date": date.today().isoformat(),
        "load_average_1min_at_start": load_at_start[0],
        "load_average_1min_at_end": load_at_end[0],
    }




# ---------------------------------------------------------------------------------------------
# Report


def report(results: dict[str, Any]) -> str:
    """The results as tables for a terminal."""
    settings, machine, text = results["settings"], results["machine"], results["text"]
    checks = results["checks"]
    lines = [
        f"llmcourse BPETokenizer vs Hugging Face tokenizers {machine['tokenizers']} "
        f"(one thread) and tiktoken {machine['tiktoken']}",
        f"text: {text['name']}, {text['characters']:,} characters, {text['bytes']:,} bytes",
        f"machine: {machine['processor']}, {machine['logical_cpus']} logical CPUs, Python "
        f"{machine['python']}, {machine['date']}; 1-minute load average "
        f"{machine['load_average_1min_at_start']:.1f} at start, "
        f"{machine['load_average_1min_at_end']:.1f} at end",
        "",
        f"Training a byte-level BPE (vocabulary size after the name); median of "
        f"{settings['training_rounds']} rounds",
        f"  {'':36} {'s':>9} {'CPU s':>9}",
        *(
            f"  {name:36} {result['median_seconds']:9.2f} {result['median_cpu_seconds']:9.2f}"
            for name, result in results["training"].items()
        ),
        "",
        f"Encoding the whole text, special tokens allowed, vocabulary "
        f"{settings['vocab_sizes'][0]}; median of {settings['encoding_rounds']} rounds after 1 "
        "warm-up",
        f"  {'':36} {'MB/s':>9} {'CPU MB/s':>9} {'s':>9}",
        *(
            f"  {name:36} {result['megabytes_per_second']:9.2f} "
            f"{result['megabytes_per_cpu_second']:9.2f} {result['median_seconds']:9.3f}"
            for name, result in results["encoding"].items()
        ),
        "",
        "Ratios from wall-clock and from CPU time",
        *(
            f"ratio {name}: {value['wall']:.2f}x wall-clock, {value['cpu']:.2f}x CPU time"
            for name, value in results["ratios"].items()
        ),
        "",
        "Checks",
        "  the tiktoken export gives the ids of BPETokenizer.encode: "
        + yes_no(checks["same_ids_as_tiktoken_export"]),
        "  same tokens as Hugging Face's, by vocabulary size: "
        + ", ".join(f"{size}: {yes_no(same)}"
                    for size, same in checks["same_tokens_as_hugging_face"].items()),
        "  bytes per token: "
        + "; ".join(f"{name}: {value:.2f}" for name, value in checks["bytes_per_token"].items()),
        "  vocabulary sizes: "
        + "; ".join(f"{name}: {size:,}" for name, size in checks["vocab_sizes"].items()),
    ]
    if machine["load_average_1min_at_start"] > BUSY_LOAD:
        lines.append(
            "Note: the machine was busy when the run started: other processes shared the cores, "
            "so the times are noisy. Compare the CPU times and ratios, or run again when idle."
        )
    return "\n".join(lines)


def yes_no(value: bool) -> str:
    return "yes" if value else "NO"


def parse_args(argv: list[str] | None) -> tuple[Settings, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="50,000 characters and tiny vocabularies: proves the script works")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    return (QUICK if args.quick else Settings()), args


def main(argv: list[str] | None = None) -> None:
    settings, args = parse_args(argv)
    # tokenizers reads this when it starts its thread pool, at its first parallel work.
    os.environ["RAYON_NUM_THREADS"] = "1"
    try:
        text = fetch("tinystories-2mib").read_text(encoding="utf-8")
    except MissingFileError as error:
        sys.exit(f"{error}\n(offline, set LLMCOURSE_DATA_MIRROR to a copy of the course's data)")
    results = run_benchmark(settings, text)
    print(report(results))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"results written to {args.json}")


if __name__ == "__main__":
    main()
