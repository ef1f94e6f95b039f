"""Figures of the appendix on multi-process training and speed.

- ``allreduce_figure``: data parallelism in one picture. Every rank holds its own gradient,
  an all-reduce averages them, and every rank ends with the same average, so every model copy
  takes the same optimizer step.
- ``ring_allreduce_figure``: how the average travels without a central server. The ranks form
  a ring and pass chunks of the gradient to their neighbour: N - 1 steps of *reduce-scatter*
  (add what arrives) and N - 1 steps of *all-gather* (copy what arrives). A slider goes through
  the steps; ``ring_allreduce_steps`` computes them.
- ``global_batches_figure``: which process reads which example of every global batch, for
  several numbers of processes (a dropdown). The examples stay the same; only the colours move.
- ``speedup_figure``: measured speed-ups (baseline time / faster time) as bars.
- ``loss_tracking_figure``: the losses of runs that should agree, step by step.

Everything a figure needs is computed in Python and stored in it, so its sliders and dropdowns
work in the static book, without a kernel.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from llmcourse.distributed import GlobalBatchSampler
from llmcourse.errors import InputError
from llmcourse.figures.display import PROFILE_LABEL_NAME, layout_defaults

RANK_COLOURS = ("#1a73e8", "#d93025", "#188038", "#f29900", "#9334e6", "#12b5cb", "#e8710a",
                "#5f6368")  # fmt: skip
GRADIENT_FILL = "#e8f0fe"
AVERAGE_FILL = "#e6f4ea"
REDUCE_FILL = "#fef7e0"
SEND_COLOUR = "#3c4043"
WRAP_COLOUR = "#d93025"  # the send from the last rank back to rank 0, which closes the ring
LINE_DASHES = ("solid", "dash", "dot", "dashdot")
MARKER_SYMBOLS = ("circle", "x", "diamond", "square")
FASTER_COLOUR = "#188038"
SLOWER_COLOUR = "#d93025"


def _check_gradients(gradients: Sequence[Sequence[float]], max_ranks: int) -> None:
    if not 2 <= len(gradients) <= max_ranks:
        raise InputError(
            f"give one gradient per rank, for 2 to {max_ranks} ranks; got {len(gradients)}"
        )
    lengths = {len(gradient) for gradient in gradients}
    if len(lengths) != 1 or 0 in lengths:
        raise InputError(
            f"every rank's gradient must have the same, non-zero length; got lengths "
            f"{[len(gradient) for gradient in gradients]}"
        )


def _vector(values: Sequence[float]) -> str:
    return "[" + ", ".join(f"{value:g}" for value in values) + "]"


def mean_over_ranks(gradients: Sequence[Sequence[float]]) -> list[float]:
    """The element-wise mean of the ranks' gradients: what an averaging all-reduce returns."""
    return [sum(column) / len(gradients) for column in zip(*gradients, strict=True)]


# ---------------------------------------------------------------------------------------------
# All-reduce: the overview


