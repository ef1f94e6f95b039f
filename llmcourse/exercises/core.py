"""The exercise-checking engine: a registry of checkers, comparison helpers and ``check``.

A chapter registers one checker per exercise::

    @exercise("ch01.word_split", title="Split text into words", hint="split on spaces")
    def check_word_split(answer):
        run_cases(answer, reference_word_split, [("'a b'", ("a b",)), ("''", ("",))])

and the learner's notebook calls ``check("ch01.word_split", word_split)``. The checker runs the
answer on its cases and raises ``Mismatch`` for the first one that differs from the reference;
``check`` turns the outcome into an ``ExerciseResult``:

- ``passed``: every case matched;
- ``failed``: a case differed (the message names the input, the expected and the actual value);
- ``not attempted``: the answer still raises ``NotImplementedError`` (or is ``None`` / ``...``);
- ``error``: the answer raised an exception (reported with the input that triggered it);
- ``timeout``: the answer did not finish within the exercise's time limit.

None of these stops the notebook, unless the check is strict: ``check(..., strict=True)`` or
``LLMCOURSE_STRICT_EXERCISES=1`` (set when the solutions notebooks run) make every outcome but
``passed`` raise ``ExerciseFailed``.

Each result is shown once, as a coloured box in Jupyter or one line of text elsewhere
(``✓ ch01.word_split: passed (12 cases)``), and recorded in the process's ``scorecard()``. The
box's display metadata carries the result as a JSON object under ``RESULT_METADATA_KEY``, which is
how ``llmcourse grade`` reads the results back from an executed notebook.
"""

from __future__ import annotations

import contextvars
import copy
import difflib
import functools
import html
import importlib
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

from llmcourse.errors import CourseError

STRICT_ENV = "LLMCOURSE_STRICT_EXERCISES"
RESULT_METADATA_KEY = "llmcourse_exercise"
DEFAULT_TIME_LIMIT = 30.0  # seconds a checker may run before its answer counts as "timeout"
STATUSES = ("passed", "failed", "error", "timeout", "not attempted")
FAILING_STATUSES = ("failed", "error", "timeout")

_SYMBOLS = {"passed": "✓", "failed": "✗", "error": "✗", "timeout": "✗", "not attempted": "○"}
_BOX_COLOURS = {  # status: (border, background)
    "passed": ("#1e7e34", "#e6f4ea"),
    "failed": ("#c62828", "#fdecea"),
    "error": ("#c62828", "#fdecea"),
    "timeout": ("#c62828", "#fdecea"),
    "not attempted": ("#5f6368", "#f1f3f4"),
}
_ID_PATTERN = re.compile(r"[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*")
_CHAPTER_MODULE = re.compile(r"ch\d\d_\w+")


class ExerciseFailed(CourseError, AssertionError):
    """A strict check whose exercise did not pass (failed, error, timeout or not attempted)."""


