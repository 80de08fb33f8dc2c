"""Guards for unattended runs: one run per output folder, signals, stale temporaries.

- :class:`OutputLock` holds an exclusive ``flock`` on ``OUT/.svdharm.lock`` for the run. The
  kernel drops it when the process ends, however it ends, so a crashed run never leaves OUT
  blocked; a second concurrent run is refused with a clear message.
- :func:`interruptible` turns SIGTERM (and SIGINT) into :class:`Interrupted`, so a run
  stops dispatching, stops its workers, removes temporaries and still writes its log.
- :func:`signals_deferred` holds SIGINT and SIGTERM back while outputs are renamed into
  place and reported, so that every output present after a stop is in the log.
- :func:`sweep_temporaries` removes temporaries left in OUT (by a worker stopped mid-write,
  or by a run killed with SIGKILL); it is safe because the lock guarantees no other run is
  writing there.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

from svdharm_cli.errors import UsageError
from svdharm_cli.files.atomic import TEMP_MARKER

LOCK_NAME = ".svdharm.lock"


class Interrupted(BaseException):
    """The run was asked to stop by a signal; ``exit_code`` is 128 + the signal number.

    A BaseException, like KeyboardInterrupt, so that no ``except Exception`` swallows it.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.exit_code = 128 + signum


class OutputLock:
    """Exclusive, crash-safe lock of an output folder for the duration of a run."""

    def __init__(self, out: Path) -> None:
        self.path = out / LOCK_NAME
        self._fd: int | None = None

    def __enter__(self) -> OutputLock:
        import fcntl

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise UsageError(
                f"cannot write to output folder {self.path.parent}: {exc.strerror or exc}"
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise UsageError(
                    f"another svdharm run is writing to {self.path.parent}; wait for it to end",
                    hint=f"the lock is {self.path}; it is released when that run's process ends",
                ) from None
            raise
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError as exc:  # a full disk: nothing can be written there
            os.close(fd)
            raise UsageError(
                f"cannot write to output folder {self.path.parent}: {exc.strerror or exc}"
            ) from exc
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


_DEFERRAL: dict[str, int] = {"depth": 0, "pending": 0}
_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    if _DEFERRAL["depth"]:
        _DEFERRAL["pending"] = signum
        return
    raise Interrupted(signum)


@contextlib.contextmanager
def signals_deferred(*, drop: bool = False) -> Iterator[None]:
    """Within the block SIGINT and SIGTERM take no effect; they act when it ends.

    Two mechanisms, for the two kinds of process: the signals are blocked for this thread
    (a worker, whose SIGTERM keeps its default action, dies only after the block: its
    other threads never take the signals, see :func:`ignore_signals_in_worker`), and the
    handler of :func:`interruptible` records the signal instead of raising (the parent,
    where another thread may receive it), raising :class:`Interrupted` at the end. A
    process started within the block starts with the signals blocked. With
    ``drop`` a signal that arrived is forgotten instead: for the clean-up after a stop,
    which a second signal must neither break nor restart.
    """
    _DEFERRAL["depth"] += 1
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        _DEFERRAL["depth"] -= 1
        pending = _DEFERRAL["pending"]
        if drop:
            _DEFERRAL["pending"] = 0
        elif pending and not _DEFERRAL["depth"]:
            _DEFERRAL["pending"] = 0
            raise Interrupted(pending)


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM raise :class:`Interrupted` in the main thread."""
    previous = {s: signal.signal(s, _raise_interrupted) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def ignore_signals_in_worker() -> None:
    """Workers leave SIGINT to the parent (a terminal's Ctrl-C reaches the whole group);
    the parent then ends them with SIGTERM, which keeps its default, immediate action.

    Workers are started with both signals blocked (:func:`signals_deferred` around the
    start), so every thread a library starts in them (BLAS thread pools) keeps them
    blocked; only the main thread takes them, from here on, and it blocks them while it
    renames outputs and reports them. (Were a library's thread to take SIGTERM, the
    worker would die in the middle of that, with outputs on disk that nobody reported.)
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)


def sweep_temporaries(out: Path) -> int:
    """Remove svdharm temporaries under ``out``; return how many were removed."""
    removed = 0
    for dirpath, _, filenames in os.walk(out):
        for name in filenames:
            if name.startswith(".") and name.endswith(TEMP_MARKER):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(dirpath, name))
                    removed += 1
    return removed


LIBRARIES = ("pydicom", "nibabel", "tifffile", "PIL", "png", "imageio")
"""The reading libraries, whose warnings and log records may quote header values."""

_QUIETED: list[bool] = []


def quiet_libraries() -> None:
    """Keep the reading libraries from printing header values: pydicom's warnings and
    log records quote them (UIDs, names), tifffile logs damaged tags through
    :mod:`logging` (printed when no handler is configured), and svdharm's messages name
    files only. :func:`svdharm_cli.files.formats.reading` silences warnings while a file is
    parsed and calls this once per process (:func:`quiet_once`); the CLI and every worker
    process call it at start, which covers every other place a header is touched (a DICOM
    header copied into a derived object). It lives here, not in the formats, so that the
    CLI's start-up imports no NumPy."""
    import logging
    import warnings

    for name in LIBRARIES:
        warnings.filterwarnings("ignore", module=rf"{name}(\.|$)")  # Python drops repeats
        if not _QUIETED:  # once per process: handlers would pile up
            logger = logging.getLogger(name)
            logger.addHandler(logging.NullHandler())
            logger.propagate = False
    _QUIETED[:] = [True]


def quiet_once() -> None:
    """:func:`quiet_libraries`, unless this process already did it (cheap to call per file)."""
    if not _QUIETED:
        quiet_libraries()
