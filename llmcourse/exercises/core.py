"""The exercise-checking engine: a registry of checkers, one case runner, comparisons, ``check``.

A chapter registers one checker per exercise::

    @exercise("ch01.word_split", title="Split text into words", hint="split on spaces")
    def check_word_split(answer):
        run_cases(answer, reference_word_split, [Case(("a b",)), Case(("",))])

and the learner's notebook calls ``check("ch01.word_split", word_split)``. ``run_cases`` runs
the answer and the reference on each case and raises ``Mismatch`` for the first case where the
answer is wrong: a different value or type (``expect_equal``, ``expect_close``), a missing
``return``, an argument changed in place, a missing or unexpected exception. Typical wrong
answers given as ``Mistake``s name the mistake in the hint. ``check`` turns the outcome into an
``ExerciseResult``:

- ``passed``: every case matched;
- ``failed``: a case differed (the message names the input, the expected and the actual value);
- ``not attempted``: the answer still raises ``NotImplementedError`` (or is ``None`` / ``...``);
- ``error``: the answer raised an exception (reported with the input and the exercise's hint);
- ``timeout``: the answer did not finish within the exercise's time limit.

None of these stops the notebook, unless the check is strict: ``check(..., strict=True)`` or
``LLMCOURSE_STRICT_EXERCISES=1`` (set when the solutions notebooks run) make every outcome but
``passed`` raise ``ExerciseError``.

Each result is shown once, as a coloured box in Jupyter or one line of text elsewhere
(``✓ ch01.word_split: passed (12 cases)``), and recorded in the process's ``scorecard()``.
When ``llmcourse grade`` runs the notebook, each result is also appended to the file named by
``$LLMCOURSE_GRADE_RESULTS``, which is where the grader reads the results from.
"""

from __future__ import annotations

import contextvars
import copy
import difflib
import functools
import html
import importlib
import inspect
import json
import math
import os
import pkgutil
import re
import reprlib
import signal
import threading
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from IPython import get_ipython
from IPython.display import display

from llmcourse.errors import ConfigError, ExerciseError

STRICT_ENV = "LLMCOURSE_STRICT_EXERCISES"
RESULTS_FILE_ENV = "LLMCOURSE_GRADE_RESULTS"  # where ``check`` appends its results for a grader
DEFAULT_TIME_LIMIT = 30.0  # seconds a checker may run before its answer counts as "timeout"
STATUSES = ("passed", "failed", "error", "timeout", "not attempted", "missing")
FAILING_STATUSES = ("failed", "error", "timeout")

_SYMBOLS = {
    "passed": "✓", "failed": "✗", "error": "✗", "timeout": "✗", "not attempted": "○",
    "missing": "○",
}
_BOX_COLOURS = {  # status: (border, background)
    "passed": ("#1e7e34", "#e6f4ea"),
    "failed": ("#c62828", "#fdecea"),
    "error": ("#c62828", "#fdecea"),
    "timeout": ("#c62828", "#fdecea"),
    "not attempted": ("#5f6368", "#f1f3f4"),
    "missing": ("#5f6368", "#f1f3f4"),
}
_ID_PATTERN = re.compile(r"[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*")
_CHAPTER_MODULE = re.compile(r"ch\d\d_\w+")


class Mismatch(Exception):
    """Raised by a checker for the first case where the answer differs from the reference.

    ``case`` describes the input ("x = -3", "an empty string"); ``detail`` replaces the default
    "expected ..., got ..." sentence when a more specific one helps (a wrong shape, a wrong type).
    """

    def __init__(
        self, case: str, expected: object, got: object, hint: str = "", *, detail: str = ""
    ):
        self.case = case
        self.expected = expected
        self.got = got
        self.hint = hint
        self.detail = detail or f"expected {describe(expected)}, got {describe(got)}"
        super().__init__(f"for {case}: {self.detail}")


class _OutOfTime(BaseException):
    """Raised into the checked code at its time limit.

    A BaseException, so that an ``except Exception`` in the learner's code cannot swallow it.
    """


# ----------------------------------------------------------------------------------------------
# The registry


