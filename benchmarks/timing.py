"""What the benchmark scripts share: timing contestants in turn, and naming the processor.

The scripts run as ``python benchmarks/NAME.py``, so this folder is on ``sys.path`` and they
import this module as ``timing``.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from tqdm.auto import tqdm


class Timed(Protocol):
    """A contestant: ``run()`` does the measured work once; the times of its rounds (wall-clock
    and processor seconds) and its last output are recorded on it."""

    run: Callable[[], object]
    seconds: list[float]
    cpu_seconds: list[float]
    last_output: object


def race(
    contestants: Sequence[Timed], rounds: int, warmup_rounds: int = 0, desc: str | None = None
) -> None:
    """Run every contestant once per round, in turn; record the times of the rounds after the
    first ``warmup_rounds``. With ``desc`` a progress bar shows the rounds."""
    for round_index in tqdm(range(warmup_rounds + rounds), desc=desc, unit="round",
                            disable=desc is None):
        for contestant in contestants:
            start, cpu_start = time.perf_counter(), time.process_time()
            contestant.last_output = contestant.run()
            elapsed, cpu_used = time.perf_counter() - start, time.process_time() - cpu_start
            if round_index >= warmup_rounds:
                contestant.seconds.append(elapsed)
                contestant.cpu_seconds.append(cpu_used)


def cpu_name() -> str:
    """The processor's model name (from /proc/cpuinfo on Linux)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()
