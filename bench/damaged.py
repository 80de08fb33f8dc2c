"""Damaged inputs: how many mutants of real files stop a batch, and how many pass as skipped.

Builds seeded mutants (``tests/fuzzcorpus.py``: bit flips, random runs, truncation, smashed
headers, zeroed runs of pydicom, nibabel, sample and TIFF files), fits a reference with an
entry for every kind on the undamaged files, then:

1. each mutant alone, in this process, through the same walk, plan and worker a run uses:
   an exception that escapes them would have stopped a whole batch; a damaged image that
   comes back ``skipped`` would have passed silently with exit 0;
2. all mutants as one batch through ``svdharm harmonize`` with 2 workers: its exit status,
   whether it printed a traceback, and its seconds per mutant.

    python bench/damaged.py [--count 500] [--seed 0] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from svdharm_cli.core.bands import DEFAULT_FRACTIONS  # noqa: E402
from svdharm_cli.core.methods import Method  # noqa: E402
from svdharm_cli.core.reference import Reference  # noqa: E402
from svdharm_cli.files.plan import discover, plan_inputs  # noqa: E402
from svdharm_cli.run.results import SKIPPED  # noqa: E402
from svdharm_cli.run.worker import JobConfig, process_inputs  # noqa: E402
from tests import fuzzcorpus  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        corpus = work / "corpus"
        mutants = fuzzcorpus.build(corpus, args.count, args.seed)
        fuzzcorpus.originals(work / "originals")
        ref_path = work / "reference.json"
        fit = subprocess.run(
            [
                sys.executable,
                "-m",
                "svdharm_cli",
                "fit-reference",
                work / "originals",
                "-o",
                ref_path,
            ],
            capture_output=True,
            text=True,
        )
        assert ref_path.exists(), fit.stderr
        reference = Reference.from_json(ref_path.read_text())
        stoppers: list[dict[str, str]] = []
        silent: list[dict[str, str]] = []
        for i, mutant in enumerate(mutants):
            folder = corpus / mutant.files[0].split("/")[0]
            out = work / "out" / str(i)
            config = JobConfig(
                Method.HARMONIZE,
                tuple(DEFAULT_FRACTIONS),
                folder,
                out,
                reference=reference,
            )
            try:
                found = discover(folder)
                units = plan_inputs(folder, found.images, found.dicom)
                out.mkdir(parents=True)
                results = process_inputs(units, config)
            except Exception as exc:  # what would have ended a whole run
                where = traceback.extract_tb(exc.__traceback__)[-1]
                stoppers.append(
                    {
                        "mutant": mutant.damaged,
                        "mutation": mutant.mutation,
                        "exception": type(exc).__name__,
                        "at": f"{Path(where.filename).name}:{where.lineno}",
                    }
                )
                continue
            if mutant.source in fuzzcorpus.NOT_IMAGES:
                continue
            for result in results:
                if result.status == SKIPPED and result.path.endswith(mutant.damaged.split("/")[1]):
                    silent.append({"mutant": mutant.damaged, "mutation": mutant.mutation})
        start = time.perf_counter()
        batch = subprocess.run(
            [
                sys.executable,
                "-m",
                "svdharm_cli",
                "harmonize",
                corpus,
                work / "batch-out",
                "--reference",
                ref_path,
                "--workers",
                "2",
                "--quiet",
            ],
            capture_output=True,
            text=True,
        )
        seconds = time.perf_counter() - start
    summary = {
        "mutants": len(mutants),
        "seed": args.seed,
        "alone_would_stop_a_batch": len(stoppers),
        "damaged_images_skipped": len(silent),
        "batch_exit_status": batch.returncode,
        "batch_traceback": "Traceback" in batch.stderr,
        "batch_seconds": round(seconds, 2),
        "batch_seconds_per_mutant": round(seconds / len(mutants), 4),
        "stoppers": stoppers,
        "silent_skips": silent,
    }
    print(json.dumps({k: v for k, v in summary.items() if k not in ("stoppers", "silent_skips")}))
    for row in stoppers[:30]:
        print("stops:", row)
    for row in silent[:10]:
        print("skipped:", row)
    if args.json is not None:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