@dataclass(frozen=True)
class Exercise:
    """A registered exercise: its id ("ch01.word_split"), title, checker, hint and time limit."""

    exercise_id: str
    title: str
    checker: Callable[[Any], None]
    hint: str = ""
    time_limit: float = DEFAULT_TIME_LIMIT  # seconds

    @property
    def chapter(self) -> str:
        """The part of the id before the dot ("ch01")."""
        return self.exercise_id.split(".", 1)[0]

    @property
    def module(self) -> str:
        """The module that registered it ("llmcourse.exercises.ch01_tokenization")."""
        return self.checker.__module__


_REGISTRY: dict[str, Exercise] = {}


def exercise(
    exercise_id: str, *, title: str, hint: str = "", time_limit: float = DEFAULT_TIME_LIMIT
) -> Callable[[Callable[[Any], None]], Callable[[Any], None]]:
    """Register the decorated function as the checker of ``exercise_id``.

    The checker takes the learner's answer and returns nothing when it is right; it raises
    ``Mismatch`` (directly or through ``expect_equal``, ``expect_close``, ``run_cases``) for the
    first case that is wrong. ``hint`` is shown with a failure that brings no hint of its own.
    Registering an id again is allowed only for the same function (a re-run notebook cell).
    """
    if not _ID_PATTERN.fullmatch(exercise_id):
        raise ValueError(
            f"exercise id {exercise_id!r} must look like 'chapter.name' in lower case, "
            "e.g. 'ch01.word_split'"
        )
    if time_limit <= 0:
        raise ValueError(f"time_limit must be a positive number of seconds, got {time_limit}")

    def register(checker: Callable[[Any], None]) -> Callable[[Any], None]:
        existing = _REGISTRY.get(exercise_id)
        if existing is not None and _full_name(existing.checker) != _full_name(checker):
            raise ValueError(
                f"exercise {exercise_id!r} is already checked by {_full_name(existing.checker)}; "
                "give the new exercise another id"
            )
        _REGISTRY[exercise_id] = Exercise(exercise_id, title, checker, hint, time_limit)
        return checker

    return register


def _full_name(function: Callable[..., object]) -> str:
    return f"{function.__module__}.{function.__qualname__}"


@functools.cache
def _load_chapter_checkers() -> None:
    """Import every ``llmcourse/exercises/chNN_*.py`` module once; importing registers them."""
    package = importlib.import_module("llmcourse.exercises")
    for module in pkgutil.iter_modules(package.__path__):
        if _CHAPTER_MODULE.fullmatch(module.name):
            importlib.import_module(f"{package.__name__}.{module.name}")


def get_exercise(exercise_id: str) -> Exercise:
    """The registered exercise ``exercise_id``; the error for an unknown id names close ones."""
    _load_chapter_checkers()
    if exercise_id in _REGISTRY:
        return _REGISTRY[exercise_id]
    close = difflib.get_close_matches(exercise_id, _REGISTRY, n=3)
    if close:
        suggestion = "did you mean " + " or ".join(repr(name) for name in close) + "?"
    else:
        suggestion = f"there are {len(_REGISTRY)} exercises"
    raise ExerciseError(
        f"no exercise has the id {exercise_id!r}; {suggestion} "
        "(llmcourse.exercises.list_exercises() lists them all)"
    )


def list_exercises(chapter: str | int | None = None) -> list[Exercise]:
    """Every registered exercise, sorted by id; with ``chapter`` ("ch01" or 1), that chapter's."""
    _load_chapter_checkers()
    if isinstance(chapter, int):
        chapter = f"ch{chapter:02d}"
    return [
        entry for _, entry in sorted(_REGISTRY.items())
        if chapter is None or entry.chapter == chapter
    ]


# ----------------------------------------------------------------------------------------------
# The case runner


@dataclass
class _Progress:
    """The cases the running check has reached, the one in hand and its hint (for reports)."""

    current_case: str | None = None
    current_hint: str = ""
    cases: set[str] = field(default_factory=set)

    def enter(self, case: str, hint: str | None = None) -> None:
        """Make ``case`` the one in hand; ``hint`` (if given) replaces the current hint."""
        self.current_case = case
        if hint is not None:
            self.current_hint = hint
        self.cases.add(case)


# The progress of the check running in this context. A context variable, not a global: a
# checker thread abandoned at its time limit keeps its own copy and cannot touch later checks.
_PROGRESS: contextvars.ContextVar[_Progress] = contextvars.ContextVar("exercise_progress")


def _progress() -> _Progress:
    try:
        return _PROGRESS.get()
    except LookupError:  # a checker helper called outside ``check``
        progress = _Progress()
        _PROGRESS.set(progress)
        return progress


