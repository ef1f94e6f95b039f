"""Errors a user can fix: the CLI prints their message, without a traceback, and exits with 2.

One class per concern, each a ``CourseError``; every message says what was wrong and what to do
about it. Each class also derives from the standard exception that callers may already catch
(a bad value is a ``ValueError``, a missing file a ``FileNotFoundError``).
"""


class CourseError(Exception):
    """Base class for errors caused by input or environment the user can correct.

    The message must say what was wrong and what to do about it.
    """


class ConfigError(CourseError, ValueError):
    """A setting no run can use: a command-line option, a model, training, sampling,
    fine-tuning or LoRA setting out of range, an unknown preset, profile, device or data name,
    settings that contradict each other, or a step called in the wrong order."""


class InputError(CourseError, ValueError):
    """A value passed to a function that it cannot use: a tensor of the wrong shape or type,
    token ids outside the vocabulary, a text or prompt a tokenizer or model refuses, values a
    figure cannot draw."""


class DataError(CourseError, ValueError):
    """A data set that cannot be used: a malformed line or entry, a file that is not the
    published one (its checksum differs), text that is not UTF-8, or too little data (too
    short for one window, one class only, too few stories)."""


class MissingFileError(CourseError, FileNotFoundError):
    """Something to read is not there: a data file, GPT-2's weights, the course model, a
    checkpoint, a tokenizer file or a notebook that is neither on disk nor downloadable now;
    the message says how to get it."""


class CheckpointError(CourseError, ValueError):
    """A saved model that cannot be loaded: a checkpoint, weights, classifier, fine-tuned
    model, LoRA adapter or tokenizer file that is damaged, in another format, or does not fit
    the model it is loaded into."""


class DestinationError(CourseError, ValueError):
    """A place to write that cannot be used: a file where a folder is needed (the cache
    folder included), or a folder that already holds other files or an earlier run."""


class TrainingError(CourseError, RuntimeError):
    """A training run that cannot go on: out of memory (the message estimates what the step
    needs), a batch with no target to learn from, a loader without batches, or a checkpoint
    that does not continue this run."""


class ExerciseError(CourseError, AssertionError):
    """An exercise or its grading: a strict check that did not pass, an exercise id no
    checker knows, a notebook that could not be run to the end."""


class ToolError(CourseError, RuntimeError):
    """A program or server the course relies on is missing or failed: the Ollama judge,
    npm, jupyter-book, the Jupyter packages or kernel."""
