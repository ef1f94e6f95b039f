"""Story instructions: the builder is deterministic and keeps held-out stories out of training,
every reference answer meets its criterion, and each criterion tells good answers from bad."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import pytest

from llmcourse import story_instructions as si
from llmcourse.errors import DataError
from llmcourse.pretraining import read_corpus
from llmcourse.sliding_window import split_text
from llmcourse.splits import Split

NAMES = ("Lily", "Tom", "Mia", "Ben", "Zoe", "Max", "Sue", "Sam")
VAL_FRACTION = 0.25  # of the synthetic text: about 10 of its 40 stories are held out


def marker(index: int) -> str:
    """A word that only story ``index`` holds ("blipaa", "blipab" ...)."""
    return "blip" + "abcdefghij"[index // 10] + "abcdefghij"[index % 10]


def synthetic_story(index: int) -> str:
    name, word = NAMES[index % len(NAMES)], marker(index)
    return (f"Once upon a time, there was a little girl named {name}. {name} had a red {word}. "
            f"One day, {name} took the {word} to the park and played with her friend. They "
            f"laughed and had a lot of fun together. At night, {name} went home and slept well.")


def synthetic_text(count: int = 40) -> str:
    return f"\n{si.STORY_SEPARATOR}\n".join(synthetic_story(index) for index in range(count))


def build(seed: int = 123, **options) -> Split:
    return si.build_story_instructions(synthetic_text(), val_fraction=VAL_FRACTION, seed=seed,
                                       **options)


def entry_text(entry: Mapping[str, str]) -> str:
    return " ".join(entry[field] for field in ("instruction", "input", "output"))


@pytest.fixture(scope="module")
def corpus_split(module_data_mirror: Path) -> Split:
    """The story instructions of the TinyStories sample, built once (a few seconds)."""
    return si.load_story_instructions()


# ---------------------------------------------------------------------------------------------
# Building


def test_the_same_seed_gives_the_same_entries_and_another_seed_others():
    first, again, other = build(), build(), build(seed=7)
    assert first == again
    assert first.train != other.train
    assert sorted(map(entry_text, first.train)) != sorted(map(entry_text, other.train))


def test_every_task_family_gives_entries_with_the_book_fields_and_a_task():
    split = build()
    for part in (split.train, split.validation, split.test):
        assert set(Counter(entry["task"] for entry in part)) == set(si.TASKS)
        for entry in part:
            assert set(entry) == {"instruction", "input", "output", "task"}
            assert all(isinstance(value, str) for value in entry.values())
    assert len(split.validation) < len(split.test)  # one held-out story in three validates


def test_held_out_stories_give_no_training_entry():
    split = build()
    train_text, held_out_text = split_text(synthetic_text(), 1 - VAL_FRACTION)
    held_out = {marker(index) for index in range(40) if marker(index) in held_out_text}
    trained = {marker(index) for index in range(40) if marker(index) in train_text}
    assert len(held_out) >= 8 and len(trained & held_out) <= 1  # the story cut in two
    held_out -= trained

    def markers(part: list) -> set[str]:
        return {word for entry in part for word in si.words_of(entry_text(entry))
                if word.startswith("blip")}

    assert not markers(split.train) & held_out
    assert markers(split.validation) | markers(split.test) <= held_out
    assert len(markers(split.test)) >= 5


def test_held_out_stories_of_the_corpus_give_no_training_entry(corpus_split: Split):
    train_text, held_out_text = split_text(read_corpus("tinystories-2mib"), 0.9)
    held_out_stories = si.split_stories(held_out_text)[1:]
    train_stories = si.split_stories(train_text)[:-1]
    assert not set(held_out_stories) & set(train_stories)

    def sentence_set(stories: list[str]) -> set[str]:
        return {sentence for story in stories for sentence in si.sentences(story)}

    def story_sentences(entry: Mapping[str, str]) -> list[str]:
        """The sentences of the entry taken from a story (not the renamed sentence, not a
        name)."""
        taken = entry["input"] + (" " + entry["output"] if entry["task"] not in (
            "main_character", "rename") else "")
        return si.sentences(taken)

    trained, held_out = sentence_set(train_stories), sentence_set(held_out_stories)
    for entry in corpus_split.train:
        assert set(story_sentences(entry)) <= trained, entry
    # Test entries come from held-out stories, and mostly from sentences only those hold
    # (some sentences, such as "Lily was very happy.", are in stories of both parts).
    tested = [sentence for entry in corpus_split.test for sentence in story_sentences(entry)]
    assert set(tested) <= held_out
    assert sum(sentence not in trained for sentence in tested) > 0.8 * len(tested)
    assert len(corpus_split.train) > 5000 and len(corpus_split.test) > 300


def test_every_reference_answer_of_the_corpus_meets_its_criterion(corpus_split: Split):
    for part in (corpus_split.train, corpus_split.validation, corpus_split.test):
        assert Counter(entry["task"] for entry in part).keys() == set(si.TASKS)
        assert [entry for entry in part if not si.criterion_met(entry, entry["output"])] == []
        score = si.criterion_success([{**entry, "model_response": entry["output"]}
                                      for entry in part])
        assert score.overall == 1.0 and set(score.by_task.values()) == {1.0}


def test_fits_keeps_only_the_entries_it_accepts():
    everything = build()
    short = build(fits=lambda entry: len(entry["output"]) < 60)
    for kept, whole in zip((short.train, short.validation, short.test),
                           (everything.train, everything.validation, everything.test),
                           strict=True):
        assert kept == [entry for entry in whole if len(entry["output"]) < 60]
        assert 0 < len(kept) < len(whole)
    assert build(fits=lambda entry: False) == Split([], [], [])


@pytest.mark.parametrize("count", [5, 12])
def test_too_little_text_is_an_error(count: int):
    with pytest.raises(DataError, match="pass more of the TinyStories text"):
        si.build_story_instructions(synthetic_text(count))


# ---------------------------------------------------------------------------------------------
# Texts and names


def test_first_sentences_keep_the_longest_run_that_fits():
    text = "Tom ran. He fell down!  Mom said, \"Stop.\" Then he slept?"
    assert si.sentences(text) == ["Tom ran.", "He fell down!", "Mom said, \"Stop.\"",
                                  "Then he slept?"]
    assert si.first_sentences(text, 22) == "Tom ran. He fell down!"
    assert si.first_sentences(text, 21) == "Tom ran."
    assert si.first_sentences(text, 7) == ""
    assert si.first_sentences(text, 1000) == " ".join(si.sentences(text))
    assert si.first_sentences(["One.", "Two."], 9) == "One. Two."


def test_replace_name_changes_whole_words_only():
    text = "Tim's ball fell. Timmy and Tim ran to Tim."
    assert si.replace_name(text, "Tim", "Sam") == "Sam's ball fell. Timmy and Sam ran to Sam."
    assert si.replace_name("Timmy and Tomtim", "Tim", "Sam") == "Timmy and Tomtim"


def test_names_and_the_main_character():
    text = ("Once there was a dog named Rex. Then Lily saw Rex, and Lily ran to Tom. So Lily and "
            "Tom played. Lily was happy. Mom was there, said Mom.")
    names = si.name_lexicon(text)
    assert names == ["Lily", "Rex"]  # Tom is capitalised inside sentences only twice
    assert si.name_lexicon(text + " Then lily ran.") == ["Rex"]  # lily is a word too
    assert si.main_character(text, set(names)) == "Lily"
    assert si.main_character("Rex and Lily. Rex, Lily.", {"Lily", "Rex"}) is None  # a tie
    assert si.main_character("Rex ran.", {"Rex"}) is None  # named once


# ---------------------------------------------------------------------------------------------
# Criteria


def entry(task: str, instruction: str, input_text: str = "", output: str = "") -> dict[str, str]:
    return {"instruction": instruction, "input": input_text, "output": output, "task": task}


WITH_WORDS = entry("story_with_words",
                   "Write a short story that uses the words ball, tree and river.")
ABOUT = entry("story_about", "Write a short story about a girl named Lily.")
MAIN = entry("main_character", "What is the name of the main character?",
             "Lily had a red ball. Lily liked to play with it every day.", "Lily")
CONTINUE = entry("continue_story", "Continue the story about Tom.",
                 "Tom had a red ball. He liked to play with it in the yard.")
RENAME = entry("rename", "Rewrite the sentence with the name Sam instead of Tom.",
               "Tom had a red ball.", "Sam had a red ball.")


@pytest.mark.parametrize(
    ("task_entry", "response", "met"),
    [
        (WITH_WORDS, "Tom found a red ball under a big tree. He threw it into the river.", True),
        (WITH_WORDS, "Ball games by the River were fun. Tom sat under a tree all day.", True),
        (WITH_WORDS, "Tom found a red ball under a big tree. He threw it into the pond.", False),
        (WITH_WORDS, "A ball, a tree and a river.", False),  # not a story: too short
        (WITH_WORDS, WITH_WORDS["instruction"], False),
        (WITH_WORDS, WITH_WORDS["instruction"] + " The ball fell from the tree.", False),
        (ABOUT, "Lily went to the park. She played with her dog all day and was happy.", True),
        (ABOUT, "lily went to the park. she played with her dog all day and was happy.", False),
        (ABOUT, "Lilyana went to the park. She played with her dog all day and was happy.",
         False),
        (ABOUT, "Lily went to the park.", False),
        (ABOUT, ABOUT["instruction"] + " " + ABOUT["instruction"], False),
        (MAIN, "Lily", True),
        (MAIN, " Lily. ", True),
        (MAIN, "lily", False),
        (MAIN, "The main character is Lily.", False),
        (MAIN, "Lily and Tom", False),
        (MAIN, "", False),
        (CONTINUE, "One day, Tom threw the ball over the fence and his friend threw it back.",
         True),
        (CONTINUE, "One day, he threw the ball over the fence and his friend threw it back.",
         False),
        (CONTINUE, "Tom smiled.", False),
        (CONTINUE, CONTINUE["input"], False),
        (CONTINUE, CONTINUE["input"] + " Tom was happy.", False),
        (RENAME, "Sam had a red ball.", True),
        (RENAME, "  Sam had a red ball.\n", True),
        (RENAME, "Tom had a red ball.", False),
        (RENAME, "Sam and Tom had a red ball.", False),
        (RENAME, "Sam had a red ball", False),
        (RENAME, "sam had a red ball.", False),
    ],
)
def test_criterion_met(task_entry: dict[str, str], response: str, met: bool):
    assert si.criterion_met(task_entry, response) is met


def test_criterion_cases_cover_every_task():
    assert {WITH_WORDS["task"], ABOUT["task"], MAIN["task"], CONTINUE["task"],
            RENAME["task"]} == set(si.TASKS)


@pytest.mark.parametrize("task", ["poem", None])
def test_an_unknown_task_is_an_error(task: str | None):
    unknown = {**MAIN, "task": task} if task else {key: MAIN[key] for key in MAIN if key != "task"}
    with pytest.raises(DataError, match="story instruction tasks are "
                       "story_with_words, story_about, main_character, continue_story, rename"):
        si.criterion_met(unknown, "Lily")
    with pytest.raises(DataError):
        si.criterion_success([{**unknown, "model_response": "Lily"}])


def test_a_story_with_words_instruction_must_name_three_words():
    with pytest.raises(DataError, match="not a story_with_words instruction"):
        si.criterion_met({**WITH_WORDS, "instruction": "Write a story."}, "Once upon a time.")


def test_criterion_success_counts_overall_and_per_task():
    entries = [{**MAIN, "model_response": "Lily"}, {**MAIN, "model_response": "Tom"},
               {**RENAME, "model_response": "Sam had a red ball."},
               {**WITH_WORDS, "model_response": "ball"}]
    score = si.criterion_success(entries)
    assert score.met == [True, False, True, False]
    assert score.overall == 0.5
    assert score.by_task == {"story_with_words": 0.0, "main_character": 0.5, "rename": 1.0}
    assert list(score.by_task) == ["story_with_words", "main_character", "rename"]  # TASKS order
    assert score.counts == {"story_with_words": 1, "main_character": 2, "rename": 1}
    assert score.to_dict() == {"criterion_success": 0.5,
                               "criterion_success_by_task": score.by_task,
                               "count_by_task": score.counts}
    assert si.criterion_success([]).overall == 0.0
    with pytest.raises(DataError, match="entry 1 has no text response"):
        si.criterion_success([entries[0], MAIN])


def test_repeats_needs_most_of_the_prompt_in_order():
    prompt = "one two three four five six seven eight nine ten"
    assert si.repeats(prompt, prompt)
    assert si.repeats("One, two: three four five six seven eight and more", prompt)  # 8 of 10
    assert not si.repeats("one two three four five six seven", prompt)  # 7 of 10
    assert not si.repeats(" ".join(reversed(prompt.split())), prompt)  # not in order
    assert si.repeats("Say: " + prompt + " again", prompt)
    assert not si.repeats("anything", "")
    assert not si.repeats("", prompt)
