"""Scores of instruction-tuned models beside the pretrained and echo baselines."""

from __future__ import annotations

import pytest

from llmcourse.instruction_scores import (
    echo_responses,
    response_scores,
    scores_table,
    scores_with_baselines,
)

MAIN = {"instruction": "What is the name of the main character?",
        "input": "Lily had a red ball. Lily liked to play.", "output": "Lily",
        "task": "main_character"}
RENAME = {"instruction": "Rewrite the sentence with the name Sam instead of Tom.",
          "input": "Tom had a red ball.", "output": "Sam had a red ball.", "task": "rename"}
BOOK = {"instruction": "Name a primary color.", "input": "", "output": "Red is a primary color."}


def answered(entry: dict[str, str], response: str, key: str = "model_response") -> dict:
    return {**entry, key: response}


FINE_TUNED = [answered(MAIN, "Lily"), answered(RENAME, "Tom had a red ball.")]
PRETRAINED = [answered(MAIN, "Once upon a time"), answered(RENAME, "Sam had a red ball.")]


def test_response_scores_of_story_instructions():
    # "Lily" is right; "Tom had a red ball." shares 4 of 5 words, in order, with the reference
    assert response_scores(FINE_TUNED) == {
        "count": 2, "rouge_l": pytest.approx(0.9), "token_f1": pytest.approx(0.9),
        "exact_match": 0.5, "criterion_success": 0.5,
        "criterion_success_by_task": {"main_character": 1.0, "rename": 0.0},
        "count_by_task": {"main_character": 1, "rename": 1},
    }


def test_response_scores_of_entries_without_tasks_have_no_criterion():
    scores = response_scores([answered(BOOK, "Red.")])
    # "red" is 1 of the response's 1 words and of the reference's 5: F1 = 2 * 1 * 0.2 / 1.2
    assert scores == {"count": 1, "rouge_l": pytest.approx(1 / 3), "token_f1": pytest.approx(1 / 3),
                      "exact_match": 0.0, "criterion_success": None}
    mixed = response_scores([answered(BOOK, "Red."), answered(MAIN, "Lily")])
    assert mixed["criterion_success"] is None and "criterion_success_by_task" not in mixed


def test_response_scores_with_another_response_key():
    entries = [answered(MAIN, "Lily", key="answer")]
    assert response_scores(entries, "answer")["criterion_success"] == 1.0


def test_echo_responses_copy_a_field():
    echoed = echo_responses([MAIN, RENAME], "input")
    assert [entry["model_response"] for entry in echoed] == [MAIN["input"], RENAME["input"]]
    assert "model_response" not in MAIN  # copies, the entries are left alone
    assert echo_responses([BOOK], "input")[0]["model_response"] == ""


def test_scores_with_baselines():
    scores = scores_with_baselines(FINE_TUNED, PRETRAINED)
    assert list(scores) == ["fine_tuned", "baselines"]
    assert list(scores["baselines"]) == ["pretrained", "echo_instruction", "echo_input"]
    assert scores["fine_tuned"] == response_scores(FINE_TUNED)
    pretrained = scores["baselines"]["pretrained"]
    assert pretrained["criterion_success_by_task"] == {"main_character": 0.0, "rename": 1.0}
    assert pretrained["rouge_l"] == pytest.approx(0.5)
    # The instruction answers no task; it shares "sam" with the rename's reference: precision
    # 1/10, recall 1/5, F1 2/15.
    echo_instruction = scores["baselines"]["echo_instruction"]
    assert echo_instruction["criterion_success"] == 0.0
    assert echo_instruction["rouge_l"] == pytest.approx((0 + 2 / 15) / 2)
    # The input names Lily once in 9 words (F1 0.2) and keeps 4 of the rename's 5 words (0.8).
    echo_input = scores["baselines"]["echo_input"]
    assert echo_input["criterion_success"] == 0.0
    assert echo_input["rouge_l"] == pytest.approx(0.5)
    for row in (scores["fine_tuned"], *scores["baselines"].values()):
        assert {"criterion_success", "rouge_l", "token_f1", "count"} <= set(row)


def test_echo_baselines_answer_the_fine_tuned_entries():
    other_inputs = [{**entry, "input": "Nothing here."} for entry in PRETRAINED]
    scores = scores_with_baselines(FINE_TUNED, other_inputs)
    assert scores["baselines"]["echo_input"] == response_scores(
        echo_responses(FINE_TUNED, "input"))


def test_book_entries_have_no_criterion_anywhere():
    scores = scores_with_baselines([answered(BOOK, "Red.")], [answered(BOOK, "Blue.")])
    rows = [scores["fine_tuned"], *scores["baselines"].values()]
    assert [row["criterion_success"] for row in rows] == [None] * 4
    assert scores["baselines"]["echo_input"]["rouge_l"] == 0.0  # an empty input matches nothing


@pytest.mark.parametrize("pretrained", [PRETRAINED[::-1], PRETRAINED[:1],
                                        [*PRETRAINED, answered(BOOK, "Red.")]])
def test_responses_to_other_entries_are_an_error(pretrained: list[dict]):
    with pytest.raises(ValueError, match="must answer the same entries, in the same order"):
        scores_with_baselines(FINE_TUNED, pretrained)


def test_scores_table_of_story_instructions():
    table = scores_table(scores_with_baselines(FINE_TUNED, PRETRAINED))
    header, *rows = table.splitlines()
    assert header.split() == ["fine-tuned", "pretrained", "echo", "instruction", "echo",
                              "input"]
    assert [row.split()[0] for row in rows] == ["criterion", "main_character", "rename",
                                                "ROUGE-L"]
    assert rows[0].split()[2:4] == ["50.0%", "50.0%"]  # fine-tuned, pretrained
    assert rows[1].split()[1:3] == ["100.0%", "0.0%"]  # main_character
    assert rows[3].split()[1:3] == ["0.900", "0.500"]
    assert len({len(line) for line in table.splitlines()}) == 1  # aligned columns
    assert max(len(line) for line in table.splitlines()) <= 80  # fits a book page


def test_scores_table_of_book_entries():
    table = scores_table(scores_with_baselines([answered(BOOK, "Red.")], [answered(BOOK, "x")]))
    header, *rows = table.splitlines()
    assert [row.split()[0] for row in rows] == ["ROUGE-L", "token"]
    assert rows[0].split()[1] == "0.333"
    assert "%" not in table


def test_other_models_are_named_baselines_beside_the_echoes():
    scores = scores_with_baselines(PRETRAINED, instruction_tuned=FINE_TUNED)
    assert list(scores["baselines"]) == ["instruction_tuned", "echo_instruction", "echo_input"]
    assert scores["baselines"]["instruction_tuned"] == response_scores(FINE_TUNED)
    assert scores_table(scores, model_name="after DPO").splitlines()[0].split()[:2] == [
        "after", "DPO"]
    with pytest.raises(ValueError, match="instruction_tuned"):
        scores_with_baselines(FINE_TUNED, instruction_tuned=FINE_TUNED[::-1])