def allreduce_figure(
    gradients: Sequence[Sequence[float]],
    *,
    title: str = "Data parallelism: all-reduce makes every rank's gradient the average",
) -> go.Figure:
    """Three columns: each rank's own gradient (from its share of the global batch), the
    all-reduce that averages them, and the identical average every rank receives.

    ``gradients`` holds one short vector per rank (2 to 8 ranks, a few numbers each).
    """
    _check_gradients(gradients, max_ranks=len(RANK_COLOURS))
    n_ranks = len(gradients)
    average = mean_over_ranks(gradients)
    row_height = 1.0
    top = n_ranks * row_height
    centre_y = top / 2
    fig = go.Figure()
    annotations: list[dict[str, Any]] = []

    def box(x0: float, x1: float, y0: float, y1: float, fill: str, border: str) -> None:
        fig.add_shape(type="rect", x0=x0, x1=x1, y0=y0, y1=y1, fillcolor=fill,
                      line={"color": border, "width": 2}, layer="below")

    def arrow(x_from: float, y_from: float, x_to: float, y_to: float, colour: str) -> None:
        annotations.append({
            "x": x_to, "y": y_to, "ax": x_from, "ay": y_from, "xref": "x", "yref": "y",
            "axref": "x", "ayref": "y", "text": "", "showarrow": True, "arrowhead": 2,
            "arrowsize": 1.2, "arrowwidth": 1.5, "arrowcolor": colour,
        })

    def label(x: float, y: float, text: str, size: int = 12) -> None:
        annotations.append({"x": x, "y": y, "xref": "x", "yref": "y", "text": text,
                            "showarrow": False, "font": {"size": size}})

    for rank, gradient in enumerate(gradients):
        colour = RANK_COLOURS[rank]
        y = top - (rank + 0.5) * row_height
        box(0.0, 3.0, y - 0.38, y + 0.38, GRADIENT_FILL, colour)
        label(1.5, y, f"<b>rank {rank}</b>: share {rank} of the batch<br>"
                      f"gradient g{rank} = {_vector(gradient)}")
        box(7.0, 10.0, y - 0.38, y + 0.38, AVERAGE_FILL, colour)
        label(8.5, y, f"<b>rank {rank}</b>: average {_vector(average)}<br>"
                      "the same AdamW step")
        arrow(3.0, y, 4.0, centre_y + 0.25 * (n_ranks / 2 - rank - 0.5), colour)
        arrow(6.0, centre_y + 0.25 * (n_ranks / 2 - rank - 0.5), 7.0, y, colour)
    box(4.0, 6.0, centre_y - 0.9, centre_y + 0.9, REDUCE_FILL, SEND_COLOUR)
    terms = " + ".join(f"g{rank}" for rank in range(n_ranks))
    label(5.0, centre_y, f"<b>all-reduce</b><br>({terms}) / {n_ranks}<br>= {_vector(average)}")
    for x, text in ((1.5, "each rank computes"), (5.0, "the processes talk"),
                    (8.5, "every rank receives")):
        label(x, top + 0.35, f"<i>{text}</i>", size=13)
    fig.update_layout(
        annotations=annotations,
        xaxis={"visible": False, "range": [-0.2, 10.2]},
        yaxis={"visible": False, "range": [-0.2, top + 0.7]},
        height=max(300, 110 * n_ranks + 90),
        margin={"l": 10, "r": 10, "t": 70, "b": 10},
        plot_bgcolor="white",
    )
    return layout_defaults(fig, title=title, x_title=None, y_title=None)


# ---------------------------------------------------------------------------------------------
# Ring all-reduce


@dataclass(frozen=True)
class RingState:
    """The chunks every rank holds after one step of a ring all-reduce.

    ``values[r][c]`` is chunk c on rank r, and ``sources[r][c]`` the ranks whose gradients it
    adds up. ``sends`` lists the (from_rank, to_rank, chunk) transfers of the step that led
    here (none for the start and the final division). ``phase`` is "start", "reduce-scatter",
    "all-gather" or "average".
    """

    phase: str
    description: str
    values: tuple[tuple[float, ...], ...]
    sources: tuple[tuple[frozenset[int], ...], ...]
    sends: tuple[tuple[int, int, int], ...]


def ring_allreduce_steps(gradients: Sequence[Sequence[float]]) -> list[RingState]:
    """Simulate a ring all-reduce that averages N ranks' gradients of N chunks (one number each).

    Rank r passes chunks to rank (r + 1) mod N only, all ranks at once:

    - reduce-scatter, steps s = 0 .. N - 2: rank r sends chunk (r - s) mod N, and the receiver
      adds it to its own copy. Afterwards rank r holds the sum of chunk (r + 1) mod N.
    - all-gather, steps s = 0 .. N - 2: rank r sends chunk (r + 1 - s) mod N, now complete,
      and the receiver replaces its copy with it. Afterwards every rank holds every sum.
    - average: every rank divides by N.

    Each rank sends 2 (N - 1) chunks of 1/N of the gradient, whatever N: the time of an
    all-reduce hardly grows with the number of processes. Returns the 2N states, start first.
    """
    _check_gradients(gradients, max_ranks=len(RANK_COLOURS))
    n = len(gradients)
    if any(len(gradient) != n for gradient in gradients):
        raise InputError(
            f"the ring splits each gradient into one chunk per rank: give {n} numbers per rank "
            f"for {n} ranks, got {len(gradients[0])}"
        )
    values = [list(map(float, gradient)) for gradient in gradients]
    sources = [[frozenset({rank})] * n for rank in range(n)]

    def state(phase: str, description: str, sends: list[tuple[int, int, int]]) -> RingState:
        return RingState(phase, description, tuple(map(tuple, values)),
                         tuple(map(tuple, sources)), tuple(sends))

    states = [state("start", "each rank holds its own gradient, cut into "
                    f"{n} chunks", [])]
    for step in range(n - 1):
        sends = [(rank, (rank + 1) % n, (rank - step) % n) for rank in range(n)]
        sent = [(values[r][c], sources[r][c]) for r, _, c in sends]  # all ranks send at once
        for (_, to, chunk), (value, senders) in zip(sends, sent, strict=True):
            values[to][chunk] += value
            sources[to][chunk] = sources[to][chunk] | senders
        states.append(state("reduce-scatter", f"reduce-scatter {step + 1}/{n - 1}: every rank "
                            "sends one chunk to the next rank, which adds it to its own", sends))
    for step in range(n - 1):
        sends = [(rank, (rank + 1) % n, (rank + 1 - step) % n) for rank in range(n)]
        sent = [(values[r][c], sources[r][c]) for r, _, c in sends]
        for (_, to, chunk), (value, senders) in zip(sends, sent, strict=True):
            values[to][chunk], sources[to][chunk] = value, senders
        states.append(state("all-gather", f"all-gather {step + 1}/{n - 1}: every rank passes "
                            "on a complete sum, which the next rank copies", sends))
    values = [[value / n for value in row] for row in values]
    states.append(state("average", f"average: every rank divides the sums by {n}; all "
                        "ranks now hold the same mean gradient", []))
    return states


