"""The book's chapters against their committed smoke-profile reference notebooks (nbval)."""

from __future__ import annotations

import os
import subprocess
import sys

import nbformat

from atlas_core import book


def test_toc_lists_every_chapter():
    assert (book.REPO / "_toc.yml").read_text() == book.toc_text(), "run: python -m atlas_core.book --write-toc"


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
