"""The HTML QA report: self-contained, counts equal to the log's, every image decodes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.browser import CHROMIUM, decoded_images
from tests.conftest import only_log, svdharm
from tests.images import save, textured


@pytest.fixture(scope="module")
def reported_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, str]:
    root = tmp_path_factory.mktemp("report")
    src = root / "in"
    for i in range(5):
        save(src / f"img{i}.png", textured(64, 64, seed=i, channels=3))
    (src / "broken.png").write_bytes(b"not a png")
    refs = root / "refs"
    save(refs / "r.png", textured(64, 64, seed=20, channels=3) * 0.6 + 0.3)
    reference = root / "reference.json"
    assert svdharm("fit-reference", refs, "-o", reference).code == 0
    out = root / "out"
    result = svdharm(
        "augment", src, out, "--seed", 2, "--copies", 2, "--reference", reference, "--report"
    )
    assert result.code == 1, result.stderr
    html_files = list(out.glob("*.html"))
    assert len(html_files) == 1 and "report:" in result.stdout
    return html_files[0], only_log(out), html_files[0].read_text()


def test_report_is_self_contained_and_shows_the_log(reported_run) -> None:
    html_path, log, html = reported_run
    assert re.search(r'id="count-ok">(\d+)<', html).group(1) == str(log["counts"]["ok"]) == "5"
    assert (
        re.search(r'id="count-failed">(\d+)<', html).group(1) == str(log["counts"]["failed"]) == "1"
    )
    assert "broken.png" in html and "not a valid PNG" in html
    # Nothing outside the page: every src is inline data, and a CSP forbids the network.
    sources = re.findall(r'src="([^"]+)"', html)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "default-src 'none'" in html
    assert "http://" not in html and "https://" not in html
    assert "Coefficients drawn" in html and "against the reference" in html


def test_report_of_a_large_run_stays_bounded(tmp_path: Path) -> None:
    src = tmp_path / "in"
    for i in range(60):
        save(src / f"i{i:02d}.png", textured(24, 24, seed=i))
    out = tmp_path / "out"
    assert svdharm("augment", src, out, "--seed", 1, "--workers", 2).code == 0
    log_path = next(out.glob("svdharm-*.json"))
    assert svdharm("report", log_path, "-o", tmp_path / "r.html").code == 0
    html = (tmp_path / "r.html").read_text()
    assert "A sample of 24 of 60" in html
    assert len(re.findall(r'class="pair"', html)) == 24


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs it)")
def test_report_opens_in_headless_browser_without_network(reported_run) -> None:
    html_path, log, html = reported_run
    decoded, total, ok = decoded_images(html, "count-ok")
    assert total == len(re.findall(r"<img ", html)) > 0
    assert decoded == total
    assert ok == str(log["counts"]["ok"])
