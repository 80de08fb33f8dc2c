"""Reading a table of inputs: delimiters, the root, the columns, and what is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from svdharm_cli.errors import UsageError
from svdharm_cli.files.manifest import check_listed, read_manifest


def test_a_csv_beside_its_files_has_its_folder_as_root(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text(
        "\ufeffPath,Site,diagnosis\nscans/a.png,A,control\n scans/b.png , B ,case\n\n",
        encoding="utf-8",
    )
    manifest = read_manifest(tmp_path / "t.csv")
    assert manifest.root == tmp_path.resolve() and manifest.delimiter == ","
    assert [r.rel for r in manifest.rows] == ["scans/a.png", "scans/b.png"]
    assert manifest.rows[1].site == "B" and manifest.rows[1].values["diagnosis"] == "case"
    assert manifest.column("site") == "Site" and manifest.masks == {}
    with pytest.raises(UsageError, match="no column 'grade'"):
        manifest.column("grade")


def test_a_tsv_naming_files_elsewhere_has_their_common_folder_as_root(tmp_path: Path) -> None:
    a, b = tmp_path / "data" / "x" / "a.nii.gz", tmp_path / "data" / "y" / "b.nii.gz"
    (tmp_path / "tables").mkdir()
    (tmp_path / "tables" / "t.tsv").write_text(f"path\tmask\n{a}\t../m/a.png\n{b}\t\n")
    manifest = read_manifest(tmp_path / "tables" / "t.tsv")
    assert manifest.delimiter == "\t" and manifest.root == (tmp_path / "data").resolve()
    assert [r.rel for r in manifest.rows] == ["x/a.nii.gz", "y/b.nii.gz"]
    assert manifest.masks == {"x/a.nii.gz": (tmp_path / "m" / "a.png").resolve()}
    with pytest.raises(UsageError, match="lies inside output"):
        check_listed(manifest, tmp_path / "data" / "x")
    check_listed(manifest, tmp_path / "out")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name\na.png\n", "no 'path' column"),
        ("path,path\na.png,b.png\n", "a column name repeats"),
        ("path\na.png\nsub/../a.png\n", r"is listed already \(line 2\)"),
        ('path\n"a.png\n', "not a valid table"),
        ("path\n", "no rows"),
    ],
)
def test_what_a_table_may_not_be(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "t.csv").write_text(text)
    with pytest.raises(UsageError, match=message):
        read_manifest(tmp_path / "t.csv")
    (tmp_path / "bad.csv").write_bytes(b"path\n\xff\xfe\x00")
    with pytest.raises(UsageError, match="cannot read it"):
        read_manifest(tmp_path / "bad.csv")
