"""The one error hierarchy of svdharm.

Every error a user can cause is a :class:`SvdharmError` carrying a message meant for
people (and optionally a hint). The CLI catches only these; anything else is a bug and
is allowed to show its traceback.

Damaged input files are the exception to "anything else is a bug": the libraries that parse
them raise whatever their parsers meet (``zlib.error``, ``struct.error``, pydicom's
``BytesLengthException``, ``NotImplementedError``, ...). The format layer turns each of them
into an :class:`ImageError` for that file (``svdharm_cli.files.formats.reading``), and the worker
turns anything still unexpected into that unit's failure (an internal error), so one file
never stops a batch. Either way the exception is kept for the run log by
:func:`exception_record`: its type and the frames it passed through, never its message,
since library messages may quote header bytes (UIDs, names).
"""

from __future__ import annotations

import os
import traceback
from typing import Any


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
    """One input image cannot be processed; the batch records it as failed and goes on.

    ``error`` is the :func:`exception_record` of the library exception behind it, if any:
    the run log keeps it beside the file's reason.
    """

    exit_code = 1
    error: dict[str, Any] | None = None

    @classmethod
    def caused_by(cls, message: str, exc: BaseException, hint: str | None = None) -> ImageError:
        """An error with ``message`` that records ``exc`` (type and frames) for the log."""
        made = cls(message, hint)
        made.error = exception_record(exc)
        return made


class SkipImage(SvdharmError):
    """One input is deliberately not processed (e.g. it holds no intensities); status skipped."""

    exit_code = 0


def exception_name(exc: BaseException) -> str:
    """The exception's class name, with its module where the name alone says little
    (``zlib.error``, ``struct.error``)."""
    kind = type(exc)
    if kind.__name__ == "error":
        return f"{kind.__module__}.error"
    return kind.__name__


def exception_record(exc: BaseException) -> dict[str, Any]:
    """What the run log records of an exception: its type, and where it was raised as
    ``module/file.py:line in function`` frames (innermost last, at most 12). Never its
    message: a library's message may quote the damaged header's bytes."""
    kind = type(exc)
    module = kind.__module__
    name = kind.__qualname__ if module == "builtins" else f"{module}.{kind.__qualname__}"
    frames = traceback.extract_tb(exc.__traceback__)[-12:]
    return {
        "type": name,
        "traceback": [f"{_short(f.filename)}:{f.lineno} in {f.name}" for f in frames],
    }


def _short(filename: str) -> str:
    """A source file's path from its package down (``pydicom/filereader.py``), so that no
    path of the machine that ran it goes into a log."""
    parts = filename.replace(os.sep, "/").split("/")
    for marker in ("site-packages", "dist-packages"):
        if marker in parts:
            return "/".join(parts[len(parts) - parts[::-1].index(marker) :])
    if "svdharm_cli" in parts:
        return "/".join(parts[parts.index("svdharm_cli") :])
    return parts[-1]
