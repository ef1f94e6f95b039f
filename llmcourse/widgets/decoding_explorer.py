"""A live decoding explorer for Jupyter: move the temperature, top-k and top-p sliders and see
the next-token distribution that sampling would draw from.

Each bar shows a token's probability as the sliders set it (blue) over its plain softmax
probability at temperature 1 (grey); a button draws tokens from the current distribution.
The chart is HTML, so the widget needs no plotly; the sliders need a running kernel.
"""

from __future__ import annotations

import html

import ipywidgets as widgets
import torch
from IPython.display import display

from llmcourse.figures.training import (
    OTHER_TOKENS,
    Labels,
    next_token_logits,
    next_token_probabilities,
    shown_tokens,
)
from llmcourse.generation import Sampling

BAR_WIDTH_PX = 320
MAX_TOP_K = 50  # the top-k slider's range; beyond it the filter hardly matters
FONT = "font-family: 'DejaVu Sans Mono', Menlo, Consolas, monospace; font-size: 12px;"


class DecodingExplorer:
    """Sliders for temperature (0 is greedy), top-k (0 is off) and top-p (1 is off) over the
    next-token logits (V,); ``labels`` names the tokens (a list, or a function of the id)."""

    def __init__(
        self,
        logits: torch.Tensor,
        labels: Labels,
        *,
        max_bars: int = 12,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        samples: int = 20,
        seed: int = 123,
    ):
        self.logits = logits.detach().float().cpu()
        self.ids, self.names = shown_tokens(self.logits, labels, max_bars)
        self.label_of = labels if callable(labels) else labels.__getitem__
        self.plain = next_token_probabilities(self.logits)
        self.generator = torch.Generator().manual_seed(seed)
        self.samples = samples
        self.temperature = widgets.FloatSlider(
            value=temperature, min=0.0, max=3.0, step=0.05, description="temperature",
            continuous_update=True,
        )
        self.top_k = widgets.IntSlider(
            value=top_k or 0, min=0, max=min(MAX_TOP_K, self.logits.numel()),
            description="top-k", continuous_update=True,
        )
        self.top_p = widgets.FloatSlider(
            value=top_p or 1.0, min=0.05, max=1.0, step=0.05, description="top-p",
            continuous_update=True,
        )
        self.chart = widgets.HTML()
        self.sample_button = widgets.Button(description=f"draw {samples} tokens")
        self.drawn = widgets.HTML()
        for slider in (self.temperature, self.top_k, self.top_p):
            slider.observe(self.redraw, names="value")
        self.sample_button.on_click(self.draw)
        self.widget = widgets.VBox([
            widgets.HBox([self.temperature, self.top_k, self.top_p]),
            widgets.HTML("<i>top-k 0 and top-p 1 turn the filter off; temperature 0 is greedy "
                         "decoding</i>"),
            self.chart,
            widgets.HBox([self.sample_button, self.drawn]),
        ])
        self.redraw()

    @classmethod
    def for_prompt(
        cls, model: torch.nn.Module, tokenizer: object, prompt: str, **options: object
    ) -> DecodingExplorer:
        """The explorer of the distribution ``model`` gives the token after ``prompt``."""
        logits = next_token_logits(model, tokenizer, prompt)
        return cls(logits, lambda token: repr(tokenizer.decode([token])), **options)

    def settings(self) -> Sampling:
        """The sliders as a ``Sampling`` (a filter that is off is None)."""
        return Sampling(
            temperature=self.temperature.value,
            top_k=self.top_k.value or None,
            top_p=self.top_p.value if self.top_p.value < 1.0 else None,
        )

    def probabilities(self) -> torch.Tensor:
        """The distribution (V,) the current settings sample from."""
        return next_token_probabilities(self.logits, self.settings())

    def chart_html(self) -> str:
        """A bar per shown token: the current probability over the plain one."""
        current = self.probabilities()
        rows = [
            self._row(self.names[i], float(current[token]), float(self.plain[token]))
            for i, token in enumerate(self.ids)
        ]
        if len(self.ids) < self.logits.numel():
            rest = max(0.0, 1.0 - float(current[self.ids].sum()))
            plain_rest = max(0.0, 1.0 - float(self.plain[self.ids].sum()))
            rows.append(self._row(OTHER_TOKENS, rest, plain_rest))
        possible = int((current > 0).sum())
        caption = (
            "greedy decoding: always the most likely token"
            if self.temperature.value == 0
            else f"{possible:,} of {self.logits.numel():,} tokens can be drawn"
        )
        return (
            f'<div style="{FONT}"><b>{html.escape(caption)}</b>'
            f'<table style="border-collapse: collapse;">{"".join(rows)}</table>'
            "<i>blue: probability with these settings · grey: softmax at temperature 1</i></div>"
        )

    @staticmethod
    def _row(name: str, probability: float, plain: float) -> str:
        def bar(value: float, colour: str, height: int) -> str:
            return (f'<div style="background: {colour}; height: {height}px; '
                    f'width: {round(value * BAR_WIDTH_PX)}px;"></div>')

        return (
            f'<tr><td style="text-align: right; padding-right: 6px;">{html.escape(name)}</td>'
            f'<td style="width: {BAR_WIDTH_PX}px;">{bar(plain, "#dadce0", 5)}'
            f'{bar(probability, "#1a73e8", 10)}</td>'
            f'<td style="padding-left: 6px;">{probability:.3f}</td></tr>'
        )

    def redraw(self, change: object = None) -> None:
        self.chart.value = self.chart_html()
        self.drawn.value = ""

    def draw(self, button: object = None) -> list[str]:
        """Draw ``samples`` tokens from the current distribution; shows and returns them."""
        drawn = torch.multinomial(self.probabilities(), self.samples, replacement=True,
                                  generator=self.generator)
        names = [self.label_of(int(token)) for token in drawn]
        self.drawn.value = f'<span style="{FONT}">{html.escape(" ".join(names))}</span>'
        return names

    def _ipython_display_(self) -> None:
        display(self.widget)
