"""The one error hierarchy of svdharm.

Every error a user can cause is a :class:`SvdharmError` carrying a message meant for
people (and optionally a hint). The CLI catches only these; anything else is a bug and
is allowed to show its traceback.
"""

from __future__ import annotations


class SvdharmError(Exception):
    """Base class of every user-facing error.

    Parameters
    ----------
    message
        One line that says what is wrong, naming the file or option involved.
    hint
        Optional advice on how to fix it.
    """

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class UsageError(SvdharmError):
    """Bad option values, missing paths, OUT equal to IN: exit status 2."""


class ReferenceFileError(SvdharmError):
    """A reference that is missing, malformed or does not fit the input: exit status 2."""


class ImageError(SvdharmError):
    """One input image cannot be processed; the batch records it as failed and goes on."""

    exit_code = 1


class SkipImage(SvdharmError):
    """One input is deliberately not processed (e.g. it holds no intensities); status skipped."""

    exit_code = 0
