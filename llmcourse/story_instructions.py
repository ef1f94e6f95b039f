"""Story instructions: an instruction data set built from TinyStories, with a checkable criterion
for every task.

A model of a few million parameters pretrained on children's stories knows nothing about
capitals or chemistry, so the book's Alpaca-style questions are out of its reach. These
instructions stay inside the world it knows, and each one says what a correct answer must do,
so that success can be counted instead of guessed from word overlap.

The recipe (deterministic: the same text and seed give the same entries):

1. The corpus is split as pretraining splits it: the first ``1 - val_fraction`` of its
   characters train, the rest is held out. Stories (separated by ``<|endoftext|>``) that lie
   wholly inside the training part make training entries; stories wholly inside the held-out
   part make validation and test entries (one story in three for validation). The story cut by the
   split point is dropped. Test stories were therefore never seen in pretraining or fine-tuning.
2. Names are words written with a capital inside sentences ("..., said Lily") and almost never
   in lower case, or words that follow "named"; the ``main_character`` of a story is its most
   frequent name, mentioned at least twice and more often than any other name.
3. Each story gives one entry per task family that applies to it (``TASKS``):

   ======================  ==================================================  ==================
   task                    instruction (input)                                 criterion
   ======================  ==================================================  ==================
   ``story_with_words``    Write a short story that uses the words W1, W2      each word appears
                           and W3.
   ``story_about``         Write a short story about a girl named N.           the name appears
   ``main_character``      What is the name of the main character? (a story)   exactly the name
   ``continue_story``      Continue the story about N. (its first sentences)   N appears again
   ``rename``              Rewrite the sentence with the name N2 instead of    the exact sentence
                           N1. (a sentence)
   ======================  ==================================================  ==================

   The words of ``story_with_words`` come from the answer story itself. Story answers are the
   story's first sentences, at most ``STORY_CHARACTERS`` characters, so that prompt and answer
   fit a context of 128 tokens.
4. A criterion that a copy of the prompt could meet also requires that the response does not
   repeat the prompt (``repeats``): echoing "Write a short story that uses the words ..." names
   every word, but it is not a story.

Entries have the book's fields (``instruction``, ``input``, ``output``) plus ``task``.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from llmcourse.errors import DataError
from llmcourse.instruction import RESPONSE_KEY
from llmcourse.pretraining import read_corpus
from llmcourse.response_scoring import lcs_length, words
from llmcourse.sliding_window import split_text
from llmcourse.splits import Split

STORY_SEPARATOR = "<|endoftext|>"
TASKS = ("story_with_words", "story_about", "main_character", "continue_story", "rename")
# Lengths in characters. The Alpaca prompt takes about 60-75 tokens of the course tokenizer, so
# an instruction, its input and its answer share the other 55-65 tokens of a 128-token context.
STORY_CHARACTERS = 170  # longest answer story (its first sentences)
INPUT_STORY_CHARACTERS = 150  # longest story given as input (main_character)
BEGINNING_CHARACTERS = 80  # longest story beginning to continue
CONTINUATION_CHARACTERS = 100  # longest continuation
SENTENCE_CHARACTERS = 70  # longest sentence to rename
MIN_STORY_WORDS = 10  # a shorter response is not a story
ECHO_SHARE = 0.8  # a response sharing this much of the prompt's words, in order, repeats it

# Capitalised words inside sentences that are not names.
NOT_NAMES = frozenset({
    "Mr", "Mrs", "Miss", "Ms", "Dr", "Mom", "Mommy", "Dad", "Daddy", "Mama", "Papa", "Grandma",
    "Grandpa", "Granny", "Auntie", "Aunt", "Uncle", "Sir", "Santa", "God", "English",
    "Spanish", "French", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday",
    "Sunday", "Christmas", "Halloween", "Easter", "Earth", "Smith", "Youth", "The", "They",
    "She", "He", "It", "We", "You", "I", "And", "But", "Then", "When", "One", "Once",
})
KINDS = ("girl", "boy", "dog", "cat", "bird", "fish", "bunny", "rabbit", "bear", "mouse",
         "frog", "duck", "puppy", "kitten", "lion", "monkey", "elephant", "squirrel", "owl",
         "horse", "turtle", "bee", "car", "truck", "boat", "robot", "man", "woman")
STOP_WORDS = frozenset("""
a about after again all also always am an and any are around as at away back be because been
before being big but by came can could day did do does down each even every for from get go
going good got had happy has have he her here him his home how i if in into is it its just
know like little look made make many may me more much must my never new next no not now of
off oh on once one only or other our out over play played said saw see she so some still than
that the their them then there they thing things this time to too took two up upon us very
want wanted was we went were what when where which while who why will with would yes you your
""".split())

NAMED = re.compile(r"\bnamed ([A-Z][a-z]+)\b")
KIND_NAMED = re.compile(r"\ban? (?:[a-z]+ ){0,2}?(" + "|".join(KINDS) + r") named ([A-Z][a-z]+)\b")
CAPITAL_INSIDE = re.compile(r"(?<=[a-z,;] )([A-Z][a-z]+)\b")
LETTERS = re.compile(r"[A-Za-z]+")
SENTENCE = re.compile(r"[^.!?]*[.!?]+[\"”']?")


@dataclass(frozen=True)
class CriterionScore:
    """How many responses meet their task's criterion: ``overall`` and per task (``by_task``),
    each a share in [0, 1], with the counts they come from."""

    overall: float
    by_task: dict[str, float]
    counts: dict[str, int]
    met: list[bool]

    def to_dict(self) -> dict[str, Any]:
        return {"criterion_success": self.overall, "criterion_success_by_task": self.by_task,
                "count_by_task": self.counts}


# ---------------------------------------------------------------------------------------------
# Stories, sentences and names


def split_stories(text: str) -> list[str]:
    """The stories of a TinyStories text: the non-empty pieces between ``<|endoftext|>``, with
    their whitespace stripped."""
    return [story.strip() for story in text.split(STORY_SEPARATOR) if story.strip()]


def sentences(text: str) -> list[str]:
    """The sentences of ``text`` (each ends in . ! or ?, a closing quote included), stripped."""
    return [piece.strip() for piece in SENTENCE.findall(text) if piece.strip()]


def first_sentences(text: str | Sequence[str], max_characters: int) -> str:
    """The longest run of the first sentences of ``text`` (a text, or its list of sentences),
    joined by spaces, that has at most ``max_characters`` characters ("" when even the first
    sentence is longer)."""
    kept = ""
    for sentence in sentences(text) if isinstance(text, str) else text:
        candidate = f"{kept} {sentence}" if kept else sentence
        if len(candidate) > max_characters:
            break
        kept = candidate
    return kept


def name_lexicon(text: str) -> list[str]:
    """The names of a text, sorted: words that follow "named", and words written with a capital
    inside a sentence at least 3 times and in lower case at most a tenth as often, except the
    words of ``NOT_NAMES``."""
    lower = Counter(word for word in LETTERS.findall(text) if word.islower())
    inside = Counter(CAPITAL_INSIDE.findall(text))
    names = set(NAMED.findall(text))
    names |= {word for word, count in inside.items()
              if count >= 3 and lower[word.lower()] * 10 <= count}
    return sorted(names - NOT_NAMES)


def name_counts(text: str, names: frozenset[str] | set[str]) -> Counter[str]:
    """How often each name of ``names`` occurs in ``text`` as a whole word."""
    return Counter(word for word in LETTERS.findall(text) if word in names)


def main_character(text: str, names: frozenset[str] | set[str]) -> str | None:
    """The most frequent name of ``text``, if it occurs at least twice and more often than any
    other name; else None."""
    ranked = name_counts(text, names).most_common(2)
    if not ranked or ranked[0][1] < 2 or (len(ranked) == 2 and ranked[1][1] == ranked[0][1]):
        return None
    return ranked[0][0]


def replace_name(text: str, old: str, new: str) -> str:
    """``text`` with every whole-word ``old`` replaced by ``new`` ("Tim's" becomes "Sam's",
    "Timmy" stays)."""
    return re.sub(rf"\b{re.escape(old)}\b", new, text)


# ---------------------------------------------------------------------------------------------
# Building the entries


def story_entries(story: str, names: Sequence[str], rng: random.Random) -> list[dict[str, str]]:
    """The entries one story gives, one per task family that applies to it (see the module's
    docstring); ``names`` is the lexicon, ``rng`` draws the words and the new names."""
    name_set = frozenset(names)
    entries = []
    short = first_sentences(story, STORY_CHARACTERS)
    content = _content_words(short, name_set)
    if len(sentences(short)) >= 2 and len(content) >= 3:
        chosen = rng.sample(content, 3)
        entries.append(_entry(
            "story_with_words",
            f"Write a short story that uses the words {chosen[0]}, {chosen[1]} and {chosen[2]}.",
            "", short))
    hero = main_character(story, name_set)
    if hero is None:
        return entries
    kind = next((match[1] for match in KIND_NAMED.finditer(story) if match[2] == hero), None)
    if hero in words_of(short) and len(sentences(short)) >= 2:
        about = f"a {kind} named {hero}" if kind else hero
        entries.append(_entry("story_about", f"Write a short story about {about}.", "", short))
    told = first_sentences(story, INPUT_STORY_CHARACTERS)
    if set(name_counts(told, name_set)) == {hero}:  # the only name in the input
        entries.append(_entry("main_character", "What is the name of the main character?",
                              told, hero))
    entries.extend(_continuation(story, hero))
    entries.extend(_rename(story, hero, names, rng))
    return entries


def words_of(text: str) -> list[str]:
    """The letter runs of ``text``, as written."""
    return LETTERS.findall(text)


def _content_words(text: str, names: frozenset[str]) -> list[str]:
    """The distinct lower-case words of at least 4 letters that are not stop words or names,
    in order of first appearance."""
    seen: dict[str, None] = {}
    for word in words_of(text):
        if word.islower() and len(word) >= 4 and word not in STOP_WORDS and word not in names:
            seen.setdefault(word, None)
    return list(seen)


def _continuation(story: str, hero: str) -> list[dict[str, str]]:
    """A ``continue_story`` entry: the story's first sentences (naming the hero) as input and
    the next sentences as the answer, if both fit."""
    story_sentences = sentences(story)
    beginning = first_sentences(story_sentences, BEGINNING_CHARACTERS)
    if hero not in words_of(beginning):
        return []
    rest = first_sentences(story_sentences[len(sentences(beginning)):], CONTINUATION_CHARACTERS)
    if len(words(rest)) < MIN_STORY_WORDS or hero not in words_of(rest):
        return []
    return [_entry("continue_story", f"Continue the story about {hero}.", beginning, rest)]


def _rename(story: str, hero: str, names: Sequence[str], rng: random.Random
            ) -> list[dict[str, str]]:
    """A ``rename`` entry: the first short sentence that names the hero, and the same sentence
    with another name of the lexicon."""
    sentence = next((s for s in sentences(story)
                     if hero in words_of(s) and len(s) <= SENTENCE_CHARACTERS), None)
    others = [name for name in names if name != hero and name not in words_of(story)]
    if sentence is None or not others:
        return []
    return [rename_entry(sentence, hero, rng.choice(others))]


def rename_entry(sentence: str, old: str, new: str) -> dict[str, str]:
    """The ``rename`` entry of ``sentence``: rewrite it with the name ``new`` instead of ``old``
    (every whole-word occurrence, ``replace_name``)."""
    return _entry("rename", f"Rewrite the sentence with the name {new} instead of {old}.",
                  sentence, replace_name(sentence, old, new))


def _entry(task: str, instruction: str, input_text: str, output: str) -> dict[str, str]:
    return {"instruction": instruction, "input": input_text, "output": output, "task": task}


def build_story_instructions(
    text: str, *, val_fraction: float = 0.1, seed: int = 123,
    fits: Callable[[Mapping[str, str]], bool] | None = None,
) -> Split:
    """Training, validation and test entries from a TinyStories text (see the module's
    docstring). The text is split like pretraining's (``val_fraction`` held out); the names
    come from the training part only. A third of the held-out stories give validation entries,
    the others test entries. Training entries are shuffled with ``seed``. ``fits``, when given,
    keeps only the entries it accepts (for example those whose prompt and answer fit a model's
    context)."""
    train_text, held_out_text = split_text(text, 1.0 - val_fraction)
    train_stories = split_stories(train_text)[:-1]  # the last one is cut by the split point
    held_out_stories = split_stories(held_out_text)[1:]  # and so is the first one here
    if len(train_stories) < 10 or len(held_out_stories) < 2:
        raise DataError(
            f"the text holds {len(train_stories)} whole training and {len(held_out_stories)} "
            "held-out stories separated by <|endoftext|>; story instructions need at least 10 "
            "and 2: pass more of the TinyStories text"
        )
    names = name_lexicon(train_text)
    rng = random.Random(seed)
    train = [entry for story in train_stories for entry in story_entries(story, names, rng)]
    validation, test = [], []
    for index, story in enumerate(held_out_stories):
        (validation if index % 3 == 0 else test).extend(story_entries(story, names, rng))
    random.Random(seed).shuffle(train)
    split = Split(train, validation, test)
    return split if fits is None else split.filtered(fits)


# ---------------------------------------------------------------------------------------------
# Criteria


def repeats(response: str, prompt: str) -> bool:
    """Whether ``response`` repeats ``prompt``: at least ``ECHO_SHARE`` of the prompt's words
    appear in it, in order (a prompt without words is never repeated)."""
    prompt_words = words(prompt)
    if not prompt_words:
        return False
    return lcs_length(words(response), prompt_words) >= ECHO_SHARE * len(prompt_words)


def criterion_met(entry: Mapping[str, str], response: str) -> bool:
    """Whether ``response`` does what ``entry`` (a story instruction, with its ``task``) asks.

    - ``story_with_words``: each of the three words appears (any case), in a story of at least
      ``MIN_STORY_WORDS`` words that does not repeat the instruction;
    - ``story_about``: the name appears, in such a story;
    - ``main_character``: the response is the name (punctuation aside);
    - ``continue_story``: the name appears, in at least
      ``MIN_STORY_WORDS`` words that do not repeat the beginning;
    - ``rename``: the response is the expected sentence (words and punctuation; spaces at the
      ends ignored).
    """
    task = entry.get("task")
    answer = words(response)
    if task == "story_with_words":
        asked = re.fullmatch(r"Write a short story that uses the words (\w+), (\w+) and (\w+)\.",
                             entry["instruction"])
        if asked is None:
            raise DataError(f"not a story_with_words instruction: {entry!r}")
        return (_is_story(answer, entry["instruction"], response)
                and uses_all_words(response, asked.groups()))
    if task == "story_about":
        name = entry["instruction"].rstrip(".").split()[-1]
        return _is_story(answer, entry["instruction"], response) and name in words_of(response)
    if task == "main_character":
        return words_of(response) == [entry["output"]]
    if task == "continue_story":
        name = entry["instruction"].rstrip(".").split()[-1]
        return (len(answer) >= MIN_STORY_WORDS and not repeats(response, entry["input"])
                and name in words_of(response))
    if task == "rename":
        return response.strip() == entry["output"].strip()
    raise DataError(
        f"entry has task {task!r}; story instruction tasks are {', '.join(TASKS)}"
    )


def uses_all_words(response: str, required: Sequence[str]) -> bool:
    """Whether every word of ``required`` appears in ``response`` as a whole word, in any case
    ("cat" is in "The Cat sat." but not in "catch")."""
    present = set(words(response))  # lower-cased runs of letters and digits
    return all(word.lower() in present for word in required)


def _is_story(answer: list[str], instruction: str, response: str) -> bool:
    return len(answer) >= MIN_STORY_WORDS and not repeats(response, instruction)


def criterion_success(entries: Sequence[Mapping[str, str]], response_key: str = RESPONSE_KEY
                      ) -> CriterionScore:
    """The share of ``entries`` whose ``response_key`` meets its task's criterion, overall and
    per task (tasks in ``TASKS`` order, those without entries left out)."""
    for index, entry in enumerate(entries):
        if not isinstance(entry.get(response_key), str):
            raise DataError(f"entry {index} has no text response {response_key!r}")
    met = [criterion_met(entry, entry[response_key]) for entry in entries]
    counts = Counter(entry["task"] for entry in entries)
    by_task = {
        task: sum(ok for ok, entry in zip(met, entries, strict=True) if entry["task"] == task)
        / counts[task]
        for task in TASKS if counts[task]
    }
    overall = sum(met) / len(met) if met else 0.0
    return CriterionScore(overall, by_task, {task: counts[task] for task in by_task}, met)


def load_story_instructions(
    corpus: str = "tinystories-2mib", *, max_characters: int | None = None,
    val_fraction: float = 0.1, seed: int = 123,
    fits: Callable[[Mapping[str, str]], bool] | None = None,
) -> Split:
    """``build_story_instructions`` on a corpus of the registry (fetched if need be) or a local
    text file, cut to ``max_characters`` as pretraining cuts it, so that the held-out stories
    are the ones pretraining held out."""
    return build_story_instructions(read_corpus(corpus, max_characters),
                                    val_fraction=val_fraction, seed=seed, fits=fits)