class UnknownExercise(CourseError, LookupError):
    """``check`` was given an exercise id that no checker registered."""


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
    raise UnknownExercise(
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
# Helpers for checkers


@dataclass
class _Progress:
    """The cases the running check has reached, and the one in hand (for error reports)."""

    current_case: str | None = None
    cases: set[str] = field(default_factory=set)

    def enter(self, case: str) -> None:
        self.current_case = case
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


def attempt(answer: Callable[..., Any], *args: Any, case: str, **kwargs: Any) -> Any:
    """Call the learner's ``answer(*args, **kwargs)`` for the input described by ``case``.

    Naming the case before the call lets an exception or a time-out be reported with the input
    that caused it. An answer that is not callable fails with "expected a function".
    """
    _progress().enter(case)
    if not callable(answer):
        raise Mismatch(
            case, "a function", answer,
            detail=f"expected a function to call, got {type(answer).__name__} {describe(answer)}",
        )
    return answer(*args, **kwargs)


def run_cases(
    answer: Callable[..., Any],
    reference: Callable[..., Any],
    cases: Iterable[tuple[str, Any]],
    compare: Callable[..., None] | None = None,
    *,
    hint: str = "",
) -> None:
    """Run ``answer`` and ``reference`` on every case and compare the results.

    ``cases`` holds ``(description, args)`` pairs; ``args`` is a tuple of positional arguments
    (a value that is not a tuple is the single argument). Each call gets its own deep copy of
    the arguments, so an answer that changes its input in place cannot change the reference's.
    ``compare(got, expected, case=..., hint=...)`` defaults to ``expect_equal``; use
    ``expect_close`` (or a ``functools.partial`` of it) for floating-point tensors.
    """
    compare = compare or expect_equal
    for description, args in cases:
        _progress().enter(description)
        arguments = args if isinstance(args, tuple) else (args,)
        expected = reference(*copy.deepcopy(arguments))
        got = attempt(answer, *copy.deepcopy(arguments), case=description)
        compare(got, expected, case=description, hint=hint)


Case = tuple[str, tuple[Any, ...]]  # (description of the input, positional arguments)
Compare = Callable[..., None]  # compare(got, expected, case=...) raises Mismatch


@dataclass(frozen=True)
class Mistake:
    """A typical wrong answer, computed the wrong way on the same inputs, and what to fix."""

    name: str
    answer: Callable[..., Any]
    hint: str


def run_cases_with_diagnosis(
    answer: Callable[..., Any],
    reference: Callable[..., Any],
    cases: Iterable[Case],
    compare: Compare,
    mistakes: Iterable[Mistake] = (),
    probe: Callable[[Callable[..., Any]], str] | None = None,
) -> None:
    """``run_cases`` that names the mistake. Each call gets its own deep copy of the arguments.

    At the first case where the answer differs from the reference, the ``Mismatch`` keeps a hint
    that ``compare`` gave; else ``probe(answer)``, when given, may give one about the answer as
    a whole (e.g. "it samples at random"); else the first ``Mistake`` whose result equals the
    answer's (by ``compare``) gives its hint; else the exercise's own hint is shown.
    """
    mistakes = list(mistakes)
    for description, arguments in cases:
        expected = reference(*copy.deepcopy(arguments))
        got = attempt(answer, *copy.deepcopy(arguments), case=description)
        try:
            compare(got, expected, case=description)
        except Mismatch as mismatch:
            mismatch.hint = (
                mismatch.hint
                or (probe(answer) if probe is not None else "")
                or _recognise(got, arguments, compare, mistakes, description)
            )
            raise


def _recognise(
    got: Any, arguments: tuple[Any, ...], compare: Compare, mistakes: list[Mistake], case: str
) -> str:
    """The hint of the first mistake whose result equals ``got``, or ""."""
    for mistake in mistakes:
        try:
            compare(got, mistake.answer(*copy.deepcopy(arguments)), case=case)
        except Exception:  # this mistake gives another result here, or does not apply
            continue
        return mistake.hint
    return ""


def expect_equal(got: object, expected: object, *, case: str, hint: str = "") -> None:
    """Raise ``Mismatch`` unless ``got`` equals ``expected`` and has its type.

    Tensors must match exactly (``expect_close`` with zero tolerance); sequences and dicts are
    described by their first difference.
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
    dtype is of the same kind (bool, integer, floating point, complex), and that every value is
    within ``atol + rtol * |expected|`` (exactly equal for bool and integer tensors; NaN matches
    NaN). The message names the first differing index.
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
    got_kind, expected_kind = _dtype_kind(got.dtype), _dtype_kind(expected.dtype)
    if got_kind != expected_kind:
        raise Mismatch(
            case, expected, got, hint,
            detail=f"got {_with_article(got_kind)} tensor ({got.dtype}) "
            f"but expected {_with_article(expected_kind)} tensor ({expected.dtype})",
        )
    got_values, expected_values = got.detach().cpu(), expected.detach().cpu()
    if expected_kind in ("bool", "integer"):
        wrong = got_values != expected_values
        tolerance = ""
    else:
        common = torch.promote_types(got.dtype, expected.dtype)
        difference = (got_values.to(common) - expected_values.to(common)).abs()
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


def _dtype_kind(dtype: torch.dtype) -> str:
    if dtype == torch.bool:
        return "bool"
    if dtype.is_complex:
        return "complex"
    return "floating point" if dtype.is_floating_point else "integer"


def _with_article(noun: str) -> str:
    return f"an {noun}" if noun[0] in "aeiou" else f"a {noun}"


def _equal(got: object, expected: object) -> bool:
    try:
        return isinstance(got, type(expected)) and bool(got == expected)
    except (RuntimeError, TypeError, ValueError):  # e.g. comparing tensors inside containers
        return False


def _first_difference(got: object, expected: object) -> str:
    """A sentence that says where ``got`` first differs from ``expected``."""
    overall = f"expected {describe(expected)}, got {describe(got)}"
    if not isinstance(got, type(expected)):
        return (
            f"expected {type(expected).__name__} {describe(expected)}, "
            f"got {type(got).__name__} {describe(got)}"
        )
    if isinstance(expected, dict):
        missing, extra = expected.keys() - got.keys(), got.keys() - expected.keys()
        if missing or extra:
            return (
                f"missing keys {describe(sorted(missing, key=repr))}, "
                f"unexpected keys {describe(sorted(extra, key=repr))}; {overall}"
            )
        for key, wanted in expected.items():
            if not _equal(got[key], wanted):
                return f"at key {key!r} expected {describe(wanted)}, got {describe(got[key])}"
        return overall
    if isinstance(expected, (str, list, tuple)):
        item = "character" if isinstance(expected, str) else "item"
        for position, (got_item, expected_item) in enumerate(zip(got, expected, strict=False)):
            if not _equal(got_item, expected_item):
                return (
                    f"{item} {position} is {describe(got_item)} "
                    f"but expected {describe(expected_item)}; {overall}"
                )
        return f"got {len(got)} {item}s but expected {len(expected)}; {overall}"
    return overall


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

    ``status`` is one of ``STATUSES``; ``message`` is a sentence starting with it ("failed for
    x = -3: expected 9, got -9"); ``cases`` counts the cases reached; ``details`` holds the
    traceback of an error; ``exception`` is the learner's exception for status "error".
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
    """Display ``result``: an HTML box plus text in IPython (carrying the machine-readable
    record in its metadata), or its one-line summary on stdout elsewhere."""
    shell = get_ipython()
    if shell is None:
        print(result.summary)
        return
    result.shown_in_cell = shell.execution_count
    display(
        {"text/plain": result.summary, "text/html": result.to_html()},
        raw=True,
        metadata={RESULT_METADATA_KEY: result.to_record()},
    )


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
        every exercise was also attempted."""
        failing = FAILING_STATUSES + (("not attempted",) if require_all else ())
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
    raise CourseError(f"{STRICT_ENV}={value!r} is not understood; set it to 1 (strict) or 0")


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
    ``$LLMCOURSE_STRICT_EXERCISES`` set) raises ``ExerciseFailed`` unless the result is "passed".
    """
    entry = get_exercise(exercise_id)
    strict = strict_from_environment() if strict is None else strict
    time_limit = entry.time_limit if time_limit is None else time_limit
    if time_limit <= 0:
        raise ValueError(f"time_limit must be a positive number of seconds, got {time_limit}")
    result = _evaluate(entry, answer, time_limit)
    _SCORECARD.record(result)
    show(result)
    if strict and not result.passed:
        raise ExerciseFailed(result.summary) from result.exception
    return result


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
