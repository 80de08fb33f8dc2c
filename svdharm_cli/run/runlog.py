"""The JSON log every harmonize/augment run writes (format documented in the README).

By default the log goes inside OUT as ``svdharm-<command>-<UTC time>.json``; a name that is
taken gets ``-1``, ``-2``, ... so a later run never destroys an earlier run's log. A path
given with ``--log`` is the user's choice and is replaced if it exists. Either way the log is
written atomically. It holds paths and parameters only, never image header values.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import os
import signal
import sys
import tempfile
import uuid
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from svdharm_cli import __version__
from svdharm_cli.files.atomic import TEMP_MARKER, atomic_path, temp_name
from svdharm_cli.run.options import RunRequest
from svdharm_cli.run.results import ALREADY_DONE, FAILED, OK, SKIPPED, FileResult

if TYPE_CHECKING:
    from svdharm_cli.run.walked import Walked

LOG_FORMAT = "svdharm-run-log"
LOG_VERSION = 1


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def run_log(
    request: RunRequest,
    *,
    started: datetime,
    seconds: float,
    root: Path,
    parameters: dict[str, Any],
    executor: dict[str, Any],
    device_check: dict[str, Any] | None,
    reference: dict[str, Any] | None,
    seed: int | None,
    tally: Tally,
    redone: dict[str, int],
    retried: int | None,
    walked: Walked,
    warnings: list[str],
    interrupted: int | None,
) -> dict[str, Any]:
    """A run's log, but its file records (:func:`write_log` streams them from the
    :class:`Spill`). ``warnings`` is kept by reference: what is added to it before the log
    is written is in the log."""
    skip_existing = request.walk.skip_existing
    return {
        "format": LOG_FORMAT,
        "format_version": LOG_VERSION,
        "tool": "svdharm",
        "tool_version": __version__,
        "command": request.command,
        "argv": list(request.argv or sys.argv),
        "status": "completed" if interrupted is None else "interrupted",
        "signal": None if interrupted is None else signal.Signals(interrupted).name,
        "started": iso(started),
        "finished": iso(utc_now()),
        "seconds": round(seconds, 3),
        "input": str(request.inp),
        "output": str(request.out),
        "input_root_absolute": str(root.resolve()),
        "output_absolute": str(request.out.resolve()),
        "parameters": parameters,
        "executor": executor,
        "device_check": device_check,
        "reference": reference,
        "seed": seed,
        "seed_given": request.draw.seed is not None,
        "counts": {
            **tally.counts,
            "already_done": tally.already_done,
            "redone": sum(redone.values()) if skip_existing else None,
            "retried_failures": retried,
            "not_processed": walked.images - tally.files,
            "ignored": len(walked.ignored),
        },
        "ignored": sorted(walked.ignored),
        "redone": dict(sorted(redone.items())),
        "warnings": warnings,
        "volumes": sorted(walked.volumes, key=lambda v: min(v["files"])),
        "files": None,
    }


def file_record(result: FileResult) -> dict[str, Any]:
    return {
        "path": result.path,
        "status": result.status,
        "reason": result.reason,
        "outputs": [
            {"path": o.path, "seed": o.seed, "coefficients": o.coefficients} for o in result.outputs
        ],
        "seconds": round(result.seconds, 4),
        "volume": result.volume,
        "foreground": result.foreground,
        "error": result.error,
        "fallback": result.fallback,
        "redone": result.redone,
        "kind": result.kind,
        **({} if result.columns is None else {"columns": dict(result.columns)}),
    }


LISTED = 20
"""Failures and skips a :class:`Tally` keeps the reasons of (the summary lists as many)."""


@dataclass
class Tally:
    """What a run's records add up to, taken from the records themselves."""

    counts: dict[str, int] = field(default_factory=lambda: {OK: 0, SKIPPED: 0, FAILED: 0})
    written: int = 0
    already_done: int = 0
    retried: int = 0
    failures: list[str] = field(default_factory=list)
    """The first :data:`LISTED` failures' reasons, in path order."""
    skips: list[str] = field(default_factory=list)
    """The first :data:`LISTED` skips' reasons (not those already done), in path order."""
    other_skips: int = 0

    @property
    def files(self) -> int:
        return sum(self.counts.values())