@dataclass(frozen=True)
class Case:
    """One input of an exercise: the positional arguments, and how a message names them.

    Without ``description`` the case is named after the reference's parameters and the values
    given ("ids = [1, 2], pair = (1, 2)"). ``hint`` is shown when the answer fails on this case
    and no diagnosed mistake or comparison gives a more specific one.
    """

    args: tuple[Any, ...]
    description: str | None = None
    hint: str = ""


LabelledArgs = tuple[str, Any]  # (description, positional arguments): a case named by hand
Compare = Callable[..., None]  # compare(got, expected, *, case) raises Mismatch


@dataclass(frozen=True)
class Mistake:
    """A typical wrong answer, computed the wrong way on the same inputs, and what to fix."""

    name: str
    answer: Callable[..., Any]
    hint: str


RETURNED_NONE_HINT = "did you forget `return`?"


def run_cases(
    answer: Any,
    reference: Callable[..., Any],
    cases: Iterable[Case | LabelledArgs],
    compare: Compare | None = None,
    *,
    hint: str = "",
    mistakes: Iterable[Mistake] = (),
    probe: Callable[[Callable[..., Any]], str] | None = None,
    may_change: Iterable[str] = (),
) -> None:
    """Run ``answer`` and ``reference`` on every case; raise ``Mismatch`` at the first difference.

    ``cases`` holds ``Case`` objects or ``(description, args)`` pairs (``args`` a tuple of
    positional arguments, or a single argument). Every call gets its own deep copy of the
    arguments. For each case, in order:

    - a reference that raises an exception (say ``ValueError``) means the answer must raise
      that type too;
    - an answer that returns ``None`` where the reference returns a value fails with
      "did you forget `return`?" (unless the reference returns None for another case);
    - an argument the answer changed in place (compared with a pristine copy, tensors and
      containers element by element) fails, naming the argument; parameters named in
      ``may_change`` are exempt (a model a training step updates);
    - ``compare(got, expected, case=...)`` (default ``expect_equal``: exact values and types)
      decides. A failure's hint is, in order: the one ``compare`` gave; ``probe(answer)``; the
      hint of the first ``Mistake`` that gives exactly the answer's result (by ``compare``);
      the case's ``hint``; the run's ``hint``; else ``check`` shows the exercise's hint.
    """
    compare = compare or expect_equal
    mistakes = list(mistakes)
    names = _parameter_names(reference)
    prepared = []
    for item in cases:
        case = item if isinstance(item, Case) else Case(_as_arguments(item[1]), item[0])
        arguments = _as_arguments(case.args)
        try:
            expected, expected_error = reference(*copy.deepcopy(arguments)), None
        except Exception as error:  # the exercise asks for this error on this input
            expected, expected_error = None, error
        prepared.append((case, arguments, expected, expected_error))
    # Where the reference itself returns None for some input, None is an answer, not a
    # forgotten return, and it is compared like any other value.
    none_is_an_answer = any(
        expected is None and error is None for _, _, expected, error in prepared
    )
    for case, arguments, expected, expected_error in prepared:
        description = case.description or describe_arguments(names, arguments)
        case_hint = case.hint or hint
        _progress().enter(description, case_hint)
        pristine = copy.deepcopy(arguments)
        answer_arguments = copy.deepcopy(arguments)
        if expected_error is not None:
            _expect_error(answer, answer_arguments, expected_error, description, case_hint)
            continue
        got = _call(answer, answer_arguments, description)
        if got is None and expected is not None and not none_is_an_answer:
            raise Mismatch(
                description, expected, got, RETURNED_NONE_HINT,
                detail=f"returned None but expected {describe(expected)}",
            )
        _expect_unchanged(answer_arguments, pristine, names, may_change, description)
        try:
            compare(got, expected, case=description)
        except Mismatch as mismatch:
            mismatch.hint = (
                mismatch.hint
                or (probe(answer) if probe is not None else "")
                or _recognise(got, pristine, compare, mistakes, description)
                or case_hint
            )
            raise


def _as_arguments(args: Any) -> tuple[Any, ...]:
    return args if isinstance(args, tuple) else (args,)


def _parameter_names(function: Callable[..., Any]) -> list[str]:
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature
        return []
    return [
        parameter.name for parameter in parameters
        if parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD)
    ]


