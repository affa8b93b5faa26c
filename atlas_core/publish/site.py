"""Publish the built book as a static site that works from any folder or web server: every asset local (no
CDN), every link relative, no path of the machine that built it.

    make publish    # = python -m atlas_core.publish.site [_build/html] [_build/site], after `make book`
"""

from __future__ import annotations

import re
import shutil
import tarfile
import tempfile
from pathlib import Path

from ..paths import REPO

ASSET = re.compile(r'<(?:script|link|img|iframe|source)\b[^>]*?\b(?:src|href)="([^"]+)"', re.I)
LINK = re.compile(r'<a\b[^>]*?\bhref="([^"]+)"', re.I)


def absolute_paths(html: str) -> list[str]:
    """Paths of the building machine that leaked into a page (repository, home, temporary folders)."""
    roots = {str(REPO), str(Path.home()), tempfile.gettempdir(), "/tmp/", "/work/", "/root/", "/home/", "/Users/"}
    hits = []
    for root in sorted(r for r in roots if len(r) > 4):
        hits += [m.group(0)[:80] for m in re.finditer(r"(?<![\w/:.])" + re.escape(root) + r"[\w./-]*", html)]
    return sorted(set(hits))


def problems(page: Path, site: Path) -> list[str]:
    """What keeps one page from working out of a copied folder, offline."""
    html = page.read_text(errors="replace")
    out = [f"absolute path {p}" for p in absolute_paths(html)[:3]]
    for url in ASSET.findall(html):
        if re.match(r"(https?:)?//", url):
            out.append(f"remote asset {url[:80]}")
        elif url.startswith("/"):
            out.append(f"root-relative asset {url[:80]}")
        elif not url.startswith("data:") and not (page.parent / url.split("#")[0].split("?")[0]).exists():
            out.append(f"missing asset {url[:80]}")
    out += [f"root-relative link {u[:80]}" for u in LINK.findall(html) if u.startswith("/") and not u.startswith("//")]
    return out


def check(site: Path) -> dict[str, list[str]]:
    """Problems per page ({} when the site is relocatable and self-contained)."""
    found = {}
    for page in sorted(p for p in site.rglob("*.html") if "_static" not in p.parts):
        if p := problems(page, site):
            found[page.relative_to(site).as_posix()] = p
    return found


def publish(html: Path, dest: Path) -> Path:
    """Check the built site, copy it to `dest` and pack `dest`.tar.gz beside it; a one-line error if a page
    would not work from there."""
    if not (html / "index.html").exists():
        raise ValueError(f"no built book at {html}: run `make book` first")
    found = check(html)
    if found:
        page, what = next(iter(found.items()))
        raise ValueError(f"{len(found)} pages would not work when published, e.g. {page}: {what[0]}")
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(html, dest, ignore=shutil.ignore_patterns(".buildinfo", ".doctrees"))
    with tarfile.open(dest.with_suffix(".tar.gz"), "w:gz") as tar:
        tar.add(dest, arcname=dest.name)
    return dest


def main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m atlas_core.publish.site", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("html", nargs="?", default=str(REPO / "_build" / "html"), help="the built book")
    ap.add_argument("dest", nargs="?", default=str(REPO / "_build" / "site"), help="where the site goes")
    a = ap.parse_args(argv)
    try:
        dest = publish(Path(a.html), Path(a.dest))
    except ValueError as err:
        raise SystemExit(f"[publish] {err}") from None
    n = sum(1 for _ in dest.rglob("*.html"))
    print(f"[publish] {n} pages, self-contained and relocatable: {dest} (and {dest.with_suffix('.tar.gz').name});"
          " serve it from any folder or static host")


if __name__ == "__main__":
    main()
