"""The CLI end to end on generated trees: outputs, formats, log, exit codes, reproducibility."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from svdharm_cli.core.methods import channel_statistics
from tests import oracle
from tests.conftest import only_log, svdharm
from tests.images import load, save, textured

GRAY_FILES = ["site1/a.png", "site1/deep/b16.png", "site2/c.jpg", "site2/d.png"]


def test_version_and_help() -> None:
    assert svdharm("--version").stdout.strip().startswith("svdharm ")
    for command in ("fit-reference", "harmonize", "augment"):
        result = svdharm(command, "--help")
        assert result.code == 0 and "Usage" in result.stdout


@pytest.mark.parametrize("workers", [1, 2])
def test_fit_reference_from_several_inputs_uses_every_file(tmp_path: Path, workers: int) -> None:
    """Folders and files given together: every image is a source, in input order."""
    for i in range(3):
        save(tmp_path / "a" / f"a{i}.png", textured(30, 30, seed=i))
        save(tmp_path / "b" / f"b{i}.png", textured(30, 30, seed=10 + i))
    save(tmp_path / "c.png", textured(30, 30, seed=20))
    inputs = [tmp_path / "a", tmp_path / "c.png", tmp_path / "b"]
    out = tmp_path / "reference.json"
    result = svdharm("fit-reference", *inputs, "-o", out, "--workers", workers)
    assert result.code == 0, result.stderr
    paths = [Path(s["path"]).name for s in json.loads(out.read_text())["sources"]]
    assert paths == ["a0.png", "a1.png", "a2.png", "c.png", "b0.png", "b1.png", "b2.png"]


def test_fit_reference_file(gray_reference: Path) -> None:
    data = json.loads(gray_reference.read_text())
    assert data["format"] == "svdharm-reference" and data["format_version"] == 2
    assert data["fractions"] == [0.07, 0.2, 0.5]
    [entry] = data["entries"]
    assert (entry["unit"], entry["channels"], entry["images"]) == ("normalized", 1, 2)
    assert len(data["sources"]) == 2
    for src in data["sources"]:
        assert len(src["sha256"]) == 64 and len(src["shape"]) == 2
    # The cohort statistic is the plain average of the per-image statistics.
    refs = gray_reference.parent / "refs"
    stats = [channel_statistics(load(p)[None] / 255.0) for p in sorted(refs.glob("*.png"))]
    np.testing.assert_allclose(entry["mean"], np.mean([m for m, _ in stats], axis=0), atol=1e-12)
    np.testing.assert_allclose(entry["std"], np.mean([s for _, s in stats], axis=0), atol=1e-12)


def test_harmonize_tree(gray_tree: Path, gray_reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = svdharm("harmonize", gray_tree, out, "--reference", gray_reference, "--workers", 2)
    assert result.code == 0, result.stderr
    assert "processed 4, skipped 0, failed 0" in result.stdout
    assert "\x1b[" not in result.stdout + result.stderr  # no colour when not a terminal
    for rel in GRAY_FILES:
        before, after = load(gray_tree / rel), load(out / rel)
        assert after.dtype == before.dtype and after.shape == before.shape
    with Image.open(out / "site1/deep/b16.png") as im:
        assert im.mode == "I;16"

    log = only_log(out)
    assert log["tool"] == "svdharm" and log["command"] == "harmonize"
    assert log["parameters"]["method"] == "harmonize" and log["parameters"]["workers"] == 2
    assert log["reference"]["path"] == str(gray_reference) and len(log["reference"]["sha256"]) == 64
    ref_file = json.loads(gray_reference.read_text())
    assert log["reference"]["entries"] == ref_file["entries"]
    assert log["counts"] == {
        "ok": 4,
        "skipped": 0,
        "failed": 0,
        "already_done": 0,
        "redone": None,
        "retried_failures": None,
        "not_processed": 0,
        "ignored": 1,
    }
    assert log["ignored"] == ["site2/notes.txt"]
    assert log["status"] == "completed" and log["signal"] is None
    assert [f["path"] for f in log["files"]] == sorted(GRAY_FILES)
    for f in log["files"]:
        assert f["status"] == "ok" and f["reason"] is None and f["seconds"] >= 0
        assert f["outputs"] == [{"path": f["path"], "seed": None, "coefficients": None}]
    assert log["started"].endswith("Z") and log["finished"] >= log["started"]


@pytest.mark.parametrize(
    ("rel", "bits", "bound"), [("site1/a.png", 8, 1), ("site1/deep/b16.png", 16, 16)]
)
def test_harmonized_pixels_within_bound_of_oracle(
    gray_tree: Path, gray_reference: Path, tmp_path: Path, rel: str, bits: int, bound: int
) -> None:
    out = tmp_path / "out"
    assert svdharm("harmonize", gray_tree, out, "--reference", gray_reference).code == 0
    ref = json.loads(gray_reference.read_text())
    x = load(gray_tree / rel) / (2**bits - 1)
    expected = oracle.to_stored(
        oracle.harmonize_channel(x, ref["entries"][0]["mean"][0], ref["entries"][0]["std"][0]), bits
    )
    diff = np.abs(load(out / rel).astype(np.int64) - expected)
    assert diff.max() <= bound


def test_augment_reproducible_across_worker_counts(gray_tree: Path, tmp_path: Path) -> None:
    runs = {}
    for workers in (1, 2):
        out = tmp_path / f"out{workers}"
        result = svdharm(
            "augment", gray_tree, out, "--copies", 3, "--seed", 42, "--workers", workers
        )
        assert result.code == 0, result.stderr
        runs[workers] = out
    for rel in GRAY_FILES:
        p = Path(rel)
        for j in range(3):
            name = (p.parent / f"{p.stem}_aug{j}{p.suffix}").as_posix()
            assert (runs[1] / name).read_bytes() == (runs[2] / name).read_bytes()
    log1, log2 = only_log(runs[1]), only_log(runs[2])
    assert log1["seed"] == 42 and log1["seed_given"] is True
    strip = [
        [{k: v for k, v in f.items() if k != "seconds"} for f in log["files"]]
        for log in (log1, log2)
    ]
    assert strip[0] == strip[1]


def _tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and not p.name.startswith(("svdharm-", "."))
    }


def test_short_batch_starts_no_worker_process(gray_tree: Path, tmp_path: Path) -> None:
    """Starting a worker process costs about half a second of a CPU: a batch that one
    process finishes sooner than SVDHARM_SOLO_SECONDS (default 1 s) starts none."""
    runs = {}
    for workers in (1, 2):
        out = tmp_path / f"out{workers}"
        env = {k: v for k, v in os.environ.items() if k != "SVDHARM_SOLO_SECONDS"}
        result = svdharm("augment", gray_tree, out, "--seed", 4, "--workers", workers, env=env)
        assert result.code == 0, result.stderr
        runs[workers] = out
    assert only_log(runs[2])["executor"] == {"kind": "local", "workers": 2, "processes": 0}
    assert _tree(runs[2]) == _tree(runs[1])
    bad = svdharm(
        "augment", gray_tree, tmp_path / "bad", env={**os.environ, "SVDHARM_SOLO_SECONDS": "x"}
    )
    assert bad.code == 2 and "SVDHARM_SOLO_SECONDS='x' is not a number" in bad.stderr


def test_longer_batch_moves_to_worker_processes(tmp_path: Path) -> None:
    """Once the rest of a batch looks longer than SVDHARM_SOLO_SECONDS, the rest goes to
    the workers: every file is logged once, and the outputs are one worker's."""
    src = tmp_path / "in"
    for i in range(30):
        save(src / f"im{i:02d}.png", textured(160, 160, seed=i))
    runs = {}
    for workers in (1, 2):
        out = tmp_path / f"out{workers}"
        env = {**os.environ, "SVDHARM_SOLO_SECONDS": "0.05"}
        result = svdharm("augment", src, out, "--seed", 4, "--workers", workers, env=env)
        assert result.code == 0, result.stderr
        runs[workers] = out
    log = only_log(runs[2])
    assert log["executor"] == {"kind": "local", "workers": 2, "processes": 2}
    assert sorted(f["path"] for f in log["files"]) == sorted(p.name for p in src.iterdir())
    assert _tree(runs[2]) == _tree(runs[1])


