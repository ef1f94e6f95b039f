"""Exercises: check a learner's answer against the reference and show a hint when it is wrong.

In a chapter notebook::

    from llmcourse.exercises import check

    def word_split(text):
        raise NotImplementedError  # replace with your code

    check("ch01.word_split", word_split)

Checkers live in ``llmcourse/exercises/chNN_<topic>.py`` modules, found and imported on first
use; each registers itself with ``@exercise`` and runs ``run_cases`` on its ``Case``s (see
``llmcourse.exercises.core``, and ``README.md`` beside it for how to add an exercise).
"""

from llmcourse.exercises.core import (
    DEFAULT_TIME_LIMIT,
    RESULTS_FILE_ENV,
    STATUSES,
    STRICT_ENV,
    Case,
    Compare,
    Exercise,
    ExerciseResult,
    LabelledArgs,
    Mismatch,
    Mistake,
    Scorecard,
    check,
    describe,
    exercise,
    expect_close,
    expect_equal,
    get_exercise,
    list_exercises,
    reset_scorecard,
    run_cases,
    scorecard,
)

__all__ = [
    "DEFAULT_TIME_LIMIT",
    "RESULTS_FILE_ENV",
    "STATUSES",
    "STRICT_ENV",
    "Case",
    "Compare",
    "Exercise",
    "LabelledArgs",
    "ExerciseResult",
    "Mismatch",
    "Mistake",
    "Scorecard",
    "check",
    "describe",
    "exercise",
    "expect_close",
    "expect_equal",
    "get_exercise",
    "list_exercises",
    "reset_scorecard",
    "run_cases",
    "scorecard",
]
