"""Open a self-contained HTML page in headless Chromium with the network shut off, and
count the images that decoded."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def decoded_images(html: str, counter_id: str | None = None) -> tuple[int, int, str | None]:
    """``(decoded, total, text)``: how many ``<img>`` decoded after load, how many there
    are, and the text of the element ``counter_id`` as the browser saw it."""
    assert CHROMIUM is not None
    probe = (
        "<script>window.addEventListener('load', () => {"
        "const imgs = [...document.images];"
        "document.body.dataset.decoded = imgs.filter(i => i.complete && i.naturalWidth > 0).length;"
        "document.body.dataset.images = imgs.length;"
        + (
            f"document.body.dataset.text = document.getElementById({counter_id!r}).textContent;"
            if counter_id
            else ""
        )
        + "});</script>"
    )
    page = html.replace("default-src 'none';", "default-src 'none'; script-src 'unsafe-inline';")
    page = page.replace("</body>", probe + "</body>")
    with tempfile.TemporaryDirectory() as profile:
        probe_path = Path(profile) / "probe.html"
        probe_path.write_text(page)
        cmd = [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--host-resolver-rules=MAP * ~NOTFOUND",
            "--proxy-server=127.0.0.1:9",
            f"--user-data-dir={profile}/user",
            "--virtual-time-budget=5000",
            "--dump-dom",
            probe_path.as_uri(),
        ]
        dom = subprocess.run(
            cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "HOME": profile}
        ).stdout
    decoded = re.search(r'data-decoded="(\d+)"', dom)
    total = re.search(r'data-images="(\d+)"', dom)
    text = re.search(r'data-text="([^"]*)"', dom)
    assert decoded and total, dom[-2000:]
    return int(decoded.group(1)), int(total.group(1)), text.group(1) if text else None
