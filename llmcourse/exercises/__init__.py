"""Exercises: check a learner's answer against the reference and show a hint when it is wrong.

In a chapter notebook::

    from llmcourse.exercises import check

    def word_split(text):
        raise NotImplementedError  # replace with your code

    check("ch01.word_split", word_split)

Checkers live in ``llmcourse/exercises/chNN_<topic>.py`` modules, found and imported on first
use; each registers itself with ``@exercise`` and compares with ``run_cases``, ``expect_equal``
and ``expect_close`` (see ``llmcourse.exercises.core``).
"""

from llmcourse.exercises.core import (
    DEFAULT_TIME_LIMIT,
    RESULT_METADATA_KEY,
    STATUSES,
    STRICT_ENV,
    Case,
    Compare,
    Exercise,
    ExerciseFailed,
    ExerciseResult,
    Mismatch,
    Mistake,
    Scorecard,
    UnknownExercise,
    attempt,
    check,
    describe,
    exercise,
    expect_close,
    expect_equal,
    get_exercise,
    list_exercises,
    reset_scorecard,
    run_cases,
    run_cases_with_diagnosis,
    scorecard,
)

__all__ = [
    "DEFAULT_TIME_LIMIT",
    "RESULT_METADATA_KEY",
    "STATUSES",
    "STRICT_ENV",
    "Case",
    "Compare",
    "Exercise",
    "ExerciseFailed",
    "ExerciseResult",
    "Mismatch",
    "Mistake",
    "Scorecard",
    "UnknownExercise",
    "attempt",
    "check",
    "describe",
    "exercise",
    "expect_close",
    "expect_equal",
    "get_exercise",
    "list_exercises",
    "reset_scorecard",
    "run_cases",
    "run_cases_with_diagnosis",
    "scorecard",
]
