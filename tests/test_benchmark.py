"""The speed benchmark runs end to end in its tiny ``--quick`` configuration (no timing checks)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "benchmark_gpt.py"
RATIO_LINES = [
    "ratio training, ours / transformers (default AdamW): ",
    "ratio training, ours / transformers (fused AdamW): ",
    "ratio generation with cache, ours / transformers: ",
    "ratio generation without cache, ours / transformers: ",
    "ratio generation, ours with cache / ours without: ",
    "ratio training, ours bf16 autocast / ours float32: ",
]


def test_quick_benchmark_prints_ratios_and_writes_json(tmp_path: Path) -> None:
    json_path = tmp_path / "results.json"
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--bf16", "--threads", "1", "--json",
         str(json_path)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.splitlines()
    for prefix in RATIO_LINES:
        matching = [line for line in lines if line.startswith(prefix)]
        assert len(matching) == 1, f"no line starting with {prefix!r} in:\n{completed.stdout}"
        wall_clock, cpu_time = matching[0][len(prefix):].split(", ")
        assert wall_clock.endswith("x wall-clock") and float(wall_clock.split("x")[0]) > 0
        assert cpu_time.endswith("x CPU time") and float(cpu_time.split("x")[0]) > 0

    results = json.loads(json_path.read_text())
    assert results["settings"]["preset"] == "course-tiny"
    assert results["machine"]["torch_threads"] == 1
    assert set(results["training"]) == {
        "ours, fused AdamW",
        "transformers, default AdamW",
        "transformers, fused AdamW",
        "ours, fused AdamW, bf16 autocast",
    }
    assert set(results["generation"]) == {
        "ours, KV cache", "transformers, KV cache", "ours, no cache", "transformers, no cache"
    }
    for result in [*results["training"].values(), *results["generation"].values()]:
        assert len(result["seconds"]) == len(result["cpu_seconds"]) >= 1
        assert result["tokens_per_second"] == result["tokens"] / result["median_seconds"] > 0
        assert result["tokens_per_cpu_second"] > 0
    speeds = {name: r["tokens_per_second"] for name, r in results["generation"].items()}
    assert results["ratios"]["generation with cache, ours / transformers"] == (
        speeds["ours, KV cache"] / speeds["transformers, KV cache"]
    )
    assert set(results["cpu_time_ratios"]) == set(results["ratios"])
    assert results["generation"]["ours, KV cache"]["tokens"] == results["settings"]["new_tokens"]
    training_tokens = results["settings"]["batch_size"] * results["settings"]["sequence_length"]
    assert results["training"]["ours, fused AdamW"]["tokens"] == training_tokens
    # the two models hold the same weights: same logits, same greedy continuation
    assert results["checks"]["max_logit_difference"] < 1e-5
    assert results["checks"]["same_greedy_tokens"] is True
    assert list(results["peak_rss_mib"]) == ["models built", "generation", "training"]
    assert all(mib > 0 for mib in results["peak_rss_mib"].values())

