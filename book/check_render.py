"""Open every built page in headless Chromium, as a reader would, at 1280 px and at 390 px (a phone), and fail on
what a reader would hit: a chart that did not draw, a text column that scrolls sideways, a table column too
narrow to read, an absolute path of the machine that built the book. Writes a screenshot per page and width.

    .venv/bin/python book/check_render.py [_build/html] [--screenshots DIR]

The site is checked from a copy in a temporary folder (so it must be relocatable); a small script appended
to each copied page measures the layout after the charts have drawn. Needs Debian's chromium
(`apt-get install chromium`); where it is missing the check says so and exits 0 without checking.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from atlas_core.publish.site import absolute_paths  # noqa: E402

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--disable-quic", "--hide-scrollbars"]
WIDTHS = (1280, 390)
MIN_COLUMN_PX = 140  # a cell of >= 60 characters in a column narrower than this reads as a ribbon of short lines
PROBE = r"""<script>
window.addEventListener("load", () => setTimeout(() => {
  const r = {innerWidth: window.innerWidth, scrollWidth: document.documentElement.scrollWidth, narrow: [], charts: []};
  document.querySelectorAll("div[id^='atlas-chart-']").forEach(d => {
    const drawn = !!d.querySelector("svg, canvas") && !/chart error/i.test(d.textContent);
    r.charts.push({id: d.id, drawn: drawn});
  });
  document.querySelectorAll("article table").forEach((t, ti) => {
    t.querySelectorAll("th, td").forEach(c => {
      const w = c.getBoundingClientRect().width, text = c.innerText.trim();
      const word = Math.max(0, ...text.split(/\s+/).map(s => s.length));
      // squeezed: a long text in a narrow column (a tall ribbon of short lines), or a word broken across lines
      if (w > 0 && ((text.length >= 60 && w < MIN_PX) || w < 5.5 * word - 8))
        r.narrow.push({table: ti, text: text.slice(0, 40), width: Math.round(w)});
    });
  });
  if (r.scrollWidth > r.innerWidth + 1) {
    const wide = [...document.querySelectorAll("article *")].find(e => e.getBoundingClientRect().right > r.innerWidth + 1
                  && ![...e.children].some(k => k.getBoundingClientRect().right > r.innerWidth + 1));
    if (wide) r.widest = wide.tagName.toLowerCase() + "." + wide.className + ": " + (wide.textContent || "").trim().slice(0, 40);
  }
  const pre = document.createElement("pre");
  pre.id = "atlas-layout-check";
  pre.textContent = JSON.stringify(r);
  document.body.appendChild(pre);
  if (window.parent !== window) window.parent.postMessage(pre.textContent, "*");
}, 2500));
</script>""".replace("MIN_PX", str(MIN_COLUMN_PX))


def chromium(*args: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as prof:
        return subprocess.run(["chromium", *FLAGS, f"--user-data-dir={prof}", "--virtual-time-budget=20000", *args],
                              capture_output=True, text=True, timeout=180)


WINDOW_MIN = 500  # headless Chromium's narrowest window; narrower widths are an iframe of that width
FRAME = """<!doctype html><html><body style="margin:0"><iframe src="{src}" style="width:{w}px;height:2400px;border:0"></iframe>
<pre id="atlas-layout-check"></pre><script>window.addEventListener("message", e =>
document.getElementById("atlas-layout-check").textContent = e.data);</script></body></html>"""


def at_width(page: Path, width: int) -> Path:
    """The page itself, or a frame holding it `width` px wide (a phone) when the window cannot be that narrow."""
    if width >= WINDOW_MIN:
        return page
    frame = page.with_name(f".{page.stem}-{width}px.html")
    frame.write_text(FRAME.format(src=page.name, w=width))
    return frame


def measure(page: Path, width: int) -> dict:
    out = chromium(f"--window-size={max(width, WINDOW_MIN)},2400", "--dump-dom", at_width(page, width).as_uri()).stdout
    m = re.search(r'<pre id="atlas-layout-check">(.+?)</pre>', out, flags=re.S)
    if not m:
        return {"error": "the page did not finish loading"}
    return json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">"))


REDIRECT = re.compile(r'<meta http-equiv="Refresh" content="0; url=([^"]+)"', re.I)


def pages(site: Path) -> list[Path]:
    """The site's pages; a redirect stub (Jupyter Book's index.html) is not a page: its target is one."""
    return sorted(p for p in [site / "index.html", *(site / "book").rglob("*.html")]
                  if p.exists() and not REDIRECT.search(p.read_text()[:500]))


def broken_redirects(site: Path) -> list[str]:
    """Redirect stubs whose target page does not exist in the site."""
    out = []
    for p in site.rglob("*.html"):
        m = REDIRECT.search(p.read_text(errors="replace")[:500])
        if m and not (p.parent / m.group(1)).exists():
            out.append(f"{p.relative_to(site).as_posix()} -> {m.group(1)}")
    return out


def check(html_dir: Path, shots: Path | None) -> int:
    """Number of problems found (0: the book reads well at both widths)."""
    problems = 0
    with tempfile.TemporaryDirectory(prefix="atlas-site-") as tmp:
        site = Path(tmp) / "site"
        shutil.copytree(html_dir, site)  # relocated: every link and asset must be relative
        for stub in broken_redirects(site):
            print(f"redirect to a missing page: {stub}")
            problems += 1
        for page in pages(site):
            name = page.relative_to(site).as_posix()
            html = page.read_text()
            leaked = absolute_paths(html)
            page.write_text(html.replace("</body>", PROBE + "</body>"))
            notes = [f"absolute paths: {', '.join(leaked[:3])}"] if leaked else []
            problems += bool(leaked)
            for width in WIDTHS:
                r = measure(page, width)
                if "error" in r:
                    notes.append(f"{width}px: {r['error']}")
                    problems += 1
                    continue
                undrawn = [c["id"] for c in r["charts"] if not c["drawn"]]
                if undrawn:
                    notes.append(f"{width}px: {len(undrawn)}/{len(r['charts'])} charts did not draw")
                if r["scrollWidth"] > r["innerWidth"] + 1:
                    notes.append(f"{width}px: the text column scrolls sideways ({r['scrollWidth']} px of content; "
                                 f"{r.get('widest', '?')})")
                if r["narrow"]:
                    n = r["narrow"][0]
                    notes.append(f"{width}px: {len(r['narrow'])} table cells squeezed into a narrow column "
                                 f"(e.g. {n['text']!r} at {n['width']} px)")
                problems += bool(undrawn) + (r["scrollWidth"] > r["innerWidth"] + 1) + bool(r["narrow"])
                if shots:
                    shots.mkdir(parents=True, exist_ok=True)
                    page.write_text(html)  # the screenshot shows the page without the probe
                    chromium(f"--window-size={max(width, WINDOW_MIN)},2400",
                             f"--screenshot={shots / f'{page.stem}-{width}.png'}", at_width(page, width).as_uri())
                    page.write_text(html.replace("</body>", PROBE + "</body>"))
            charts = len(re.findall(r'id="atlas-chart-', html))
            print(f"{name}: {charts} charts; " + ("; ".join(notes) if notes else "ok at 1280 and 390 px"))
    return problems


def main(argv: list[str]) -> int:
    shots = Path(argv[argv.index("--screenshots") + 1]) if "--screenshots" in argv else None
    html = Path(argv[0]) if argv and not argv[0].startswith("--") else REPO / "_build" / "html"
    if not shutil.which("chromium"):
        print("[check-book] skipped: no chromium on this machine (Debian: apt-get install chromium)")
        return 0
    if not (html / "index.html").exists():
        print(f"[check-book] no built book at {html}: run `make book` first")
        return 2
    bad = check(html, shots)
    print(f"[check-book] {'ok' if not bad else f'{bad} problems'}" + (f"; screenshots in {shots}" if shots else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    os.environ.setdefault("LC_ALL", "C.UTF-8")
    sys.exit(main(sys.argv[1:]))