class Spill:
    """The file records of a run, written as they are final and given back in path order
    in bounded memory.

    Records arrive in the order units finish; each is turned into its log line at once and
    kept in a buffer of at most ``run_size`` lines, which is sorted by path and written to
    a run file next to the log when full (hidden temporaries of OUT, removed by
    :meth:`close` and swept by the next run after a crash). :meth:`lines` merges the runs
    (``heapq.merge``, one line per run in memory); a path reported twice keeps its latest
    record. So the client holds a buffer and a merge's heads, never a record per file, and
    the log keeps its format and order.
    """

    MAX_RUNS = 128
    """Run files kept before they are merged into one (open files stay few)."""

    def __init__(self, folder: Path, run_size: int = 4_000) -> None:
        self.folder = folder
        self.run_size = run_size
        self.stem = f".svdharm-log-{uuid.uuid4().hex[:12]}"
        self.buffer: list[tuple[str, str]] = []
        self.runs: list[Path] = []
        self._names = 0
        self.problem: str | None = None
        """Why the records stay in memory: OUT could not take a run file (a full disk)."""

    def _next_name(self) -> Path:
        self._names += 1
        return self.folder / f"{self.stem}-{self._names}{TEMP_MARKER}"

    def add(self, result: FileResult) -> None:
        done = result.status == SKIPPED and (result.reason or "").endswith(ALREADY_DONE)
        head = json.dumps([result.path, result.status, len(result.outputs), done])
        self.buffer.append((result.path, head + "\t" + json.dumps(file_record(result))))
        if len(self.buffer) >= self.run_size and self.problem is None:
            self._flush()

    def _flush(self) -> None:
        self.buffer.sort(key=lambda item: item[0])
        path = self._next_name()
        try:
            with open(path, "w", encoding="utf-8") as f:
                f.writelines(line + "\n" for _, line in self.buffer)
        except OSError as exc:  # no room in OUT: the records stay in memory
            self.problem = f"{path.parent}: {exc.strerror or exc}"
            with contextlib.suppress(OSError):
                path.unlink()
            return
        self.runs.append(path)
        self.buffer = []
        if len(self.runs) >= self.MAX_RUNS:
            self._compact()

    def _compact(self) -> None:
        """Merge every run file into one (a cascade: 10 million records make a few merges
        of 128 runs, never 2,500 open files)."""
        path = self._next_name()
        runs, self.runs = self.runs, []
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(line if line.endswith("\n") else line + "\n" for line in self._raw(runs))
        for old in runs:
            os.unlink(old)
        self.runs = [path]

    def _raw(self, runs: list[Path], memory: Sequence[tuple[str, str]] = ()) -> Iterator[str]:
        """The lines of ``runs`` and ``memory`` merged by path (stable: equal paths in the
        order they were added)."""
        with contextlib.ExitStack() as stack:
            files: list[TextIO] = [stack.enter_context(open(p, encoding="utf-8")) for p in runs]
            streams = [((_key(line), line) for line in f) for f in files]
            buffered = ((key, line) for key, line in memory)
            for _, line in heapq.merge(*streams, buffered, key=lambda item: item[0]):
                yield line

    def _merged(self) -> Iterator[tuple[list[Any], str]]:
        """``(head, record line)`` in path order, one per path (the latest)."""
        self.buffer.sort(key=lambda item: item[0])
        last: tuple[list[Any], str] | None = None
        for line in self._raw(self.runs, self.buffer):
            item = (json.loads(line.split("\t", 1)[0]), line)
            if last is not None and last[0][0] != item[0][0]:
                yield last
            last = item
        if last is not None:
            yield last

    def tally(self, previous_failures: Collection[str] | None = None) -> Tally:
        """Counts and the first reasons, from one pass over the merged records."""
        tally = Tally()
        for (path, status, outputs, done), line in self._merged():
            tally.counts[status] = tally.counts.get(status, 0) + 1
            tally.written += outputs
            tally.already_done += bool(done)
            if previous_failures is not None and path in previous_failures and not done:
                tally.retried += 1
            listed = tally.failures if status == FAILED else tally.skips
            if status == FAILED or (status == SKIPPED and not done):
                if len(listed) < LISTED:
                    record = json.loads(line.split("\t", 1)[1])
                    listed.append(record["reason"] or record["path"])
                elif status == SKIPPED:
                    tally.other_skips += 1
        return tally

    def lines(self) -> Iterator[str]:
        """The records' log lines (JSON objects), in path order."""
        for _, line in self._merged():
            yield line.rstrip("\n").split("\t", 1)[1]

    def close(self) -> None:
        for path in self.runs:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        self.runs = []
        self.buffer = []


