"""Figures of the appendix on multi-process training and speed: the all-reduce diagrams, the
simulated ring all-reduce, the global batches and the speed-up bars."""

from __future__ import annotations

import pytest

from llmcourse.distributed import GlobalBatchSampler
from llmcourse.errors import InputError
from llmcourse.figures.display import PROFILE_LABEL_NAME, has_profile_label
from llmcourse.figures.scaling import (
    Speedup,
    allreduce_figure,
    benchmark_speedups,
    global_batches_figure,
    loss_tracking_figure,
    mean_over_ranks,
    rank_slices,
    ring_allreduce_figure,
    ring_allreduce_steps,
    speedup_figure,
)

GRADIENTS = [[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0], [9.0, 10.0, 11.0, 12.0],
             [13.0, 14.0, 15.0, 16.0]]  # fmt: skip


# ---------------------------------------------------------------------------------------------
# The ring all-reduce


def test_ring_allreduce_ends_with_the_mean_on_every_rank():
    states = ring_allreduce_steps(GRADIENTS)
    assert len(states) == 2 * 4
    assert [state.phase for state in states] == (
        ["start"] + ["reduce-scatter"] * 3 + ["all-gather"] * 3 + ["average"]
    )
    assert states[0].values == tuple(tuple(gradient) for gradient in GRADIENTS)
    assert all(row == (7.0, 8.0, 9.0, 10.0) for row in states[-1].values)
    assert all(sources == frozenset(range(4)) for row in states[-1].sources for sources in row)


def test_ring_allreduce_step_by_step():
    states = ring_allreduce_steps([[1.0, 2.0, 3.0], [10.0, 20.0, 30.0], [100.0, 200.0, 300.0]])
    # reduce-scatter 1: rank r sends chunk r to rank r + 1, which adds it
    assert states[1].sends == ((0, 1, 0), (1, 2, 1), (2, 0, 2))
    assert states[1].values == ((1.0, 2.0, 303.0), (11.0, 20.0, 30.0), (100.0, 220.0, 300.0))
    # reduce-scatter 2: rank r sends chunk r - 1; rank r then holds the full sum of chunk r + 1
    assert states[2].sends == ((0, 1, 2), (1, 2, 0), (2, 0, 1))
    assert states[2].values[0][1] == 222.0 and states[2].sources[0][1] == frozenset({0, 1, 2})
    assert states[2].values[1][2] == 333.0 and states[2].values[2][0] == 111.0
    assert states[2].values[0][0] == 1.0  # not yet received: rank 0's own chunk 0
    # all-gather 1: rank r passes on its complete chunk r + 1, which the next rank copies
    assert states[3].sends == ((0, 1, 1), (1, 2, 2), (2, 0, 0))
    assert states[3].values[1] == (11.0, 222.0, 333.0)
    assert states[4].values == ((111.0, 222.0, 333.0),) * 3
    assert states[5].values == ((37.0, 74.0, 111.0),) * 3
    # every rank sends 2 (N - 1) chunks in all
    sends = [send for state in states for send in state.sends]
    assert [sender for sender, _, _ in sends].count(0) == 4


