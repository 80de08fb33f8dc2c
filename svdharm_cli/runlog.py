"""The JSON log every harmonize/augment run writes (format documented in the README).

By default the log goes inside OUT as ``svdharm-<command>-<UTC time>.json``; a name that is
taken gets ``-1``, ``-2``, ... so a later run never destroys an earlier run's log. A path
given with ``--log`` is the user's choice and is replaced if it exists. Either way the log is
written atomically. It holds paths and parameters only, never image header values.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from svdharm_cli.atomic import write_text
from svdharm_cli.worker import FileResult

LOG_FORMAT = "svdharm-run-log"
LOG_VERSION = 1


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


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
    }


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


def write_log(data: dict[str, Any], out_root: Path, command: str, explicit: Path | None) -> Path:
    """Write ``data`` as JSON; return where it went."""
    text = to_json(data)
    if explicit is not None:
        write_text(explicit, text)
        return explicit
    stamp = data["started"].replace("-", "").replace(":", "").split(".")[0] + "Z"
    base = f"svdharm-{command}-{stamp}"
    for n in range(10_000):
        path = out_root / (f"{base}.json" if n == 0 else f"{base}-{n}.json")
        try:
            write_text(path, text, replace=False)
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"no free log name for {base} in {out_root}")
