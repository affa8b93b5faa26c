"""Load built book pages in headless Chromium and check that every chart drew (svg/canvas inside each
chart div, no error text), and warn about charts wider than the page's text column (they then need a
horizontal scroll). Also writes a screenshot per page for a human to look at.

    .venv/bin/python book/check_render.py [_build/html] [--screenshots DIR]
Needs Debian's chromium (apt-get install chromium).
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--disable-quic"]
COLUMN_PX = 680  # the article column of sphinx-book-theme in the 1280-px-wide screenshots below


def dom(url: str) -> str:
    with tempfile.TemporaryDirectory() as prof:
        r = subprocess.run(["chromium", *FLAGS, f"--user-data-dir={prof}", "--virtual-time-budget=15000",
                            "--dump-dom", url], capture_output=True, text=True, timeout=120)
    return r.stdout


def screenshot(url: str, out: Path) -> None:
    with tempfile.TemporaryDirectory() as prof:
        subprocess.run(["chromium", *FLAGS, f"--user-data-dir={prof}", "--virtual-time-budget=15000",
                        f"--screenshot={out}", "--window-size=1280,2400", url], capture_output=True, timeout=120)


def check(html_dir: Path, shots: Path | None) -> int:
    bad = 0
    for page in sorted((html_dir / "book" / "executed").glob("*.html")):
        d = dom(page.as_uri())
        charts = re.findall(r'<div id="(atlas-chart-[0-9a-f]+)"[^>]*>(.*?)</div>\s*<script', d, flags=re.S)
        drawn = sum(1 for _id, inner in charts if ("<svg" in inner or "<canvas" in inner) and "chart error" not in inner)
        widths = [float(m.group(1)) for _id, inner in charts if (m := re.search(r'<svg[^>]*\swidth="([0-9.]+)"', inner))]
        wide = [f"{w:.0f}" for w in widths if w > COLUMN_PX]
        print(f"{page.name}: {drawn}/{len(charts)} charts drew"
              + (f"; warning: {len(wide)} wider than the {COLUMN_PX}-px column ({', '.join(wide)} px)" if wide else ""))
        bad += len(charts) - drawn
        if shots:
            shots.mkdir(parents=True, exist_ok=True)
            screenshot(page.as_uri(), shots / f"{page.stem}.png")
    return bad


if __name__ == "__main__":
    args = sys.argv[1:]
    shots = Path(args[args.index("--screenshots") + 1]) if "--screenshots" in args else None
    html = Path(args[0]) if args and not args[0].startswith("--") else Path(__file__).resolve().parent.parent / "_build" / "html"
    sys.exit(1 if check(html, shots) else 0)