def describe_arguments(names: list[str], arguments: tuple[Any, ...]) -> str:
    """ "ids = [1, 2], pair = (1, 2)": each argument after its parameter's name."""
    if not arguments:
        return "no arguments"
    return ", ".join(
        f"{_argument_name(names, position)} = {describe(value)}"
        for position, value in enumerate(arguments)
    )


def _argument_name(names: list[str], position: int) -> str:
    return names[position] if position < len(names) else f"argument {position + 1}"


def _call(answer: Any, arguments: tuple[Any, ...], case: str) -> Any:
    """``answer(*arguments)``; an answer that is not callable fails with "expected a function"."""
    if not callable(answer):
        raise Mismatch(
            case, "a function", answer,
            detail=f"expected a function to call, got {type(answer).__name__} {describe(answer)}",
        )
    return answer(*arguments)


def _expect_error(
    answer: Any, arguments: tuple[Any, ...], expected: Exception, case: str, hint: str
) -> None:
    """Fail unless ``answer(*arguments)`` raises the built-in exception type ``expected`` is.

    The reference may raise a course-specific subclass (a ``ConfigError``, a
    ``ValueError``); the answer passes with the built-in type it derives from (``ValueError``).
    """
    wanted_type = next(
        kind for kind in type(expected).__mro__ if kind.__module__ == "builtins"
    )
    wanted = wanted_type.__name__
    try:
        got = _call(answer, arguments, case)
    except wanted_type:
        return
    except (Mismatch, NotImplementedError):
        raise
    except Exception as error:  # the wrong kind of error: a mistake to explain, not a crash
        raise Mismatch(
            case, wanted, error, hint,
            detail=f"expected {_with_article(wanted)} ({expected}), but it raised "
            f"{type(error).__name__}: {error}",
        ) from None
    raise Mismatch(
        case, wanted, got, hint,
        detail=f"expected {_with_article(wanted)} ({expected}), but it returned {describe(got)}",
    )


def _expect_unchanged(
    after: tuple[Any, ...],
    before: tuple[Any, ...],
    names: list[str],
    may_change: Iterable[str],
    case: str,
) -> None:
    """Fail for the first argument the answer changed in place (one not in ``may_change``)."""
    exempt = set(may_change)
    for position, (now, then) in enumerate(zip(after, before, strict=True)):
        name = _argument_name(names, position)
        if name not in exempt and not _equal(now, then):
            raise Mismatch(
                case, then, now,
                f"your function changed its argument `{name}` in place; work on a copy",
                detail=f"the argument `{name}` was {describe(then)} before the call and "
                f"{describe(now)} after it",
            )


def _recognise(
    got: Any, arguments: tuple[Any, ...], compare: Compare, mistakes: list[Mistake], case: str
) -> str:
    """The hint of the first mistake whose result is exactly ``got`` or passes ``compare``
    against it, or ""."""
    for mistake in mistakes:
        try:
            wrong = mistake.answer(*copy.deepcopy(arguments))
            if not _equal(got, wrong):
                compare(got, wrong, case=case)
        except Exception:  # this mistake gives another result here, or does not apply
            continue
        return mistake.hint
    return ""


# ----------------------------------------------------------------------------------------------
# Comparisons


def expect_equal(got: object, expected: object, *, case: str, hint: str = "") -> None:
    """Raise ``Mismatch`` unless ``got`` equals ``expected`` with the same types all the way down.

    Tensors must match exactly (``expect_close`` with zero tolerance, same dtype); lists, tuples
    and dicts are compared element by element, each element with its type (``[[1.0]]`` is not
    ``[[1]]``, ``True`` is not ``1``); the message names the first difference.
    """
    _progress().enter(case)
    if isinstance(expected, torch.Tensor):
        expect_close(got, expected, atol=0.0, rtol=0.0, case=case, hint=hint)
    elif not _equal(got, expected):
        raise Mismatch(case, expected, got, hint, detail=_first_difference(got, expected))