def _key(line: str) -> str:
    """The path a spilled line sorts by (its head's first element)."""
    return str(json.loads(line.split("\t", 1)[0])[0])


def to_json(data: dict[str, Any]) -> str:
    """``data`` as indented JSON, except that each element of ``files`` takes one line:
    as readable, and written by the C encoder (indenting forces the much slower Python
    one, which cost about 0.1 ms per file)."""
    files = data.get("files")
    if not isinstance(files, list) or not files:
        return json.dumps(data, indent=2, allow_nan=False) + "\n"
    head = json.dumps({**data, "files": None}, indent=2, allow_nan=False)
    marker = '"files": null'
    lines = ",\n".join("    " + json.dumps(f, allow_nan=False) for f in files)
    return head.replace(marker, '"files": [\n' + lines + "\n  ]", 1) + "\n"


def fallback_folder() -> Path:
    """Where a run log goes when OUT cannot hold it: ``$XDG_STATE_HOME/svdharm/logs``
    (``~/.local/state/svdharm/logs`` by default), else the system's temporary folder."""
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return Path(state) / "svdharm" / "logs"


def write_log_somewhere(
    data: dict[str, Any],
    out_root: Path,
    command: str,
    explicit: Path | None,
    files: Callable[[], Iterator[str]],
) -> tuple[Path | None, str | None]:
    """:func:`write_log`, and where OUT (or ``--log``) cannot take it (a full disk, a
    folder gone read-only), the same log in :func:`fallback_folder`, then in the system's
    temporary folder. Returns where it went (None: nowhere) and why it is not where it was
    asked for (None when it is)."""
    try:
        return write_log(data, out_root, command, explicit, files()), None
    except OSError as exc:
        problem = f"{explicit or out_root}: {exc.strerror or exc}"
    data = {**data, "log_not_in_output": problem}
    for folder in (fallback_folder(), Path(tempfile.gettempdir()) / "svdharm-logs"):
        try:
            return write_log(data, folder, command, None, files()), problem
        except OSError as exc:
            problem += f"; {folder}: {exc.strerror or exc}"
    return None, problem


def write_log(
    data: dict[str, Any],
    out_root: Path,
    command: str,
    explicit: Path | None,
    files: Iterator[str] | None = None,
) -> Path:
    """Write ``data`` as JSON; return where it went. With ``files`` (the records' lines, as
    :meth:`Spill.lines` gives them) the log is streamed to its file: ``data["files"]`` is
    written from them, one record per line, without holding them. The log is written to a
    temporary first; a default name is then taken by a link that never replaces a file."""

    def fill(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            if files is None:
                f.write(to_json(data))
                return
            head = json.dumps({**data, "files": None}, indent=2, allow_nan=False)
            before, after = head.split('"files": null', 1)
            f.write(before + '"files": [')
            first = True
            for line in files:
                f.write(("\n    " if first else ",\n    ") + line)
                first = False
            f.write(("]" if first else "\n  ]") + after + "\n")

    if explicit is not None:
        with atomic_path(explicit) as tmp:
            fill(tmp)
        return explicit
    stamp = data["started"].replace("-", "").replace(":", "").split(".")[0] + "Z"
    base = f"svdharm-{command}-{stamp}"
    out_root.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(out_root / f"{base}.json")
    try:
        fill(tmp)
        for n in range(10_000):
            path = out_root / (f"{base}.json" if n == 0 else f"{base}-{n}.json")
            try:
                os.link(tmp, path)
                return path
            except FileExistsError:
                continue
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    raise FileExistsError(f"no free log name for {base} in {out_root}")
