"""Figures of chapter 6, pretraining and decoding.

- ``loss_curves_figure``: training and validation loss of a run, against optimizer steps or
  tokens seen (a dropdown switches the x axis), with the loss of every training batch behind.
- ``learning_rate_figure``: the warmup + cosine schedule, and the rates a run really used.
- ``gradient_norm_figure``: the global gradient norm of each step before and after clipping.
- ``next_token_figure``: a next-token distribution under temperature scaling (a slider over
  precomputed frames, temperature 0 being greedy decoding) and top-k / top-p filtering
  (a dropdown). ``next_token_probabilities`` computes what it shows.

Everything a figure needs is computed in Python and stored in it, so the sliders and dropdowns
work in the static book, without a kernel.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import plotly.graph_objects as go
import torch

from llmcourse.errors import InputError
from llmcourse.figures.display import layout_defaults
from llmcourse.generation import Sampling
from llmcourse.model_state import eval_mode, model_device
from llmcourse.schedules import warmup_cosine_lr
from llmcourse.training import TrainingHistory

BATCH_COLOUR = "#9aa0a6"
TRAIN_COLOUR = "#1a73e8"
VAL_COLOUR = "#d93025"
CLIPPED_COLOUR = "#188038"
WARMUP_FILL = "rgba(242, 153, 0, 0.15)"
OTHER_TOKENS = "(all other tokens)"
DEFAULT_TEMPERATURES = (0.0, 0.1, 0.5, 1.0, 1.5, 2.0, 5.0)

Labels = Sequence[str] | Callable[[int], str]

PLAIN_SAMPLING = Sampling(temperature=1.0)  # the softmax of the logits, unchanged


# ----------------------------------------------------------------------------------------------
# Loss curves


def loss_curves_figure(
    history: TrainingHistory, *, title: str = "Training and validation loss"
) -> go.Figure:
    """The losses of a run: every batch's training loss (thin grey line, dropout on), and at
    each evaluation the mean training and validation loss (dropout off), in nats per token.

    A dropdown puts optimizer steps or tokens seen on the x axis. Tokens per step are taken as
    ``history.tokens_seen / len(history.steps)``, exact when every batch has the same size.
    The lowest validation loss is marked.
    """
    if not history.steps:
        raise InputError("the history has no steps yet: train for at least one step")
    tokens_per_step = history.tokens_seen / len(history.steps)
    evals = history.evals
    val_evals = [record for record in evals if record.val_loss is not None]
    series = [  # (name, steps, tokens, losses, style)
        ("training loss of each batch", history.steps,
         [step * tokens_per_step for step in history.steps], history.train_losses,
         {"mode": "lines", "line": {"color": BATCH_COLOUR, "width": 1}, "opacity": 0.6}),
        ("training loss", [r.step for r in evals], [r.tokens_seen for r in evals],
         [r.train_loss for r in evals],
         {"mode": "lines+markers", "line": {"color": TRAIN_COLOUR, "width": 2.5}}),
        ("validation loss", [r.step for r in val_evals], [r.tokens_seen for r in val_evals],
         [r.val_loss for r in val_evals],
         {"mode": "lines+markers", "line": {"color": VAL_COLOUR, "width": 2.5}}),
    ]
    if val_evals:
        best = min(val_evals, key=lambda record: record.val_loss)
        series.append((
            "lowest validation loss", [best.step], [best.tokens_seen], [best.val_loss],
            {"mode": "markers", "marker": {"symbol": "star", "size": 14, "color": VAL_COLOUR}},
        ))
    fig = go.Figure()
    for name, steps, _, losses, style in series:
        fig.add_trace(go.Scatter(
            x=steps, y=losses, name=name, **style,
            hovertemplate="%{x:,}: loss %{y:.3f}<extra>" + name + "</extra>",
        ))
    x_choices = {
        "optimizer step": [steps for _, steps, _, _, _ in series],
        "tokens seen": [tokens for _, _, tokens, _, _ in series],
    }
    fig.update_layout(
        updatemenus=[{
            "type": "dropdown", "x": 1.0, "xanchor": "right", "y": 1.13, "yanchor": "bottom",
            "buttons": [
                {"label": f"x axis: {axis}", "method": "update",
                 "args": [{"x": xs}, {"xaxis.title.text": axis}]}
                for axis, xs in x_choices.items()
            ],
        }],
        legend={"orientation": "h", "y": -0.2},
        hovermode="closest",
    )
    return layout_defaults(fig, title=title, x_title="optimizer step",
                           y_title="cross-entropy loss (nats per token)")


# ----------------------------------------------------------------------------------------------
# Learning rate and gradient norms


def learning_rate_figure(
    *,
    max_lr: float,
    warmup_steps: int,
    total_steps: int,
    min_lr: float,
    recorded: Sequence[float] | None = None,
    title: str = "Learning rate: linear warmup, then cosine decay",
) -> go.Figure:
    """``warmup_cosine_lr`` for every optimizer update 0 .. total_steps - 1 (the warmup is
    shaded), and, when given, the rates a run ``recorded`` (``TrainingHistory.learning_rates``,
    whose item s - 1 is the rate of step s) as markers on top."""
    updates = list(range(total_steps))
    rates = [
        warmup_cosine_lr(s, max_lr=max_lr, warmup_steps=warmup_steps, total_steps=total_steps,
                         min_lr=min_lr)
        for s in updates
    ]
    fig = go.Figure()
    if warmup_steps:
        fig.add_vrect(x0=-0.5, x1=warmup_steps - 0.5, fillcolor=WARMUP_FILL, line_width=0,
                      annotation_text="warmup", annotation_position="top left")
    fig.add_trace(go.Scatter(
        x=updates, y=rates, mode="lines", name="warmup_cosine_lr",
        line={"color": TRAIN_COLOUR, "width": 2.5},
        hovertemplate="update %{x}<br>lr %{y:.3g}<extra></extra>",
    ))
    if recorded is not None:
        fig.add_trace(go.Scatter(
            x=list(range(len(recorded))), y=list(recorded), mode="markers",
            name="rate used by the training loop", marker={"color": VAL_COLOUR, "size": 5},
            hovertemplate="update %{x}<br>lr %{y:.3g}<extra></extra>",
        ))
    fig.add_hline(y=min_lr, line={"dash": "dot", "color": BATCH_COLOUR},
                  annotation_text="min_lr", annotation_position="bottom right")
    fig.update_layout(legend={"orientation": "h", "y": -0.2})
    return layout_defaults(fig, title=title, x_title="optimizer update (0-based)",
                           y_title="learning rate")


def gradient_norm_figure(
    norms_before: Sequence[float],
    norms_after: Sequence[float],
    max_norm: float,
    *,
    title: str = "Global gradient norm, before and after clipping",
) -> go.Figure:
    """The global L2 norm of all gradients at each step (1-based) before and after
    ``clip_grad_norm_(..., max_norm)``, with the threshold as a dashed line."""
    if len(norms_before) != len(norms_after):
        raise InputError(
            f"got {len(norms_before)} norms before clipping but {len(norms_after)} after; "
            "record both at every step"
        )
    steps = list(range(1, len(norms_before) + 1))
    fig = go.Figure()
    for name, norms, colour in (("before clipping", norms_before, VAL_COLOUR),
                                ("after clipping", norms_after, CLIPPED_COLOUR)):
        fig.add_trace(go.Scatter(
            x=steps, y=list(norms), name=name, mode="lines+markers",
            line={"color": colour, "width": 2},
            hovertemplate="step %{x}<br>norm %{y:.3f}<extra>" + name + "</extra>",
        ))
    fig.add_hline(y=max_norm, line={"dash": "dash", "color": "black"},
                  annotation_text=f"max_norm = {max_norm:g}", annotation_position="top right")
    fig.update_layout(legend={"orientation": "h", "y": -0.2})
    return layout_defaults(fig, title=title, x_title="optimizer step",
                           y_title="gradient norm (L2, all parameters)")


# ----------------------------------------------------------------------------------------------
# Next-token distributions


def next_token_probabilities(
    logits: torch.Tensor, sampling: Sampling = PLAIN_SAMPLING
) -> torch.Tensor:
    """The distribution (V,) that ``sample_next_token`` draws from with ``sampling``, for logits
    (V,) of one position (``Sampling.probabilities``); by default the plain softmax."""
    if logits.dim() != 1:
        raise InputError(
            f"expected the logits of one position, (V,), got shape {tuple(logits.shape)}"
        )
    return sampling.probabilities(logits.detach())


def next_token_logits(model: torch.nn.Module, tokenizer: object, prompt: str) -> torch.Tensor:
    """The logits (V,) a model gives the token after ``prompt`` (eval mode, no gradients)."""
    ids = torch.tensor([tokenizer.encode(prompt)], device=model_device(model))  # (1, T)
    with eval_mode(model), torch.no_grad():
        return model(ids[:, -model.config.context_length :])[0, -1].cpu()


def shown_tokens(
    logits: torch.Tensor, labels: Labels, max_bars: int
) -> tuple[list[int], list[str]]:
    """The ids of the ``max_bars`` largest logits (V,), most likely first, and their labels.

    ``labels`` is a list of V strings or a function from token id to string."""
    if not callable(labels) and len(labels) != logits.numel():
        raise InputError(
            f"got {len(labels)} labels for {logits.numel()} logits; give one label per token "
            "or a function from token id to label"
        )
    ids = logits.topk(min(max_bars, logits.numel())).indices.tolist()
    label_of = labels if callable(labels) else labels.__getitem__
    return ids, [label_of(token) for token in ids]


def _bar_values(probabilities: torch.Tensor, ids: list[int]) -> list[float]:
    """The probabilities of the shown tokens, plus the mass of all others when some are hidden."""
    shown = probabilities[ids]
    if len(ids) == probabilities.numel():
        return shown.tolist()
    return [*shown.tolist(), max(0.0, 1.0 - float(shown.sum()))]


def temperature_label(temperature: float) -> str:
    return "0 (greedy)" if temperature == 0 else f"{temperature:g}"


def next_token_figure(
    logits: torch.Tensor,
    labels: Labels,
    *,
    temperatures: Sequence[float] = DEFAULT_TEMPERATURES,
    top_k: int = 3,
    top_p: float = 0.9,
    max_bars: int = 15,
    title: str = "Next-token probabilities under temperature, top-k and top-p",
) -> go.Figure:
    """Bars of the next-token distribution for logits (V,): a slider picks the temperature,
    a dropdown the filter (none, top-k, top-p). Every combination is precomputed.

    Only the ``max_bars`` most likely tokens get a bar (in order of their logits); when the
    vocabulary is larger, one more bar holds the probability of all the others.
    """
    if not temperatures:
        raise InputError("give at least one temperature")
    ids, names = shown_tokens(logits, labels, max_bars)
    if len(ids) < logits.numel():
        names = [*names, OTHER_TOKENS]
    filters = {"no filter": {}, f"top-k, k = {top_k}": {"top_k": top_k},
               f"top-p, p = {top_p:g}": {"top_p": top_p}}  # Sampling fields of each

    def bars(temperature: float) -> list[go.Bar]:
        return [
            go.Bar(
                x=names,
                y=_bar_values(
                    next_token_probabilities(logits, Sampling(temperature, **options)), ids
                ),
                name=name, marker_color=TRAIN_COLOUR,
                hovertemplate="%{x}<br>probability %{y:.4f}<extra></extra>",
            )
            for name, options in filters.items()
        ]

    start = min(range(len(temperatures)), key=lambda i: abs(temperatures[i] - 1.0))
    frames = [go.Frame(data=bars(t), name=temperature_label(t)) for t in temperatures]
    fig = go.Figure(data=bars(temperatures[start]), frames=frames)
    for index, trace in enumerate(fig.data):
        trace.visible = index == 0
    fig.update_layout(
        showlegend=False,
        yaxis_range=[0, 1.05],
        xaxis={"type": "category", "tickangle": -45},
        updatemenus=[{
            "type": "dropdown", "x": 1.0, "xanchor": "right", "y": 1.13, "yanchor": "bottom",
            "buttons": [
                {"label": name, "method": "restyle",
                 "args": [{"visible": [i == j for j in range(len(filters))]}]}
                for i, name in enumerate(filters)
            ],
        }],
        sliders=[{
            "active": start, "currentvalue": {"prefix": "temperature: "}, "pad": {"t": 90},
            "steps": [
                {"label": temperature_label(t), "method": "animate",
                 "args": [[temperature_label(t)],
                          {"mode": "immediate", "frame": {"duration": 0, "redraw": True},
                           "transition": {"duration": 0}}]}
                for t in temperatures
            ],
        }],
        margin={"b": 160},
    )
    return layout_defaults(fig, title=title, x_title="next token", y_title="probability")