def expect_close(
    got: object,
    expected: torch.Tensor,
    *,
    atol: float = 1e-5,
    rtol: float = 1e-4,
    case: str,
    hint: str = "",
) -> None:
    """Raise ``Mismatch`` unless ``got`` is a tensor close to ``expected``.

    Checks, in order, that ``got`` is a tensor, that its shape is ``expected.shape``, that its
    dtype is exactly ``expected.dtype`` (int32 is not int64, float32 is not float64), and that
    every value is within ``atol + rtol * |expected|`` (exactly equal for bool and integer
    tensors; NaN matches NaN). The message names the first differing index.
    """
    _progress().enter(case)
    if not isinstance(got, torch.Tensor):
        raise Mismatch(
            case, expected, got, hint,
            detail=f"expected a tensor, got {type(got).__name__} {describe(got)}",
        )
    if got.shape != expected.shape:
        raise Mismatch(
            case, expected, got, hint,
            detail=f"got shape {tuple(got.shape)} but expected {tuple(expected.shape)}",
        )
    if got.dtype != expected.dtype:
        raise Mismatch(
            case, expected, got, hint,
            detail=f"got a tensor of dtype {got.dtype} but expected {expected.dtype}",
        )
    got_values, expected_values = got.detach().cpu(), expected.detach().cpu()
    if not expected.dtype.is_floating_point:
        wrong = got_values != expected_values
        tolerance = ""
    else:
        difference = (got_values - expected_values).abs()
        both_nan = got_values.isnan() & expected_values.isnan()
        wrong = ~(difference <= atol + rtol * expected_values.abs()) & ~both_nan
        tolerance = f" (tolerance: atol={atol:g}, rtol={rtol:g})"
    if wrong.any():
        index = tuple(int(i) for i in wrong.nonzero()[0])
        raise Mismatch(
            case, expected, got, hint,
            detail=f"{int(wrong.sum())} of {wrong.numel()} values differ; at index {index} "
            f"expected {_number(expected_values[index])}, got {_number(got_values[index])}"
            + tolerance,
        )


def _number(element: torch.Tensor) -> str:
    value = element.item()
    return f"{value:.6g}" if isinstance(value, (float, complex)) else repr(value)


def _with_article(noun: str) -> str:
    return f"an {noun}" if noun[0].lower() in "aeiou" else f"a {noun}"


def _same_type(got: object, expected: object) -> bool:
    """``got`` is an instance of ``expected``'s type, and a bool only where a bool is expected."""
    return isinstance(got, type(expected)) and (
        isinstance(expected, bool) or not isinstance(got, bool)
    )


def _equal(got: object, expected: object) -> bool:
    """Whether ``got`` equals ``expected`` with the same types all the way down.

    Tensors need the same dtype, shape and values (NaN equals NaN); lists, tuples and dicts
    are compared element by element; a module by its parameters and buffers; an object without
    an equality of its own by its attributes.
    """
    if isinstance(expected, torch.Tensor):
        return (
            isinstance(got, torch.Tensor) and got.dtype == expected.dtype
            and got.shape == expected.shape and _same_values(got, expected)
        )
    if not _same_type(got, expected):
        return False
    if isinstance(expected, (list, tuple)):
        return len(got) == len(expected) and all(
            _equal(got_item, expected_item)
            for got_item, expected_item in zip(got, expected, strict=True)
        )
    if isinstance(expected, dict):
        return got.keys() == expected.keys() and all(
            _equal(got[key], expected[key]) for key in expected
        )
    if isinstance(expected, torch.nn.Module):
        return _equal(dict(got.state_dict()), dict(expected.state_dict()))
    if isinstance(expected, float) and math.isnan(expected):
        return math.isnan(got)
    if type(expected).__eq__ is object.__eq__ and hasattr(expected, "__dict__"):
        return _equal(vars(got), vars(expected))
    try:
        return bool(got == expected)
    except (RuntimeError, TypeError, ValueError):
        return False


def _same_values(got: torch.Tensor, expected: torch.Tensor) -> bool:
    got, expected = got.detach().cpu(), expected.detach().cpu()
    same = got == expected
    if expected.dtype.is_floating_point:
        same |= got.isnan() & expected.isnan()
    return bool(same.all())


def _first_difference(got: object, expected: object) -> str:
    """A sentence that says where ``got`` first differs from ``expected``."""
    overall = f"expected {describe(expected)}, got {describe(got)}"
    where = _difference_path(got, expected)
    if not where or not _same_type(got, expected):
        return where or overall
    return f"{where}; {overall}"


