"""Coverage-guided fuzzing of svdharm's read path with atheris (``make fuzz``).

Each input is one byte that picks a file name (``.dcm``, no extension, ``.nii``,
``.nii.gz``, ``.png``, ``.jpg``, ``.tif``) followed by the file's content. The content is
written to a temporary file and goes through everything that parses an input: sniffing
(:func:`~svdharm_cli.files.formats.handler_for`), the DICOM series header reader that planning
uses, each format's reader (:func:`~svdharm_cli.files.formats.read_image`) and the mask reader.
svdharm's own errors (a file's failure or skip) are the expected outcome; any other
exception escaping them is a crash: a file that would stop a batch.

The seeds are the undamaged files of the test corpus (pydicom, nibabel, sample images, TIFF
written from scikit-image's photographs). libFuzzer writes what it finds to
``fuzz/findings/``; ``python fuzz/fuzz_read.py --save`` turns each finding into a real file
in ``fuzz/crashes/`` (its name's extension restored), which the test suite then runs as part
of its damaged corpus (``tests/files/test_damaged.py``).

    python fuzz/fuzz_read.py -max_total_time=600 -rss_limit_mb=4096 fuzz/seeds
    python fuzz/fuzz_read.py --seeds   # write fuzz/seeds from the test corpus' sources
    python fuzz/fuzz_read.py --save    # findings -> fuzz/crashes/<sha1><ext>
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

NAMES = ("image.dcm", "IM000001", "volume.nii", "volume.nii.gz", "image.png", "image.jpg")
NAMES += ("stack.tif",)
MAX_PIXELS = 4_000_000
"""Smaller than the CLI's default, so that a declared size cannot exhaust the fuzzer."""


def _scratch() -> Path:
    shm = Path("/dev/shm")
    return Path(tempfile.mkdtemp(dir=shm if shm.is_dir() else None, prefix="svdharm-fuzz-"))


def name_for(data: bytes) -> tuple[str, bytes]:
    """The file name an input stands for, and the file's content."""
    if not data:
        return NAMES[0], b""
    return NAMES[data[0] % len(NAMES)], data[1:]


def one_input(data: bytes, folder: Path) -> None:
    """Everything svdharm does to an input file before processing it."""
    from svdharm_cli.errors import SvdharmError
    from svdharm_cli.files.formats import handler_for, read_image, read_mask
    from svdharm_cli.files.formats.dicom import series_header

    name, content = name_for(data)
    path = folder / name
    path.write_bytes(content)
    try:
        handler = handler_for(path)
        if handler is None:
            return
        if handler.name == "dicom":
            series_header(path)
        with contextlib.suppress(SvdharmError):
            read_image(path, MAX_PIXELS)
        with contextlib.suppress(SvdharmError):
            read_mask(path)
    finally:
        path.unlink()


def write_seeds(seeds: Path) -> None:
    from tests import fuzzcorpus

    seeds.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for source, path in fuzzcorpus.sources(Path(tmp) / "tiff").items():
            raw = path.read_bytes()
            if len(raw) > 200_000:
                continue
            lower = source.lower()
            suffix = next((n for n in NAMES if "." in n and lower.endswith(n[n.index(".") :])), "")
            index = NAMES.index(suffix) if suffix else NAMES.index("IM000001")
            (seeds / source.replace("/", "_")).write_bytes(bytes([index]) + raw)


def save_findings(findings: Path, crashes: Path) -> int:
    crashes.mkdir(parents=True, exist_ok=True)
    saved = 0
    for finding in sorted(findings.glob("*")):
        if not finding.name.startswith(("crash-", "timeout-", "oom-", "leak-")):
            continue
        name, content = name_for(finding.read_bytes())
        suffix = name[name.index(".") :] if "." in name else ""
        digest = hashlib.sha1(content).hexdigest()[:16]
        target = crashes / f"{finding.name.split('-', 1)[0]}-{digest}{suffix}"
        if not target.exists():
            target.write_bytes(content)
            saved += 1
    return saved


def main() -> None:
    if "--seeds" in sys.argv:
        write_seeds(HERE / "seeds")
        return
    if "--save" in sys.argv:
        count = save_findings(HERE / "findings", HERE / "crashes")
        print(f"{count} new finding(s) saved to {HERE / 'crashes'}")
        return
    import atheris

    with atheris.instrument_imports():
        import nibabel  # noqa: F401
        import png  # noqa: F401
        import pydicom  # noqa: F401
        import tifffile  # noqa: F401

        import svdharm_cli.files.formats  # noqa: F401
        import svdharm_cli.files.formats.dicom  # noqa: F401
        import svdharm_cli.files.formats.nifti  # noqa: F401
        import svdharm_cli.files.formats.raster  # noqa: F401
        import svdharm_cli.files.formats.tiff  # noqa: F401
    folder = _scratch()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    atheris.Setup(sys.argv, lambda data: one_input(data, folder))
    atheris.Fuzz()


if __name__ == "__main__":
    main()