def _cell_text(value: float, sources: frozenset[int], n_ranks: int, average: bool) -> str:
    terms = "+".join(f"g{rank}" for rank in sorted(sources))
    if average:
        terms = f"({terms})/{n_ranks}"
    return f"{value:g}<br><sub>{terms}</sub>"


def _ring_arrows(state: RingState) -> list[dict[str, Any]]:
    """One arrow per send, in the column of the chunk sent, from the sender's row down to the
    receiver's; the send from the last rank back to rank 0 goes up, in red."""
    arrows = []
    for sender, receiver, chunk in state.sends:
        wraps = receiver < sender
        x = chunk + (-0.38 if wraps else 0.38)
        arrows.append({
            "x": x, "y": receiver + (0.15 if wraps else -0.15), "ax": x,
            "ay": sender + (-0.15 if wraps else 0.15),
            "xref": "x", "yref": "y", "axref": "x", "ayref": "y", "text": "",
            "showarrow": True, "arrowhead": 2, "arrowsize": 1.2, "arrowwidth": 2,
            "arrowcolor": WRAP_COLOUR if wraps else SEND_COLOUR,
        })
    return arrows


def ring_allreduce_figure(
    gradients: Sequence[Sequence[float]],
    *,
    title: str = "Ring all-reduce, step by step",
) -> go.Figure:
    """A grid of ranks (rows) by gradient chunks (columns), coloured by how many ranks' gradients
    each chunk adds up so far, with arrows for the chunks sent at each step; a slider goes through
    the steps of ``ring_allreduce_steps`` (N ranks, N numbers each)."""
    states = ring_allreduce_steps(gradients)
    n = len(gradients)

    def cells(state: RingState) -> dict[str, Any]:
        average = state.phase == "average"
        return {
            "z": [[len(sources) for sources in row] for row in state.sources],
            "text": [[_cell_text(v, s, n, average) for v, s in zip(values, sources, strict=True)]
                     for values, sources in zip(state.values, state.sources, strict=True)],
        }

    def notes(state: RingState) -> list[dict[str, Any]]:
        caption = {"x": 0.5, "y": 0.0, "yanchor": "top", "yshift": -58, "xref": "paper",
                   "yref": "paper", "showarrow": False, "text": state.description,
                   "font": {"size": 13}}
        return [*_ring_arrows(state), caption]

    first = cells(states[0])
    fig = go.Figure(go.Heatmap(
        z=first["z"], text=first["text"], texttemplate="%{text}", textfont={"size": 13},
        x=[f"chunk {c}" for c in range(n)], y=[f"rank {r}" for r in range(n)],
        colorscale=[[0.0, "#f1f3f4"], [1.0, "#34a853"]], zmin=1, zmax=n, xgap=4, ygap=4,
        colorbar={"title": {"text": "ranks summed"}, "tickvals": list(range(1, n + 1))},
        hovertemplate="%{y}, %{x}: %{z} of " + str(n) + " ranks' gradients<extra></extra>",
    ))
    fig.update_layout(annotations=notes(states[0]))
    layout_defaults(fig, title=title, x_title="chunk of the gradient", y_title="process (rank)")
    profile_label = [note.to_plotly_json() for note in fig.layout.annotations
                     if note.name == PROFILE_LABEL_NAME]
    fig.update_layout(
        yaxis={"autorange": "reversed"},
        height=220 + 90 * n,
        margin={"b": 170},
        sliders=[{
            "active": 0, "pad": {"t": 95}, "currentvalue": {"prefix": "step: "},
            "steps": [
                {"label": f"{index}: {state.phase}", "method": "update",
                 "args": [{key: [value] for key, value in cells(state).items()},
                          {"annotations": [*notes(state), *profile_label]}]}
                for index, state in enumerate(states)
            ],
        }],
    )
    return fig


