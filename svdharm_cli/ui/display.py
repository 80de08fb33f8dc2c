"""What a person sees in the terminal: a progress bar on a TTY, a summary at the end.

Nothing here prints image header values: only paths, counts, times and messages. When
output is not a terminal (cron, pipes) there is no bar and no colour; ``--quiet`` keeps
only failures and errors, on stderr, so a cron mail arrives only when something went wrong.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape

from svdharm_cli.run.results import Status

if TYPE_CHECKING:
    from svdharm_cli.evidence.compare import Problem
    from svdharm_cli.run.jobs import RunSummary
    from svdharm_cli.run.results import FileResult

MAX_LISTED = 20


def safe(text: str) -> str:
    """Printable form of a message: file names that are not UTF-8 shown with escapes, and
    control characters (a newline, a tab, the escape of a terminal code) as Python writes
    them in a string (``\\n``, ``\\x1b``), so that a file named ``a\\nfailed: b.png``
    cannot print a line of its own or drive the terminal (as ``ls -b`` shows them)."""
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if not text.isprintable():
        text = "".join(c if c.isprintable() else _escaped(c) for c in text)
    return escape(text)


def _escaped(char: str) -> str:
    return char.encode("unicode_escape").decode("ascii")


def stdout() -> Console:
    return Console(highlight=False, soft_wrap=True)


def stderr() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def print_error(message: str, hint: str | None = None) -> None:
    err = stderr()
    err.print(f"[bold red]error:[/] {safe(message)}")
    if hint:
        err.print(f"[yellow]hint:[/] {safe(hint)}")


@contextlib.contextmanager
def progress(
    label: str, quiet: bool
) -> Iterator[tuple[Callable[[int], None] | None, Callable[[FileResult], None]]]:
    """Yield ``(on_start, on_result)`` callbacks that drive a bar when one is wanted;
    ``on_start`` (which sets the bar's total) is None when there is no bar, so that no
    total is counted for nobody."""
    err = stderr()
    if quiet or not err.is_terminal:
        yield None, (lambda r: None)
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    bar = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    )
    task = bar.add_task(label, total=None)
    with bar:
        yield (
            lambda n: bar.update(task, total=n),
            lambda r: bar.advance(task),
        )


def report_failures(results: Sequence[Problem]) -> None:
    problems = [r for r in results if r.status == Status.FAILED]
    err = stderr()
    for r in problems[:MAX_LISTED]:
        err.print(f"[red]failed:[/] {safe(r.reason or r.path)}")
    if len(problems) > MAX_LISTED:
        err.print(f"... and {len(problems) - MAX_LISTED} more failures (see the log)")


def plural(count: int, noun: str) -> str:
    """``1 file``, ``2 files``."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def summary(run: RunSummary, quiet: bool) -> None:
    tally = run.tally
    err = stderr()
    for reason in tally.failures[:MAX_LISTED]:
        err.print(f"[red]failed:[/] {safe(reason)}")
    if tally.counts.get(Status.FAILED, 0) > MAX_LISTED:
        err.print(f"... and {tally.counts[Status.FAILED] - MAX_LISTED} more failures (see the log)")
    for warning in run.warnings:
        err.print(f"[yellow]warning:[/] {safe(warning)}")
    if run.interrupted is not None:
        name = signal.Signals(run.interrupted).name
        err.print(
            f"[bold red]interrupted[/] by {name} after {tally.files} of {run.total} "
            "files; run the same command with --skip-existing to finish"
        )
    if run.log_path is None:
        err.print(
            "[bold red]error:[/] the run log could not be written anywhere: "
            f"{safe(run.log_problem or '')}"
        )
    elif run.log_problem is not None:
        err.print(
            f"[yellow]warning:[/] the log went to {safe(str(run.log_path))}, not to OUT: "
            f"{safe(run.log_problem)}"
        )
    if quiet:
        return
    out = stdout()
    ok, skipped, failed = (run.count(status) for status in Status)
    style = "red" if failed else "green"
    out.print(
        f"[{style}]processed {ok}[/], skipped {skipped}, failed {failed} "
        f"({plural(tally.written, 'file')} written) in {run.seconds:.1f} s"
    )
    if tally.already_done or run.retried:
        retried = f"; {run.retried} that failed before tried again" if run.retried else ""
        out.print(f"resumed: {plural(tally.already_done, 'file')} up to date{retried}")
    if run.redone:
        why = ", ".join(f"{reason} {count}" for reason, count in sorted(run.redone.items()))
        inputs = sum(run.redone.values())
        out.print(safe(f"made again: {plural(inputs, 'input')} whose outputs were stale ({why})"))
    if run.ignored:
        out.print(f"ignored {plural(run.ignored, 'file')} that are not images (named in the log)")
    for reason in tally.skips[:MAX_LISTED]:
        out.print(f"skipped: {safe(reason)}")
    if tally.other_skips:
        out.print(f"... and {tally.other_skips} more skipped (see the log)")
    if run.seed is not None and not run.seed_given:
        out.print(f"seed: {run.seed} (pass --seed {run.seed} to reproduce this run)")
    elif run.seed is not None:
        out.print(f"seed: {run.seed}")
    if run.log_path is not None:
        out.print(f"log: {safe(str(run.log_path))}")


def band_table(image: object, rows: list, quiet: bool) -> None:
    """Each channel's per-component ranks, energy share, mean and std (normalized units)."""
    if quiet:
        return
    from rich.table import Table

    table = Table(title=safe(f"bands of {image}"))
    for column in ("channel", "component", "ranks", "energy %", "mean", "std"):
        table.add_column(column, justify="left" if column == "component" else "right")
    for r in rows:
        table.add_row(
            str(r.channel),
            r.name,
            f"{r.first_rank}-{r.last_rank}",
            f"{100 * r.energy_share:.3g}",
            f"{r.mean:.5g}",
            f"{r.std:.5g}",
        )
    stdout().print(table)


def print_line(text: str, quiet: bool) -> None:
    if not quiet:
        stdout().print(safe(text))


def comparison(data: dict, quiet: bool) -> None:
    """The groups, the separability against chance and the distances, as a few lines."""
    if quiet:
        return
    out = stdout()
    groups = ", ".join(f"{g['name']} ({plural(g['count'], 'image')})" for g in data["groups"])
    kind = f" (kind {data['kind']})" if data.get("kind") else ""
    out.print(safe(f"groups{kind}: {groups}"))
    sep = data["separability"]
    if sep["accuracy"] is None:
        out.print(safe(f"separability: not measured ({sep.get('reason', '')})"))
    else:
        out.print(
            f"separability: {sep['accuracy']:.3f} cross-validated accuracy "
            f"({sep['folds']} folds; chance {sep['chance']:.3f})"
        )
    after = data.get("after")
    if after and after["separability"]["accuracy"] is not None:
        out.print(f"after harmonization: separability {after['separability']['accuracy']:.3f}")
    label = data.get("label")
    if label:
        out.print(safe(_label_line(label, f"label {label['column']!r}")))
        if after and after.get("label"):
            out.print(safe(_label_line(after["label"], "after harmonization")))
    for w in data["wasserstein"]:
        out.print(
            safe(f"wasserstein {w['a']} - {w['b']}: {w['distance']:.4g} {data['unit']} units")
        )


def _label_line(label: dict, what: str) -> str:
    def f(value: float | None) -> str:
        return "not measured" if value is None else f"{value:.3f}"

    return (
        f"{what}: accuracy {f(label['accuracy'])} cross-validated, "
        f"{f(label['leave_one_site_out'])} leave one site out (chance {f(label['chance'])})"
    )
