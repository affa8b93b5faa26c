"""The book's chapters against their committed smoke-profile reference notebooks (nbval)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nbformat

from atlas_core.publish import book


def test_toc_lists_every_chapter():
    assert (book.REPO / "_toc.yml").read_text() == book.toc_text(), "run: python -m atlas_core.publish.book --write-toc"


def test_references_are_fresh():
    for c in book.chapters():
        ref = book.REFERENCES / f"{c.stem}.ipynb"
        assert ref.exists(), f"no reference for {c.name}: run `make references`"
        got = nbformat.read(ref, 4).metadata.get("atlas_source_sha")
        assert got == book.source_hash(c), f"{ref.name} is stale against {c.name}: run `make references`"


def test_chapters_reproduce_their_references(tmp_path):
    """nbval re-executes every reference (in execution order) and compares the cells marked NBVAL_CHECK_OUTPUT."""
    env = {**os.environ, "ATLAS_RESULTS": str(tmp_path / "results"), "ATLAS_CACHE": str(tmp_path / "cache.sqlite")}
    refs = [str(book.REFERENCES / f"{c.stem}.ipynb") for c in book.ordered(book.chapters())]
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "--nbval-lax", "-p", "no:cacheprovider", *refs],
                       cwd=book.REPO, env=env, capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, r.stdout[-4000:]


def test_book_builds_from_the_references(tmp_path):
    """The configuration, toc and prose pages build to HTML with the reference notebooks as chapters (seconds;
    the chapters themselves are executed by the nbval test above)."""
    import shutil

    for f in ("_config.yml", "_toc.yml", *(f"{p}.md" for p in book.PAGES)):
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(book.REPO / f, tmp_path / f)
    (tmp_path / "book" / "executed").mkdir(parents=True, exist_ok=True)
    for c in book.chapters():
        shutil.copy(book.REFERENCES / f"{c.stem}.ipynb", tmp_path / "book" / "executed" / f"{c.stem}.ipynb")
    r = subprocess.run([str(Path(sys.executable).parent / "jupyter-book"), "build", str(tmp_path), "--all"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    html = tmp_path / "_build" / "html"
    assert (html / "index.html").exists()
    for page in (c.stem for c in book.chapters()):
        assert (html / "book" / "executed" / f"{page}.html").exists(), page
    assert (html / "book" / "glossary.html").exists() and (html / "book" / "method.html").exists()