# ---------------------------------------------------------------------------------------------
# Global batches


def rank_slices(
    dataset_size: int, global_batch_size: int, world_size: int, *, seed: int = 0
) -> list[list[tuple[int, int]]]:
    """Every global batch of epoch 0 as ``GlobalBatchSampler`` splits it among ``world_size``
    processes: step k's list of (example index, rank that reads it), rank 0's share first."""
    per_rank = []
    for rank in range(world_size):
        sampler = GlobalBatchSampler(dataset_size, global_batch_size, rank=rank,
                                     world_size=world_size, seed=seed)
        indices, size = list(sampler), sampler.per_process_batch_size
        per_rank.append([indices[start:start + size] for start in range(0, len(indices), size)])
    return [
        [(index, rank) for rank, share in enumerate(step) for index in share]
        for step in zip(*per_rank, strict=True)
    ]


def global_batches_figure(
    dataset_size: int,
    global_batch_size: int,
    world_sizes: Sequence[int] = (1, 2, 4),
    *,
    seed: int = 0,
    title: str = "The global batches do not depend on the number of processes",
) -> go.Figure:
    """One panel per number of processes, stacked: a row per optimizer step, a cell per example
    of its global batch, labelled with the example's index and coloured by the process that
    reads it. Each panel is computed from its own samplers."""
    if not world_sizes:
        raise InputError("give at least one number of processes to show")
    largest = max(world_sizes)
    if largest > len(RANK_COLOURS):
        raise InputError(f"at most {len(RANK_COLOURS)} processes can be coloured")
    fig = make_subplots(
        rows=len(world_sizes), cols=1, shared_xaxes=True, vertical_spacing=0.08,
        subplot_titles=[f"{n} process{'es' if n > 1 else ''}" for n in world_sizes],
    )
    for row, world_size in enumerate(world_sizes, start=1):
        steps = rank_slices(dataset_size, global_batch_size, world_size, seed=seed)
        fig.add_trace(go.Heatmap(
            z=[[rank for _, rank in step] for step in steps],
            text=[[str(index) for index, _ in step] for step in steps],
            texttemplate="%{text}", textfont={"size": 13}, coloraxis="coloraxis",
            x=list(range(global_batch_size)), y=[f"step {k + 1}" for k in range(len(steps))],
            xgap=3, ygap=3,
            hovertemplate=f"{world_size} processes, %{{y}}, position %{{x}}: example %{{text}}, "
            "read by rank %{z}<extra></extra>",
        ), row=row, col=1)
        fig.update_yaxes(autorange="reversed", row=row, col=1)
    colours = RANK_COLOURS[:largest]
    fig.update_layout(
        coloraxis={
            "colorscale": [[position / largest, colour] for rank, colour in enumerate(colours)
                           for position in (rank, rank + 1)],
            "cmin": -0.5, "cmax": largest - 0.5,
            "colorbar": {"title": {"text": "rank"}, "tickvals": list(range(largest))},
        },
        xaxis={"dtick": 1},
        height=140 + len(world_sizes) * (60 + 32 * (dataset_size // global_batch_size)),
    )
    layout_defaults(fig, title=title, x_title=None, y_title="step")
    fig.update_xaxes(title_text="position in the global batch", row=len(world_sizes), col=1)
    return fig


# ---------------------------------------------------------------------------------------------
# Speed


@dataclass(frozen=True)
class Speedup:
    """One timed comparison: the same work done the ``baseline`` way and the ``faster`` way.

    Times are lists of seconds, one per timed round; ``ratio`` compares their medians
    (above 1: the faster way is faster indeed; below 1: it is slower on this machine).
    """

    technique: str
    baseline: str
    faster: str
    baseline_seconds: Sequence[float]
    faster_seconds: Sequence[float]

    def __post_init__(self) -> None:
        if not self.baseline_seconds or not self.faster_seconds:
            raise InputError(f"{self.technique}: give at least one time of each way")
        if min(*self.baseline_seconds, *self.faster_seconds) <= 0:
            raise InputError(f"{self.technique}: times must be positive seconds")

    @property
    def ratio(self) -> float:
        return statistics.median(self.baseline_seconds) / statistics.median(self.faster_seconds)

    def summary(self) -> str:
        """'fused attention: 1.84x (explicit 12.1 ms -> fused 6.6 ms)'."""
        return (f"{self.technique}: {self.ratio:.2f}x ({self.baseline} "
                f"{_duration(statistics.median(self.baseline_seconds))} -> {self.faster} "
                f"{_duration(statistics.median(self.faster_seconds))})")


def _duration(seconds: float) -> str:
    return f"{seconds * 1000:.3g} ms" if seconds < 1 else f"{seconds:.3g} s"


def speedup_figure(
    speedups: Sequence[Speedup],
    *,
    title: str = "Measured speed-ups on this machine",
    x_title: str = "speed-up (baseline time / faster time)",
) -> go.Figure:
    """Horizontal bars from 1 (no change, a dashed line) to each ``Speedup.ratio``, on a log
    scale: green to the right for a speed-up, red to the left for a slow-down; hovering shows
    the two median times."""
    if not speedups:
        raise InputError("give at least one measured speed-up")
    ratios = [speedup.ratio for speedup in speedups]
    hover = [
        f"{s.baseline}: {_duration(statistics.median(s.baseline_seconds))}<br>"
        f"{s.faster}: {_duration(statistics.median(s.faster_seconds))}"
        for s in speedups
    ]
    fig = go.Figure(go.Bar(  # each bar spans from 1 (no change) to its ratio
        base=[1.0] * len(ratios), x=[ratio - 1.0 for ratio in ratios],
        y=[speedup.technique for speedup in speedups], orientation="h",
        marker_color=[FASTER_COLOUR if ratio >= 1 else SLOWER_COLOUR for ratio in ratios],
        text=[f"{ratio:.2f}x" for ratio in ratios], textposition="outside",
        customdata=[[ratio, text] for ratio, text in zip(ratios, hover, strict=True)],
        hovertemplate="%{y}: %{customdata[0]:.2f}x<br>%{customdata[1]}<extra></extra>",
    ))
    fig.add_vline(x=1.0, line={"color": SEND_COLOUR, "dash": "dash"})
    low, high = min(*ratios, 1.0), max(*ratios, 1.0)
    fig.update_layout(
        xaxis={"type": "log", "range": [math.log10(low) - 0.3, math.log10(high) + 0.4]},
        yaxis={"autorange": "reversed"},
        height=160 + 55 * len(speedups),
        showlegend=False,
    )
    return layout_defaults(fig, title=title, x_title=x_title, y_title=None)


def benchmark_speedups(results: Mapping[str, Any]) -> list[Speedup]:
    """Our GPT against transformers' GPT-2, from the JSON of ``benchmarks/benchmark_gpt.py``:
    each comparison uses the rounds' seconds (both sides do the same tokens per round)."""
    try:
        training, generation = results["training"], results["generation"]
        pairs = [
            ("training step", "transformers, default AdamW", "ours, fused AdamW", training),
            ("training step (both fused AdamW)", "transformers, fused AdamW",
             "ours, fused AdamW", training),
            ("generation, KV cache", "transformers, KV cache", "ours, KV cache", generation),
            ("generation, no cache", "transformers, no cache", "ours, no cache", generation),
        ]
        return [
            Speedup(f"{name}: ours vs transformers", baseline, faster,
                    phase[baseline]["seconds"], phase[faster]["seconds"])
            for name, baseline, faster, phase in pairs
        ]
    except (KeyError, TypeError) as error:
        raise InputError(
            f"these are not the results of benchmarks/benchmark_gpt.py --json (missing {error}); "
            "run the benchmark again to write them"
        ) from None


# ---------------------------------------------------------------------------------------------
# Losses


def loss_tracking_figure(
    losses: Mapping[str, Sequence[float]],
    *,
    title: str = "Training loss, step by step",
) -> go.Figure:
    """One line per run of the training loss (nats per token) against the optimizer step; each
    run has its own colour, dash and marker, so that lines lying on top of each other stay
    visible."""
    if not losses or not all(losses.values()):
        raise InputError("give at least one run with at least one loss")
    fig = go.Figure()
    for index, (name, values) in enumerate(losses.items()):
        fig.add_trace(go.Scatter(
            x=list(range(1, len(values) + 1)), y=list(values), name=name, mode="lines+markers",
            line={"color": RANK_COLOURS[index % len(RANK_COLOURS)], "width": 2,
                  "dash": LINE_DASHES[index % len(LINE_DASHES)]},
            marker={"symbol": MARKER_SYMBOLS[index % len(MARKER_SYMBOLS)], "size": 9},
            hovertemplate="step %{x}: loss %{y:.4f}<extra>" + name + "</extra>",
        ))
    fig.update_layout(legend={"orientation": "h", "y": -0.25})
    return layout_defaults(fig, title=title, x_title="optimizer step",
                           y_title="cross-entropy loss (nats per token)")