def _difference_path(got: object, expected: object) -> str:
    """Where ``got`` first differs inside ``expected`` ("at [0][1]: expected int 1, got float
    1.0"), or "" when they differ as a whole in a way ``overall`` already shows."""
    if not _same_type(got, expected):
        return (
            f"expected {type(expected).__name__} {describe(expected)}, "
            f"got {type(got).__name__} {describe(got)}"
        )
    if isinstance(expected, dict):
        missing, extra = expected.keys() - got.keys(), got.keys() - expected.keys()
        if missing or extra:
            return (
                f"missing keys {describe(sorted(missing, key=repr))}, "
                f"unexpected keys {describe(sorted(extra, key=repr))}"
            )
        for key, wanted in expected.items():
            if not _equal(got[key], wanted):
                inner = _difference_path(got[key], wanted)
                return f"at key {key!r}: " + (
                    inner or f"expected {describe(wanted)}, got {describe(got[key])}"
                )
        return ""
    if isinstance(expected, (str, list, tuple)):
        item = "character" if isinstance(expected, str) else "item"
        for position, (got_item, expected_item) in enumerate(zip(got, expected, strict=False)):
            if not _equal(got_item, expected_item):
                inner = (
                    "" if isinstance(expected_item, str)
                    else _difference_path(got_item, expected_item)
                )
                return f"{item} {position}: " + (
                    inner or f"expected {describe(expected_item)}, got {describe(got_item)}"
                )
        if len(got) != len(expected):
            return f"got {len(got)} {item}s but expected {len(expected)}"
        return ""
    if isinstance(expected, torch.Tensor) and got.dtype != expected.dtype:
        return f"got a tensor of dtype {got.dtype} but expected {expected.dtype}"
    return ""


_SHORT_REPR = reprlib.Repr()
_SHORT_REPR.maxstring = 80
_SHORT_REPR.maxother = 80
_SHORT_REPR.maxlist = _SHORT_REPR.maxtuple = _SHORT_REPR.maxdict = _SHORT_REPR.maxset = 10


def describe(value: object) -> str:
    """A short description of a value for messages: a repr cut to about 80 characters."""
    if isinstance(value, torch.Tensor):
        if value.numel() <= 8:
            return f"tensor({value.detach().cpu().tolist()}, dtype={value.dtype})"
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return _SHORT_REPR.repr(value)


# ----------------------------------------------------------------------------------------------
# Results and the scorecard


