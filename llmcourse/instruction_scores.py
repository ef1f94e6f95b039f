"""Scores of an instruction-tuned model next to baselines, in one table.

A score means little alone: ROUGE-L 0.3 may be good or may be what repeating the question gets.
So every set of responses is scored beside three baselines on the same test entries:

- ``pretrained``: the model before fine-tuning, given the same prompts;
- ``echo_instruction``: the instruction itself, as the response;
- ``echo_input``: the entry's input, as the response (empty when it has none).

Each gets ROUGE-L F1 and token F1 against the reference answers
(``llmcourse.response_scoring``) and,
for entries that carry a ``task`` (the story instructions, ``llmcourse.story_instructions``),
the share that meets its task's criterion, overall and per task. ``test-scores.json`` holds::

    {"fine_tuned": {...}, "baselines": {"pretrained": {...}, "echo_instruction": {...},
                                        "echo_input": {...}}}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from llmcourse.instruction import RESPONSE_KEY
from llmcourse.response_scoring import score_responses
from llmcourse.story_instructions import criterion_success

ECHO_BASELINES = {"echo_instruction": "instruction", "echo_input": "input"}


def response_scores(entries: Sequence[Mapping[str, Any]], response_key: str = RESPONSE_KEY
                    ) -> dict[str, Any]:
    """The scores of the responses under ``response_key``: ``rouge_l``, ``token_f1``,
    ``exact_match`` (means in [0, 1]), ``count`` and, when every entry has a ``task``,
    ``criterion_success`` (overall), ``criterion_success_by_task`` and ``count_by_task``;
    ``criterion_success`` is None for entries without tasks (the book's data)."""
    overlap = score_responses(entries, response_key)
    scores: dict[str, Any] = {
        "count": len(entries), "rouge_l": overlap.rouge_l, "token_f1": overlap.token_f1,
        "exact_match": overlap.exact_match, "criterion_success": None,
    }
    if entries and all("task" in entry for entry in entries):
        scores.update(criterion_success(entries, response_key).to_dict())
    return scores


def echo_responses(entries: Sequence[Mapping[str, Any]], field: str,
                   response_key: str = RESPONSE_KEY) -> list[dict[str, Any]]:
    """Copies of ``entries`` whose response is their own ``field`` ("instruction" or
    "input")."""
    return [{**entry, response_key: entry[field]} for entry in entries]


def scores_with_baselines(
    fine_tuned: Sequence[Mapping[str, Any]],
    pretrained: Sequence[Mapping[str, Any]] | None = None,
    response_key: str = RESPONSE_KEY,
    **other_models: Sequence[Mapping[str, Any]],
) -> dict[str, Any]:
    """The ``test-scores.json`` table: the fine-tuned model's ``response_scores`` and, under
    ``baselines``, those of other models' responses to the same entries (``pretrained``, and
    any named in ``other_models``, such as ``instruction_tuned`` for a preference-tuned model)
    and of the two echo baselines."""
    models = ({"pretrained": pretrained} if pretrained is not None else {}) | other_models
    baselines = {}
    for name, responses in models.items():
        if [entry["instruction"] for entry in fine_tuned] != [
                entry["instruction"] for entry in responses]:
            raise ValueError(f"the fine-tuned and {name} responses must answer the same "
                             "entries, in the same order")
        baselines[name] = response_scores(responses, response_key)
    for name, field in ECHO_BASELINES.items():
        baselines[name] = response_scores(echo_responses(fine_tuned, field, response_key),
                                          response_key)
    return {"fine_tuned": response_scores(fine_tuned, response_key), "baselines": baselines}


def scores_table(scores: Mapping[str, Any], model_name: str = "fine-tuned") -> str:
    """``scores_with_baselines``' result as a text table with one column per model or baseline
    (the scored model's named ``model_name``) and one row per score: the criterion success,
    overall and per task (indented), when there are tasks, then ROUGE-L (and token F1 for
    entries without tasks). Narrow enough for a book page with any number of tasks."""
    columns = {model_name: scores["fine_tuned"],
               **{name.replace("_", " "): row for name, row in scores["baselines"].items()}}
    tasks = list(scores["fine_tuned"].get("criterion_success_by_task", {}))
    lines = [["", *columns]]
    if tasks:
        lines.append(["criterion met", *(f"{row['criterion_success']:.1%}"
                                         for row in columns.values())])
        for task in tasks:
            lines.append([f"  {task}", *(
                f"{row.get('criterion_success_by_task', {}).get(task, 0.0):.1%}"
                for row in columns.values())])
    lines.append(["ROUGE-L", *(f"{row['rouge_l']:.3f}" for row in columns.values())])
    if not tasks:
        lines.append(["token F1", *(f"{row['token_f1']:.3f}" for row in columns.values())])
    widths = [max(len(line[column]) for line in lines) for column in range(len(lines[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) if column == 0 else cell.rjust(width)
                  for column, (cell, width) in enumerate(zip(line, widths, strict=True)))
        for line in lines
    )
