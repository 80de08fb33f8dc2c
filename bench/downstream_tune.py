"""``svdharm tune`` on the downstream experiment's sites, then the CNN with the cuts it chose.

1. The sites of ``bench/downstream.py`` (scikit-learn's digits as site A, and the same
   digits through each simulated acquisition change) are written as 8-bit PNGs with a
   manifest: ``path``, ``site``, ``digit``.
2. ``svdharm tune --manifest ... --label digit --target-site A --sample 200``: references
   fitted on site A (the downstream experiment harmonizes to its training site, A in the
   main direction), 200 digits per site, the default grid; ``tune.json`` and its report go
   to ``bench/results/``.
3. ``bench/downstream.py --fractions <chosen>`` for svd-harmonization and
   svd-harmonization-standardized (4 seeds): ``bench/results/downstream_tuned.json``, to
   set beside ``downstream.json`` (the paper's cuts).

The tune sample is drawn from all digits, so some of the images it measured are test images
of some seed's split: the choice among ten cut sets saw their labels (through a logistic
regression on global statistics, not the CNN). Say so when reading the result.

Run: ``python bench/downstream_tune.py [--jobs N]`` (about 2 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import downstream  # noqa: E402


def write_sites(folder: Path, shifts: list[str]) -> Path:
    from PIL import Image

    images, labels = downstream.site_a()
    rows = ["path,site,digit"]
    for site, stack in [("A", images)] + [(s, downstream.shifted(images, s)) for s in shifts]:
        (folder / site).mkdir(parents=True, exist_ok=True)
        for k, im in enumerate(stack):
            rel = f"{site}/{k:04d}.png"
            Image.fromarray(np.rint(im * 255).astype(np.uint8)).save(folder / rel)
            rows.append(f"{rel},{site},{labels[k]}")
    table = folder / "digits.csv"
    table.write_text("\n".join(rows) + "\n")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--shifts", default=",".join(downstream.SHIFTS))
    parser.add_argument("--seeds", default="0,1,2,3")
    parser.add_argument("--sample", type=int, default=200)
    args = parser.parse_args()
    shifts = [s for s in args.shifts.split(",") if s]
    results = HERE / "results"
    with tempfile.TemporaryDirectory() as tmp:
        table = write_sites(Path(tmp), shifts)
        tuned = results / "downstream_tune.json"
        subprocess.run(
            [
                *(sys.executable, "-m", "svdharm_cli", "tune"),
                *("--manifest", str(table), "--label", "digit", "--target-site", "A"),
                *("--sample", str(args.sample), "--workers", str(args.jobs)),
                *("-o", str(Path(tmp) / "reference.json"), "--json", str(tuned)),
                *("--report", str(results / "downstream_tune.html")),
            ],
            check=True,
        )
    data = json.loads(tuned.read_text())
    chosen = data["candidates"][data["chosen"]["index"]]["fractions"]
    print(f"tune chose {chosen}; training the CNN with them")
    downstream.main(
        [
            *("--methods", "svd-harmonization,svd-harmonization-standardized"),
            *("--fractions", ",".join(map(str, chosen)), "--shifts", ",".join(shifts)),
            *("--seeds", args.seeds, "--jobs", str(args.jobs)),
            *("--json", str(results / "downstream_tuned.json")),
        ]
    )


if __name__ == "__main__":
    main()
