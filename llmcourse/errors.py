"""Errors a user can fix: the CLI prints their message, without a traceback."""


class CourseError(Exception):
    """Base class for errors caused by input or environment the user can correct.

    The message must say what was wrong and what to do about it.
    """
