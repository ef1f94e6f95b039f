"""A live spam filter for Jupyter: type a message, see the probability that it is spam.

The message is classified as the fine-tuned classifier was trained (cut and padded to its
``max_length``, read at its ``read_position``) every time the text changes; a drop-down fills in
example messages. It needs a running kernel: the static book shows only its saved state.
"""

from __future__ import annotations

import html

import ipywidgets as widgets

from llmcourse.classification import Classifier, encode_message
from llmcourse.errors import InputError
from llmcourse.tokenizers import Tokenizer, gpt2_tokenizer

EXAMPLE_MESSAGES = (
    "You are a winner! You have been specially selected to receive $1000 cash or a $2000 "
    "award. Call now to claim.",
    "Hey, just wanted to check if we're still on for dinner tonight? Let me know!",
    "URGENT! Your mobile number has won a free holiday. Text WIN to 80086 now. T&C apply.",
    "Sorry I missed your call, I was in a meeting. Can I call you back in ten minutes?",
    "Congratulations ur awarded 500 of CD vouchers or 125gift guaranteed & Free entry 2 100 "
    "wkly draw txt MUSIC to 87066",
)
SPAM_COLOUR = "#d93025"
HAM_COLOUR = "#188038"


def positive_probability(
    classifier: Classifier, text: str, tokenizer: Tokenizer | None = None
) -> float:
    """The probability that ``text`` belongs to the classifier's second class (spam), for a
    two-class classifier."""
    if len(classifier.class_names) != 2:
        raise InputError(
            f"the spam widget needs a two-class classifier, this one has the classes "
            f"{list(classifier.class_names)}"
        )
    name, probability = classifier.classify(text, tokenizer)
    return probability if name == classifier.class_names[1] else 1.0 - probability


def probability_html(probability: float, class_names: tuple[str, str]) -> str:
    """A horizontal bar filled to ``probability`` (of ``class_names[1]``), red above one half
    and green below, with the verdict and the percentage."""
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"a probability lies in [0, 1], got {probability}")
    verdict = class_names[1] if probability > 0.5 else class_names[0]
    colour = SPAM_COLOUR if probability > 0.5 else HAM_COLOUR
    percent = 100 * probability
    return (
        '<div style="font-family: sans-serif; margin: 6px 0;">'
        f"<b style=\"color: {colour};\">{html.escape(verdict)}</b>: "
        f"P({html.escape(class_names[1])}) = {percent:.1f}%"
        '<div style="background: #f1f3f4; width: 100%; max-width: 480px; height: 18px; '
        'border-radius: 3px; margin-top: 4px;">'
        f'<div style="background: {colour}; width: {percent:.1f}%; height: 100%; '
        'border-radius: 3px;"></div></div></div>'
    )


def spam_classifier_widget(
    classifier: Classifier,
    tokenizer: Tokenizer | None = None,
    examples: tuple[str, ...] = EXAMPLE_MESSAGES,
) -> widgets.VBox:
    """A text box, a drop-down of ``examples`` that fills it, and the spam probability of its
    text, updated as you type. ``tokenizer`` defaults to GPT-2's."""
    tokenizer = tokenizer or gpt2_tokenizer()
    class_names = (classifier.class_names[0], classifier.class_names[1])
    chooser = widgets.Dropdown(
        options=[("(choose an example message)", "")] + [(text[:70], text) for text in examples],
        description="examples",
        layout=widgets.Layout(width="100%"),
    )
    text_box = widgets.Textarea(
        value=examples[0] if examples else "",
        description="message",
        continuous_update=True,
        layout=widgets.Layout(width="100%", height="5em"),
    )
    result = widgets.HTML()

    def show_probability(change: object = None) -> None:
        text = text_box.value
        if not text.strip():
            result.value = "<i>type a message</i>"
            return
        probability = positive_probability(classifier, text, tokenizer)
        note = ""
        tokens = len(encode_message(tokenizer, text))
        if classifier.max_length is not None and tokens > classifier.max_length:
            note = (f"<div><i>{tokens} tokens: only the first {classifier.max_length} are read"
                    "</i></div>")
        result.value = probability_html(probability, class_names) + note

    def fill_in(change: dict) -> None:
        if change["new"]:
            text_box.value = change["new"]

    chooser.observe(fill_in, names="value")
    text_box.observe(show_probability, names="value")
    show_probability()
    return widgets.VBox([chooser, text_box, result])
