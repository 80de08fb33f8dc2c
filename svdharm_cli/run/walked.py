"""A run's input tree, walked as the run dispatches: inputs come a folder at a time
(:func:`~svdharm_cli.files.plan.walk`), files still arriving (``--settle``) are left for the
next run, and what the log needs besides the file records is counted on the way."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from svdharm_cli.files.plan import Folder, Input, count_candidates, plan_inputs, walk
from svdharm_cli.run.options import RunRequest
from svdharm_cli.run.results import SKIPPED, FileResult


def root_of(inp: Path) -> Path:
    """The input root: IN, or the folder of a single file given as IN."""
    return inp.parent if inp.is_file() else inp


class Walked:
    """The input tree walked folder by folder as the run dispatches (:func:`plan.walk`):
    inputs come a folder at a time, and what the log needs besides the file records is
    counted on the way (images, the files no format takes, the DICOM series)."""

    def __init__(self, request: RunRequest, root: Path) -> None:
        self.request = request
        self.root = root
        self.images = 0
        """Inputs: the images, and each folder that could not be listed (a failure)."""
        self.ignored: list[str] = []
        self.unlisted: list[tuple[str, str]] = []
        self.notes: list[str] = []
        self.volumes: list[dict[str, Any]] = []
        self._walked: Callable[[int], None] = lambda images: None
        self.told: Callable[[FileResult], None] = lambda result: None
        """Where the files left for a later run (``--settle``) are reported."""
        manifest = request.manifest
        self._folders = (
            manifest.folders()
            if manifest is not None
            else walk(
                request.inp,
                include=request.walk.include,
                exclude=request.walk.exclude,
                skip_dirs=[request.out],
                include_hidden=request.walk.include_hidden,
            )
        )

    def _take(self, folder: Folder) -> None:
        self.images += len(folder.images) + len(folder.unlisted)
        self.ignored.extend(folder.ignored)
        self.unlisted.extend(folder.unlisted)
        self.notes.extend(folder.notes)

    def inputs(self) -> Iterator[Input]:
        single = self.request.inp.is_file()
        for folder in self._folders:
            self._take(folder)
            young = self._unsettled(folder)
            dicom = folder.dicom or frozenset()
            for inp in plan_inputs(self.root, folder.images, None if single else folder.dicom):
                held = [rel for rel in inp.files if rel in young]
                if not held and young and inp.files[0] in dicom:
                    held = sorted(young)  # a series may be missing a file still arriving
                if held:
                    why = (
                        f"{self.root / held[0]}: modified {young[held[0]]:.0f} s ago, within "
                        f"--settle {self.request.walk.settle:g} s: left for the next run"
                    )
                    for rel in inp.files:
                        self.told(FileResult(rel, SKIPPED, why, volume=inp.volume))
                    continue
                if inp.volume is not None:
                    self.volumes.append({"volume": inp.volume, "files": list(inp.files)})
                yield inp
        self._walked(self.images)

    def _unsettled(self, folder: Folder) -> dict[str, float]:
        """The files of ``folder`` (images or not: a DICOM file cut short may not be
        recognized yet) modified less than ``--settle`` seconds ago, with their age."""
        settle = self.request.walk.settle
        if settle <= 0:
            return {}
        now = time.time()
        young = {}
        for rel in [*folder.images, *folder.ignored]:
            try:
                age = now - os.stat(self.root / rel).st_mtime
            except OSError:
                continue
            if age < settle:
                young[rel] = max(age, 0.0)
        return young

    def finish(self) -> None:
        """Walk the rest without planning it (after a stop), so that the counts are exact."""
        for folder in self._folders:
            self._take(folder)

    def count_for(self, on_total: Callable[[int], None]) -> None:
        """Give the progress bar its total: first an estimate, the files the walk will
        consider counted by name alone (:func:`plan.count_candidates`, an upper bound: it
        includes files that turn out not to be images), counted in a thread while the run
        starts, so no dispatch waits for it; then, once the walk has ended, the exact
        number of images."""
        if self.request.manifest is not None:
            on_total(len(self.request.manifest.rows))  # a table says how many at once
            return
        lock = threading.Lock()
        exact = [False]

        def walked(images: int) -> None:
            with lock:
                exact[0] = True
                on_total(images)

        def estimate() -> None:
            r = self.request
            count = count_candidates(
                r.inp,
                include=r.walk.include,
                exclude=r.walk.exclude,
                skip_dirs=[r.out],
                include_hidden=r.walk.include_hidden,
            )
            with lock:
                if not exact[0]:
                    on_total(count)

        self._walked = walked
        threading.Thread(target=estimate, name="svdharm-count", daemon=True).start()
