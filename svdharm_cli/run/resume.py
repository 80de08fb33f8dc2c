"""A run against its OUT's provenance records: which inputs ``--skip-existing`` keeps,
which it makes again and why, and the records of what this run made
(:mod:`svdharm_cli.files.provenance` says what a record holds).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from pathlib import Path

from svdharm_cli.files.inputs import MaskFiles
from svdharm_cli.files.plan import Input, output_paths
from svdharm_cli.files.provenance import Ledger, Recipe, record, verdict
from svdharm_cli.run.results import ALREADY_DONE, OK, SKIPPED, FileResult
from svdharm_cli.run.runlog import iso, utc_now


class Resume:
    """Sits between a run's walk and its executor (:meth:`inputs`) and between the
    executor and the run log (:meth:`take`).

    Every inp passing through is expected back; once all its files have reported OK with
    their identities, its record is written. With ``skip_existing`` an input whose record
    says its outputs are today's is not dispatched: its files are reported skipped here
    (``told``); any other inp is dispatched with the reason it is made again, which its
    files' log records carry (``redone``) and :attr:`redone` counts.
    """

    def __init__(
        self,
        ledger: Ledger,
        recipe: Recipe,
        in_root: Path,
        out_root: Path,
        mask_files: MaskFiles | None,
        *,
        skip_existing: bool,
        told: Callable[[FileResult], None],
    ) -> None:
        self.ledger = ledger
        self.recipe = recipe
        self.in_root, self.out_root, self.mask_files = in_root, out_root, mask_files
        self.skip_existing = skip_existing
        self.told = told
        self.redone: Counter[str] = Counter()
        """Units made again by reason (its first words: 'input changed', ...)."""
        self._open: dict[str, tuple[Input, dict[str, FileResult], str | None]] = {}
        self._unit_of: dict[str, str] = {}

    def inputs(self, inputs: Iterable[Input]) -> Iterator[Input]:
        for inp in inputs:
            why = None
            if self.skip_existing:
                found = self.ledger.get(inp.key)
                why, refreshed = verdict(
                    found, inp.files, self.in_root, self.out_root, self.recipe, self.mask_files
                )
                if why is None:
                    if refreshed is not None:  # touched, not changed: the quick check again
                        self.ledger.put(inp.key, refreshed)
                    where = self.in_root / inp.files[0]
                    for rel in inp.files:
                        self.told(
                            FileResult(rel, SKIPPED, f"{where}: {ALREADY_DONE}", volume=inp.volume)
                        )
                    continue
                if found is None and not self._any_output(inp):
                    why = None  # never made (a first run, or a file that failed): not stale
                else:
                    self.redone[why.split(" (", 1)[0]] += 1
            first = inp.files[0]
            self._open[first] = (inp, {}, why)
            for rel in inp.files:
                self._unit_of[rel] = first
            yield inp

    def _any_output(self, inp: Input) -> bool:
        """Whether any output of ``inp`` exists (what the command would name them)."""
        harmonize = self.recipe.parameters.get("method") == "harmonize"
        copies = int(self.recipe.parameters.get("copies") or 1)
        return any(
            (self.out_root / out).exists()
            for rel in inp.files
            for out in output_paths(rel, harmonize, copies)
        )

    def take(self, result: FileResult) -> FileResult:
        """``result`` as the log keeps it; the input's record is written once all of its
        files are back."""
        first = self._unit_of.pop(result.path, None)
        if first is None:
            return result
        inp, back, why = self._open[first]
        if why is not None:
            result = replace(result, redone=why)
        back[result.path] = result
        if len(back) == len(inp.files):
            del self._open[first]
            self._record(inp, [back[rel] for rel in inp.files])
        return result

    def _record(self, inp: Input, results: list[FileResult]) -> None:
        if not all(r.status == OK and r.identity is not None for r in results):
            return
        files = self.mask_files
        with_masks = [r for r in results if files is not None and files(r.path) is not None]
        if any(r.mask_identity is None for r in with_masks):
            return
        self.ledger.put(
            inp.key,
            record(
                [(r.path, r.identity) for r in results if r.identity is not None],
                [(r.path, r.mask_identity) for r in with_masks if r.mask_identity is not None],
                self.recipe,
                [o.path for r in results for o in r.outputs],
                iso(utc_now()),
            ),
        )