def test_augment_outputs_replay_from_logged_coefficients(gray_tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert (
        svdharm(
            "augment", gray_tree, out, "--copies", 2, "--seed", 7, "--low", 0.5, "--high", 1.5
        ).code
        == 0
    )
    log = only_log(out)
    record = next(f for f in log["files"] if f["path"] == "site1/a.png")
    x = load(gray_tree / "site1/a.png") / 255.0
    for output in record["outputs"]:
        coef = output["coefficients"][0]
        assert all(0.5 <= c <= 1.5 for c in coef)
        replay = np.random.default_rng(output["seed"]).uniform(0.5, 1.5, 4)
        np.testing.assert_allclose(coef, replay)
        expected = oracle.to_stored(oracle.deharmonize_channel(x, coef), 8)
        assert np.abs(load(out / output["path"]).astype(np.int64) - expected).max() <= 1
    # Copies differ from each other.
    a0, a1 = (load(out / o["path"]) for o in record["outputs"])
    assert not np.array_equal(a0, a1)


def test_augment_without_seed_prints_and_logs_it(gray_tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = svdharm("augment", gray_tree / "site1" / "a.png", out)
    assert result.code == 0, result.stderr
    log = only_log(out)
    assert log["seed_given"] is False and isinstance(log["seed"], int)
    assert f"--seed {log['seed']}" in result.stdout
    assert (out / "a_aug0.png").exists()
    again = tmp_path / "again"
    assert svdharm("augment", gray_tree / "site1" / "a.png", again, "--seed", log["seed"]).code == 0
    assert (again / "a_aug0.png").read_bytes() == (out / "a_aug0.png").read_bytes()


def test_combined_method_with_reference(
    gray_tree: Path, gray_reference: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result = svdharm("augment", gray_tree, out, "--seed", 3, "--reference", gray_reference)
    assert result.code == 0, result.stderr
    log = only_log(out)
    assert log["parameters"]["method"] == "harmonize-deharmonize"
    record = next(f for f in log["files"] if f["path"] == "site2/d.png")
    coef = record["outputs"][0]["coefficients"][0]
    assert coef[0] is None and all(isinstance(c, float) for c in coef[1:])
    ref = json.loads(gray_reference.read_text())
    x = load(gray_tree / "site2/d.png") / 255.0
    expected = oracle.to_stored(
        oracle.combined_channel(x, ref["entries"][0]["mean"][0], ref["entries"][0]["std"][0], coef),
        8,
    )
    assert np.abs(load(out / "site2/d_aug0.png").astype(np.int64) - expected).max() <= 1


def test_rgb_with_alpha_and_per_channel(tmp_path: Path) -> None:
    rgb = textured(40, 50, seed=20, channels=3)
    rgba = np.rint(np.concatenate([rgb, textured(40, 50, seed=21)]) * 255).astype(np.uint8)
    src = tmp_path / "in" / "colour.png"
    src.parent.mkdir(parents=True)
    Image.fromarray(np.moveaxis(rgba, 0, -1), "RGBA").save(src)
    out = tmp_path / "out"
    assert svdharm("augment", src.parent, out, "--seed", 1, "--per-channel").code == 0
    written = load(out / "colour_aug0.png")
    assert written.shape == (40, 50, 4)
    np.testing.assert_array_equal(written[:, :, 3], rgba[3])  # alpha untouched
    coef = only_log(out)["files"][0]["outputs"][0]["coefficients"]
    assert len(coef) == 3 and coef[0] != coef[1]


def test_bad_file_fails_alone(gray_tree: Path, gray_reference: Path, tmp_path: Path) -> None:
    (gray_tree / "site2" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    (gray_tree / "site2" / "empty.jpg").write_bytes(b"")
    out = tmp_path / "out"
    result = svdharm("harmonize", gray_tree, out, "--reference", gray_reference)
    assert result.code == 1
    assert "broken.png" in result.stderr and "empty.jpg" in result.stderr
    assert "processed 4, skipped 0, failed 2" in result.stdout
    for rel in GRAY_FILES:
        assert (out / rel).exists()
    log = only_log(out)
    failed = {f["path"]: f["reason"] for f in log["files"] if f["status"] == "failed"}
    assert set(failed) == {"site2/broken.png", "site2/empty.jpg"}
    assert all(str(gray_tree) in reason for reason in failed.values())
    assert not list(out.rglob("*.svdharm-tmp"))


def test_channel_mismatch_is_a_per_file_error(
    gray_tree: Path, gray_reference: Path, tmp_path: Path
) -> None:
    save(gray_tree / "colour.png", textured(30, 30, seed=5, channels=3))
    out = tmp_path / "out"
    result = svdharm("harmonize", gray_tree, out, "--reference", gray_reference)
    assert result.code == 1
    assert (
        "colour.png: is of no kind, RGB (3 channels) in normalized units, but the reference has "
        "entries only for gray (1 channel) in normalized units"
    ) in result.stderr
    assert (out / "site1/a.png").exists() and not (out / "colour.png").exists()


def test_reference_may_be_an_image(gray_tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    ref_image = gray_tree / "site2" / "d.png"
    assert svdharm("harmonize", gray_tree / "site1", out, "--reference", ref_image).code == 0
    log = only_log(out)
    assert log["reference"]["kind"] == "image" and log["reference"]["sources"][0]["path"] == str(
        ref_image
    )


@pytest.mark.parametrize(
    "args",
    [
        ["harmonize", "{in}", "{in}", "--reference", "{ref}"],
        ["harmonize", "{in}/site1", "{in}", "--reference", "{ref}"],
        ["harmonize", "{in}", "{tmp}/o", "--reference", "{tmp}/missing.json"],
        ["harmonize", "{tmp}/nope", "{tmp}/o", "--reference", "{ref}"],
        ["harmonize", "{in}", "{tmp}/o", "--reference", "{ref}", "--fractions", "0.5,0.2"],
        ["augment", "{in}", "{tmp}/o", "--copies", "0"],
        ["augment", "{in}", "{tmp}/o", "--low", "1.3", "--high", "1.2"],
        ["augment", "{in}", "{tmp}/o", "--workers", "0"],
        ["fit-reference", "{tmp}/nope", "-o", "{tmp}/r.json"],
    ],
)
def test_usage_errors_exit_2(
    gray_tree: Path, gray_reference: Path, tmp_path: Path, args: list[str]
) -> None:
    filled = [a.format(**{"in": gray_tree, "ref": gray_reference, "tmp": tmp_path}) for a in args]
    result = svdharm(*filled)
    assert result.code == 2, result.stderr
    assert "Traceback" not in result.stderr and result.stderr.strip()
    assert not (tmp_path / "o").exists()


def test_invalid_reference_json_names_field(
    gray_tree: Path, gray_reference: Path, tmp_path: Path
) -> None:
    data = json.loads(gray_reference.read_text())
    data["entries"][0]["std"][0][1] = -0.5
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    result = svdharm("harmonize", gray_tree, tmp_path / "o", "--reference", bad)
    assert result.code == 2 and "'entries[0].std'" in result.stderr


def test_out_inside_in_is_excluded_and_logs_kept(gray_tree: Path, gray_reference: Path) -> None:
    out = gray_tree / "harmonized"
    for _ in range(2):
        result = svdharm("harmonize", gray_tree, out, "--reference", gray_reference, "--workers", 1)
        assert result.code == 0 and "processed 4," in result.stdout
    assert len(list(out.glob("svdharm-harmonize-*.json"))) == 2
    assert not (out / "harmonized").exists()


def test_explicit_log_path_and_quiet(gray_tree: Path, gray_reference: Path, tmp_path: Path) -> None:
    log = tmp_path / "logs" / "run.json"
    result = svdharm(
        "harmonize", gray_tree, tmp_path / "o", "--reference", gray_reference, "--log", log, "-q"
    )
    assert result.code == 0 and result.stdout == "" and result.stderr == ""
    assert json.loads(log.read_text())["counts"]["ok"] == 4


def test_include_exclude(gray_tree: Path, gray_reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    args = ("--include", "*.png", "--exclude", "site1/deep/*")
    assert svdharm("harmonize", gray_tree, out, "--reference", gray_reference, *args).code == 0
    assert [f["path"] for f in only_log(out)["files"]] == ["site1/a.png", "site2/d.png"]


def test_hidden_files_skipped(gray_tree: Path, gray_reference: Path, tmp_path: Path) -> None:
    save(gray_tree / ".cache" / "x.png", textured(8, 8))
    save(gray_tree / ".hidden.png", textured(8, 8))
    out = tmp_path / "o"
    assert svdharm("harmonize", gray_tree, out, "--reference", gray_reference).code == 0
    assert len(only_log(out)["files"]) == 4


def _zlib_level_class(path: Path) -> int:
    """FLEVEL of the first IDAT's zlib header: 0 (levels 0-1), 1 (2-5), 2 (6), 3 (7-9)."""
    data = path.read_bytes()
    at = data.index(b"IDAT") + 4
    return data[at + 1] >> 6


def test_png_compression_default_and_option(gray_tree: Path, tmp_path: Path) -> None:
    import inspect

    from svdharm_cli.files.formats import DEFAULT_MAX_PIXELS, DEFAULT_PNG_COMPRESSION, WriteOptions
    from svdharm_cli.ui import app as cli

    for command in (cli.harmonize, cli.augment):
        params = inspect.signature(command).parameters
        assert params["png_compression"].default == DEFAULT_PNG_COMPRESSION
        assert params["jpeg_quality"].default == WriteOptions().jpeg_quality
        assert params["max_pixels"].default == DEFAULT_MAX_PIXELS
    out_default, out_nine = tmp_path / "default", tmp_path / "nine"
    assert svdharm("augment", gray_tree, out_default, "--seed", 1).code == 0
    assert svdharm("augment", gray_tree, out_nine, "--seed", 1, "--png-compression", 9).code == 0
    assert only_log(out_default)["parameters"]["png_compression"] == 4
    assert _zlib_level_class(out_default / "site1/a_aug0.png") == 1
    assert _zlib_level_class(out_nine / "site1/a_aug0.png") == 3
    same = "site1/a_aug0.png"
    assert np.array_equal(load(out_default / same), load(out_nine / same))
