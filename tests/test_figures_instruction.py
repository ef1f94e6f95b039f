"""Figures of chapter 7.2: entry lengths and the masking grid of a batch."""

from __future__ import annotations

import pytest
import torch

from llmcourse.errors import InputError
from llmcourse.figures.display import has_profile_label
from llmcourse.figures.instruction import (
    IGNORED,
    ROLES,
    criterion_success_figure,
    input_roles,
    masking_grid_figure,
    target_roles,
)
from llmcourse.figures.tokenization import token_length_figure
from llmcourse.instruction import TokenizedEntry, collate

PAD = 99
# two entries: 3 prompt tokens + 2 response tokens, and 1 prompt token + 1 response token
ITEMS = [TokenizedEntry([10, 11, 12, 13, 14], 3), TokenizedEntry([20, 21], 1)]


class NumberTokenizer:
    """Decodes token ids to "<id>"."""

    def decode(self, ids):
        return "".join(f"<{token}>" for token in ids)


def test_input_roles_follow_prompt_response_end_token_and_padding():
    assert input_roles(ITEMS, 5) == [
        ["prompt", "prompt", "prompt", "response", "response"],
        ["prompt", "response", "end token", "padding", "padding"],
    ]
    assert input_roles(ITEMS, 2)[1] == ["prompt", "response"]


def test_target_roles_name_what_each_target_predicts():
    _, targets = collate(ITEMS, pad_id=PAD)
    assert targets.tolist() == [[11, 12, 13, 14, PAD], [21, PAD, -100, -100, -100]]
    assert target_roles(ITEMS, targets) == [
        ["prompt", "prompt", "response", "response", "end token"],
        ["response", "end token", IGNORED, IGNORED, IGNORED],
    ]
    _, masked = collate(ITEMS, pad_id=PAD, mask_prompt=True)
    assert target_roles(ITEMS, masked) == [
        [IGNORED, IGNORED, "response", "response", "end token"],
        ["response", "end token", IGNORED, IGNORED, IGNORED],
    ]


def test_target_roles_reject_a_batch_of_another_size():
    with pytest.raises(InputError, match=r"shape \(B, L\) with B = 2"):
        target_roles(ITEMS, torch.zeros(3, 5, dtype=torch.long))


def test_masking_grid_draws_roles_and_switches_prompt_masking():
    fig = masking_grid_figure(ITEMS, NumberTokenizer(), pad_id=PAD)
    inputs_map, targets_map = fig.data[0], fig.data[1]
    number = {role: index for index, role in enumerate(ROLES)}
    p, r, e, pad, ign = (number[role] for role in ("prompt", "response", "end token", "padding",
                                                    IGNORED))
    assert [list(row) for row in inputs_map.z] == [[p, p, p, r, r], [p, r, e, pad, pad]]
    assert [list(row) for row in targets_map.z] == [[p, p, r, r, e], [r, e, ign, ign, ign]]
    assert list(inputs_map.y) == ["entry 1", "entry 2"]
    assert inputs_map.hovertext[0][1] == "entry 1, position 1<br>input: 11 = '<11>'<br>prompt"
    assert targets_map.hovertext[1][3] == (
        "entry 2, position 3<br>target: -100 (stands for '<99>')<br>ignored (-100)"
    )
    off, on = fig.layout.updatemenus[0].buttons
    assert (off.label, on.label) == ("prompt masking off", "prompt masking on")
    assert off.args[0]["z"][0] == [list(row) for row in targets_map.z]
    assert on.args[0]["z"][0] == [[ign, ign, r, r, e], [r, e, ign, ign, ign]]
    assert list(on.args[1]) == [1]  # restyles the targets heatmap only
    assert "stands for '<11>'" in on.args[0]["hovertext"][0][0][0]
    legend = [trace.name for trace in fig.data if trace.type == "scatter"]
    assert legend == list(ROLES)
    assert fig.layout.title.text == "What the loss sees: a batch's inputs and targets"
    assert fig.layout.xaxis2.title.text == "position"
    assert has_profile_label(fig)


def test_masking_grid_cuts_to_max_length():
    fig = masking_grid_figure(ITEMS, NumberTokenizer(), pad_id=PAD, max_length=3)
    assert [len(row) for row in fig.data[0].z] == [3, 3]
    assert [len(row) for row in fig.data[1].z] == [3, 3]


def test_masking_grid_needs_entries():
    with pytest.raises(InputError, match="at least one entry"):
        masking_grid_figure([], NumberTokenizer())


def test_token_length_figure_overlays_histograms_and_marks_the_context():
    fig = token_length_figure({"Alpaca": [50, 60, 70], "Phi-3": [30, 40]}, 64)
    assert [trace.name for trace in fig.data] == [
        "Alpaca (3 entries, mean 60)", "Phi-3 (2 entries, mean 35)"]
    assert list(fig.data[0].x) == [50, 60, 70]
    lines = [shape for shape in fig.layout.shapes if shape.type == "line"]
    assert [(line.x0, line.x1) for line in lines] == [(64, 64)]
    assert fig.layout.xaxis.title.text == "tokens per entry"
    assert has_profile_label(fig)
    assert not token_length_figure({"Alpaca": [5]}).layout.shapes


def test_token_length_figure_needs_lengths():
    with pytest.raises(InputError, match="non-empty list"):
        token_length_figure({"Alpaca": []})


def story_scores(success: float, by_task: dict[str, float]) -> dict:
    return {"criterion_success": success, "criterion_success_by_task": by_task, "rouge_l": 0.1}


def test_criterion_success_figure_draws_one_bar_group_per_task_and_overall():
    scores = {
        "fine_tuned": story_scores(0.5, {"rename": 0.25, "main_character": 0.75}),
        "baselines": {"pretrained": story_scores(0.1, {"rename": 0.0, "main_character": 0.2}),
                      "echo_input": story_scores(0.0, {"rename": 0.0})},
    }
    fig = criterion_success_figure(scores)
    assert [trace.name for trace in fig.data] == ["fine-tuned", "pretrained", "echo input"]
    assert list(fig.data[0].x) == ["all tasks", "rename", "main character"]
    assert list(fig.data[0].y) == [50.0, 25.0, 75.0]
    assert list(fig.data[2].y) == [0.0, 0.0, 0.0]  # a task the baseline lacks counts as 0
    assert fig.layout.xaxis.title.text and fig.layout.yaxis.title.text
    assert has_profile_label(fig)


def test_criterion_success_figure_refuses_scores_without_tasks():
    scores = {"fine_tuned": {"criterion_success": None, "rouge_l": 0.2}, "baselines": {}}
    with pytest.raises(InputError, match="no task criteria"):
        criterion_success_figure(scores)