def test_ring_allreduce_needs_one_chunk_per_rank():
    with pytest.raises(InputError, match="3 numbers per rank for 3 ranks"):
        ring_allreduce_steps([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    with pytest.raises(InputError, match="same, non-zero length"):
        ring_allreduce_steps([[1.0, 2.0], [3.0]])
    with pytest.raises(InputError, match="2 to 8 ranks; got 1"):
        ring_allreduce_steps([[1.0]])


def test_ring_figure_has_one_slider_step_per_state_with_arrows_and_the_profile_label():
    fig = ring_allreduce_figure(GRADIENTS)
    assert "Ring all-reduce" in fig.layout.title.text
    assert fig.layout.xaxis.title.text and fig.layout.yaxis.title.text
    steps = fig.layout.sliders[0].steps
    assert len(steps) == 8 and steps[0].label == "0: start" and steps[7].label == "7: average"
    states = ring_allreduce_steps(GRADIENTS)
    for step, state in zip(steps, states, strict=True):
        z = step.args[0]["z"][0]
        assert z == [[len(sources) for sources in row] for row in state.sources]
        annotations = step.args[1]["annotations"]
        arrows = [note for note in annotations if note.get("showarrow")]
        assert len(arrows) == len(state.sends)
        assert [note.get("name") for note in annotations].count(PROFILE_LABEL_NAME) == 1
        assert any(note.get("text") == state.description for note in annotations)
    assert steps[7].args[0]["text"][0][2][0].startswith("7<br>")  # (1 + 5 + 9 + 13) / 4
    assert has_profile_label(fig)


# ---------------------------------------------------------------------------------------------
# The all-reduce overview


def test_allreduce_figure_shows_every_rank_before_and_after():
    gradients = [[0.5, -1.0], [1.5, 0.0], [1.0, 4.0]]
    assert mean_over_ranks(gradients) == [1.0, 1.0]
    fig = allreduce_figure(gradients)
    texts = [note.text for note in fig.layout.annotations]
    assert "<b>rank 2</b>: share 2 of the batch<br>gradient g2 = [1, 4]" in texts
    assert texts.count("<b>rank 1</b>: average [1, 1]<br>the same AdamW step") == 1
    assert any("(g0 + g1 + g2) / 3<br>= [1, 1]" in text for text in texts)
    assert len(fig.layout.shapes) == 2 * 3 + 1  # a box per rank on each side, the reduction
    assert sum(1 for note in fig.layout.annotations if note.showarrow) == 2 * 3
    assert "all-reduce" in fig.layout.title.text and has_profile_label(fig)


# ---------------------------------------------------------------------------------------------
# Global batches


def test_rank_slices_follow_the_sampler():
    steps = rank_slices(10, 4, 2, seed=0)
    sampler = GlobalBatchSampler(10, 4, rank=1, world_size=2, seed=0)
    assert [index for step in steps for index, rank in step if rank == 1] == list(sampler)
    assert [[rank for _, rank in step] for step in steps] == [[0, 0, 1, 1]] * 2


def test_global_batches_figure_shows_the_same_examples_for_every_number_of_processes():
    fig = global_batches_figure(24, 8, (1, 2, 4), seed=3)
    assert len(fig.data) == 3
    texts = [trace.text for trace in fig.data]
    assert texts[0] == texts[1] == texts[2]
    assert len(texts[0]) == 3 and all(len(row) == 8 for row in texts[0])
    assert sorted(int(index) for row in texts[0] for index in row) == list(range(24))
    assert [list(trace.z[0]) for trace in fig.data] == [
        [0] * 8, [0] * 4 + [1] * 4, [0, 0, 1, 1, 2, 2, 3, 3]
    ]
    assert [note.text for note in fig.layout.annotations][:3] == [
        "1 process", "2 processes", "4 processes"
    ]
    assert fig.layout.xaxis3.title.text == "position in the global batch"
    assert has_profile_label(fig)


def test_global_batches_figure_refuses_an_indivisible_batch():
    with pytest.raises(ValueError, match="multiple of 3"):
        global_batches_figure(24, 8, (1, 3))


# ---------------------------------------------------------------------------------------------
# Speed


def test_speedup_ratio_uses_the_medians():
    speedup = Speedup("fused attention", "explicit", "fused", [0.030, 0.010, 0.020], [0.010, 0.5])
    assert speedup.ratio == pytest.approx(0.020 / 0.255)
    assert speedup.summary() == "fused attention: 0.08x (explicit 20 ms -> fused 255 ms)"
    with pytest.raises(InputError, match="at least one time"):
        Speedup("x", "a", "b", [], [1.0])
    with pytest.raises(InputError, match="positive"):
        Speedup("x", "a", "b", [0.0], [1.0])


def test_speedup_figure_draws_bars_from_one():
    fig = speedup_figure([Speedup("faster", "a", "b", [2.0], [1.0]),
                          Speedup("slower", "a", "b", [1.0], [4.0])])
    bar = fig.data[0]
    assert list(bar.y) == ["faster", "slower"]
    assert list(bar.base) == [1.0, 1.0] and list(bar.x) == [1.0, -0.75]  # ends at 2 and 0.25
    assert list(bar.text) == ["2.00x", "0.25x"]
    assert bar.marker.color[0] != bar.marker.color[1]
    assert fig.layout.xaxis.type == "log"
    assert fig.layout.xaxis.title.text.startswith("speed-up") and has_profile_label(fig)
    renamed = speedup_figure([Speedup("x", "a", "b", [1.0], [1.0])], x_title="ours vs theirs")
    assert renamed.layout.xaxis.title.text == "ours vs theirs"


def benchmark_results() -> dict:
    def timed(seconds: list[float]) -> dict:
        return {"seconds": seconds, "median_seconds": seconds[0], "tokens_per_second": 1.0}

    return {
        "training": {"ours, fused AdamW": timed([1.0]), "transformers, default AdamW": timed([3.0]),
                     "transformers, fused AdamW": timed([1.5])},
        "generation": {"ours, KV cache": timed([0.5]), "transformers, KV cache": timed([1.0]),
                       "ours, no cache": timed([2.0]), "transformers, no cache": timed([2.0])},
    }  # fmt: skip


def test_benchmark_speedups_compare_ours_with_transformers():
    speedups = benchmark_speedups(benchmark_results())
    assert [round(speedup.ratio, 3) for speedup in speedups] == [3.0, 1.5, 2.0, 1.0]
    assert speedups[0].technique == "training step: ours vs transformers"
    assert speedups[2].baseline == "transformers, KV cache"
    with pytest.raises(InputError, match="benchmark_gpt.py --json"):
        benchmark_speedups({"training": {}})


def test_loss_tracking_figure_has_one_line_per_run():
    fig = loss_tracking_figure({"float32": [4.0, 3.0], "bfloat16": [4.01, 3.02]})
    assert [trace.name for trace in fig.data] == ["float32", "bfloat16"]
    assert list(fig.data[1].x) == [1, 2] and list(fig.data[1].y) == [4.01, 3.02]
    assert fig.data[0].line.dash != fig.data[1].line.dash  # overlapping lines stay visible
    assert fig.layout.yaxis.title.text.startswith("cross-entropy") and has_profile_label(fig)
    with pytest.raises(InputError):
        loss_tracking_figure({"empty": []})