@dataclass
class ExerciseResult:
    """The outcome of one ``check``.

    ``status`` is one of ``STATUSES`` ("missing" only in a grader's scorecard, for an exercise
    never checked); ``message`` is a sentence starting with it ("failed for x = -3: expected 9,
    got -9"); ``cases`` counts the cases reached; ``details`` holds the traceback of an error;
    ``exception`` is the learner's exception for status "error".
    """

    exercise_id: str
    title: str
    status: str
    message: str
    hint: str = ""
    cases: int = 0
    details: str = ""
    exception: BaseException | None = field(default=None, repr=False, compare=False)
    shown_in_cell: int | None = field(default=None, repr=False, compare=False)

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    @property
    def summary(self) -> str:
        """One line: ``✓ ch01.word_split: passed (12 cases)``, with the hint after a failure."""
        return f"{_SYMBOLS[self.status]} {self.exercise_id}: {self.message_with_hint}"

    @property
    def message_with_hint(self) -> str:
        return f"{self.message}. Hint: {self.hint}" if self.hint else self.message

    def to_record(self) -> dict[str, Any]:
        """The result as a JSON-compatible dict (what ``llmcourse grade`` reads back)."""
        return {
            "id": self.exercise_id, "title": self.title, "status": self.status,
            "message": self.message, "hint": self.hint, "cases": self.cases,
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> ExerciseResult:
        return cls(
            record["id"], record["title"], record["status"], record["message"],
            record["hint"], record["cases"],
        )

    def to_html(self) -> str:
        """A box coloured by status: green passed, red failed/error/timeout, grey not attempted."""
        border, background = _BOX_COLOURS[self.status]
        parts = [
            f'<div style="border-left: 5px solid {border}; background: {background}; '
            'color: #202124; padding: 6px 12px; margin: 4px 0; font-family: sans-serif;">',
            f"<b>{_SYMBOLS[self.status]} {html.escape(self.title)}</b> "
            f"<code>{html.escape(self.exercise_id)}</code>",
            f"<div>{html.escape(self.message)}</div>",
        ]
        if self.hint:
            parts.append(f"<div><i>Hint:</i> {html.escape(self.hint)}</div>")
        if self.details:
            parts.append(
                "<details><summary>traceback</summary>"
                f"<pre>{html.escape(self.details)}</pre></details>"
            )
        return "\n".join([*parts, "</div>"])

    def _ipython_display_(self) -> None:
        """Jupyter's display of a returned result: skipped in the cell that already showed it."""
        shell = get_ipython()
        if shell is None or shell.execution_count != self.shown_in_cell:
            show(self)


def show(result: ExerciseResult) -> None:
    """Display ``result``: an HTML box plus text in IPython, or its one-line summary on stdout
    elsewhere."""
    shell = get_ipython()
    if shell is None:
        print(result.summary)
        return
    result.shown_in_cell = shell.execution_count
    display({"text/plain": result.summary, "text/html": result.to_html()}, raw=True)


@dataclass(repr=False)
class Scorecard:
    """The latest result of every exercise checked, in order of first check.

    ``cell_errors`` lists the notebook cells that raised (filled by ``grade_notebook``).
    """

    results: dict[str, ExerciseResult] = field(default_factory=dict)
    cell_errors: list[str] = field(default_factory=list)

    def record(self, result: ExerciseResult) -> None:
        self.results[result.exercise_id] = result

    def count(self, status: str) -> int:
        return sum(result.status == status for result in self.results.values())

    def succeeded(self, *, require_all: bool = False) -> bool:
        """No exercise failed, errored or timed out, and no cell raised; with ``require_all``,
        every exercise was also attempted and none is missing."""
        failing = FAILING_STATUSES + (("not attempted", "missing") if require_all else ())
        return not self.cell_errors and not any(self.count(status) for status in failing)

    def totals(self) -> str:
        """"3 exercises: 1 passed, 1 failed, 1 not attempted; 1 cell raised an error"."""
        counts = [
            f"{self.count(status)} {status}"
            for status in STATUSES
            if status == "passed" or self.count(status)
        ]
        text = f"{_plural(len(self.results), 'exercise')}: {', '.join(counts)}"
        if self.cell_errors:
            verb = "raised an error" if len(self.cell_errors) == 1 else "raised errors"
            text += f"; {_plural(len(self.cell_errors), 'cell')} {verb}"
        return text

    def table(self) -> str:
        """One line per exercise, then the cells that raised, then the totals."""
        width = max((len(name) for name in self.results), default=0)
        lines = [
            f"{_SYMBOLS[result.status]} {name.ljust(width)}  {result.message_with_hint}"
            for name, result in self.results.items()
        ] or ["no exercise was checked"]
        if self.cell_errors:
            lines += ["", "cells that raised an error:"]
            lines += [f"  {error}" for error in self.cell_errors]
        return "\n".join([*lines, "", self.totals()])

    def __repr__(self) -> str:
        return self.table()


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


_SCORECARD = Scorecard()


def scorecard() -> Scorecard:
    """A copy of this process's scorecard: the latest result of every exercise checked."""
    return Scorecard(dict(_SCORECARD.results))


def reset_scorecard() -> None:
    """Forget every result recorded so far in this process."""
    _SCORECARD.results.clear()


# ----------------------------------------------------------------------------------------------
# check


def strict_from_environment() -> bool:
    """Whether ``$LLMCOURSE_STRICT_EXERCISES`` asks for strict checks (1/true/yes/on)."""
    value = os.environ.get(STRICT_ENV, "").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise ConfigError(f"{STRICT_ENV}={value!r} is not understood; set it to 1 (strict) or 0")


def check(
    exercise_id: str,
    answer: Any,
    *,
    strict: bool | None = None,
    time_limit: float | None = None,
) -> ExerciseResult:
    """Check ``answer`` (a function, class or value) against exercise ``exercise_id``.

    Shows the result, records it in the scorecard and returns it. ``time_limit`` (seconds)
    overrides the exercise's own. A strict check (``strict=True``, or ``strict=None`` with
    ``$LLMCOURSE_STRICT_EXERCISES`` set) raises ``ExerciseError`` unless the result is "passed".
    """
    entry = get_exercise(exercise_id)
    strict = strict_from_environment() if strict is None else strict
    time_limit = entry.time_limit if time_limit is None else time_limit
    if time_limit <= 0:
        raise ValueError(f"time_limit must be a positive number of seconds, got {time_limit}")
    result = _evaluate(entry, answer, time_limit)
    _SCORECARD.record(result)
    _report_to_grader(result)
    show(result)
    if strict and not result.passed:
        raise ExerciseError(result.summary) from result.exception
    return result


def _report_to_grader(result: ExerciseResult) -> None:
    """Append ``result`` as one JSON line to ``$LLMCOURSE_GRADE_RESULTS``, when a grader set it.

    ``llmcourse grade`` takes its results from this file, written while the checks run, never
    from what the notebook's outputs say.
    """
    path = os.environ.get(RESULTS_FILE_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as results:
            results.write(json.dumps(result.to_record()) + "\n")


def _evaluate(entry: Exercise, answer: Any, time_limit: float) -> ExerciseResult:
    """Run the exercise's checker on ``answer`` and describe the outcome."""
    progress = _Progress()
    _PROGRESS.set(progress)

    def result(status: str, message: str, **extra: Any) -> ExerciseResult:
        cases = len(progress.cases)
        return ExerciseResult(entry.exercise_id, entry.title, status, message, cases=cases, **extra)

    if answer is None or answer is Ellipsis:
        return result("not attempted", "not attempted (no answer given yet)")
    try:
        _run_with_time_limit(lambda: entry.checker(answer), time_limit)
    except NotImplementedError:
        return result("not attempted", "not attempted (the code still raises NotImplementedError)")
    except Mismatch as mismatch:
        return result(
            "failed", f"failed for {mismatch.case}: {mismatch.detail}",
            hint=mismatch.hint or entry.hint,
        )
    except _OutOfTime:
        return result(
            "timeout",
            f"timeout{_for_current_case()}: no result within {time_limit:g} s "
            "(a loop that never ends?)",
        )
    except Exception as error:
        return result(
            "error",
            f"error{_for_current_case()}: {type(error).__name__}: {error}",
            hint=progress.current_hint or entry.hint,
            details=_traceback_without_engine(error),
            exception=error,
        )
    count = len(progress.cases)
    return result("passed", f"passed ({_plural(count, 'case')})" if count else "passed")


def _for_current_case() -> str:
    case = _progress().current_case
    return f" for {case}" if case is not None else ""


def _traceback_without_engine(error: BaseException) -> str:
    """The error's traceback without the frames of this module: the checker's and the learner's."""
    report = traceback.TracebackException.from_exception(error)
    report.stack = traceback.StackSummary.from_list(
        [frame for frame in report.stack if frame.filename != __file__]
    )
    return "".join(report.format())


# ----------------------------------------------------------------------------------------------
# Time limits


def _run_with_time_limit(function: Callable[[], None], seconds: float) -> None:
    """Run ``function()``, stopping it with ``_OutOfTime`` after ``seconds``.

    On the main thread of a Unix process (a Jupyter kernel, a script, pytest) a SIGALRM timer
    raises ``_OutOfTime`` inside the running code, so even a pure-Python endless loop stops.
    Python handles signals between bytecodes: a single long torch operation finishes first, and
    code that catches BaseException (a bare ``except:``) can swallow the signal.

    Elsewhere (Windows, or a check called from another thread) ``function`` runs in a daemon
    thread that is abandoned at the limit: Python cannot stop a thread, so it keeps running in
    the background until it ends or the process exits.
    """
    if hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread():
        _run_with_alarm(function, seconds)
    else:
        _run_in_thread(function, seconds)


def _run_with_alarm(function: Callable[[], None], seconds: float) -> None:
    def on_alarm(signal_number: int, frame: object) -> None:
        raise _OutOfTime

    previous_handler = signal.signal(signal.SIGALRM, on_alarm)
    try:
        signal.setitimer(signal.ITIMER_REAL, seconds)
        function()
    finally:
        try:
            signal.setitimer(signal.ITIMER_REAL, 0)  # the alarm may still fire up to here
        finally:
            signal.signal(signal.SIGALRM, previous_handler)


def _run_in_thread(function: Callable[[], None], seconds: float) -> None:
    raised: list[BaseException] = []

    def run() -> None:
        try:
            function()
        except BaseException as error:  # handed to the calling thread below
            raised.append(error)

    context = contextvars.copy_context()  # the worker reports into this check's progress
    worker = threading.Thread(
        target=context.run, args=(run,), name="llmcourse-exercise-check", daemon=True
    )
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise _OutOfTime
    if raised:
        raise raised[0]
