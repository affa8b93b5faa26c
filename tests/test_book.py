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


def test_partial_rebuild_says_what_it_shows_before_any_compute(tmp_path, monkeypatch, capsys):
    """--chapters: chapters never executed are named before the first chapter runs and become placeholder
    pages that say how to fill them; the results directory reaches kernels by environment, not as a parameter."""
    executed = tmp_path / "executed"
    monkeypatch.setattr(book, "EXECUTED", executed)
    monkeypatch.setattr(book, "STATIC", tmp_path / "static")
    seen = []

    def fake_execute(chapter, out, params, progress=False):
        seen.append((chapter.stem[:2], dict(params), capsys.readouterr().out))
        book.placeholder(chapter, out, book.run_of(params))  # stands in for an executed notebook
        nb = nbformat.read(out, 4)
        nb.metadata.pop("atlas_placeholder")
        nb.metadata["atlas_run"] = book.run_of(params)
        nbformat.write(nb, out)
        return 0.0

    monkeypatch.setattr(book, "execute", fake_execute)
    monkeypatch.setattr(book.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 0, "", ""))
    monkeypatch.setattr(book, "REPO", tmp_path)  # _toc.yml is written here, not into the checkout
    book.build(None, "smoke", None, only=["03"], results_dir=str(tmp_path / "res"))
    assert [s[0] for s in seen] == ["03"]
    assert "results_dir" not in seen[0][1] and os.environ["ATLAS_RESULTS"] == str((tmp_path / "res").resolve())
    early = seen[0][2]
    others = [c.stem for c in book.chapters() if not c.stem.startswith("03")]
    assert "placeholder" in early and all(s in early for s in others)
    for s in others:
        page = executed / f"{s}.ipynb"
        assert book.executed_run(page) is None and "CHAPTERS=" in nbformat.read(page, 4).cells[0].source
    ch03 = next(c.stem for c in book.chapters() if c.stem.startswith("03"))
    assert book.executed_run(executed / f"{ch03}.ipynb")["model"] == "tiny-llama"
    # a second partial build names the chapter executed for another profile
    capsys.readouterr()
    seen.clear()
    book.build(None, "default", None, only=["01"], results_dir=str(tmp_path / "res"))
    assert "another model or profile" in seen[0][2] and "tiny-llama" in seen[0][2]


def test_unknown_chapter_is_refused_before_anything_runs(monkeypatch):
    monkeypatch.setattr(book, "execute", lambda *a, **k: (_ for _ in ()).throw(AssertionError("ran")))
    import pytest

    with pytest.raises(ValueError, match="no chapter"):
        book.build(None, "smoke", None, only=["77"])


def test_pages_print_no_path_of_the_building_machine():
    import sysconfig

    warn = f"{sysconfig.get_paths()['purelib']}/pandas/core/nanops.py:1: RuntimeWarning: Mean of empty slice"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x", outputs=[
        nbformat.v4.new_output("stream", name="stderr", text=warn),
        nbformat.v4.new_output("execute_result", data={"text/plain": f"{book.REPO}/results/atlas.json"})])])
    out = book.scrub(nb).cells[0].outputs
    assert out[0]["text"] == "site-packages/pandas/core/nanops.py:1: RuntimeWarning: Mean of empty slice"
    assert out[1]["data"]["text/plain"] == "./results/atlas.json"


def test_published_site_works_from_a_copied_folder_with_its_charts_drawn(tmp_path, capsys):
    """A one-chart book, built, published and opened from another folder in headless Chromium at 1280 and 390 px:
    nothing remote, nothing absolute, the chart drawn, nothing scrolling sideways."""
    import shutil

    import altair as alt
    import pandas as pd
    import pytest

    from atlas_core.publish import charts, site

    if not shutil.which("chromium"):
        pytest.skip("no chromium on this machine (Debian: apt-get install chromium)")
    sys.path.insert(0, str(book.REPO / "book"))
    import check_render

    src = tmp_path / "src"
    (src / "book" / "executed").mkdir(parents=True)
    shutil.copy(book.REPO / "_config.yml", src / "_config.yml")
    (src / "_toc.yml").write_text("format: jb-book\nroot: book/executed/page\n")
    charts.write_bundle(src / "_static")
    shutil.copy(book.REPO / "_static" / "atlas.css", src / "_static" / "atlas.css")
    spec = alt.Chart(pd.DataFrame({"layer": range(30), "v": range(30)})).mark_bar().encode(x="layer:O", y="v:Q")
    out = charts._render(spec.properties(width=520).to_dict())
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# A page\n\nOne chart."),
                                         nbformat.v4.new_code_cell("chart", outputs=[
                                             nbformat.v4.new_output("display_data", data=out)])])
    nbformat.write(nb, src / "book" / "executed" / "page.ipynb")
    r = subprocess.run([str(Path(sys.executable).parent / "jupyter-book"), "build", str(src)], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:]
    dest = site.publish(src / "_build" / "html", tmp_path / "published" / "site")
    shutil.rmtree(src)  # the published copy must not reach back into the build
    assert check_render.check(dest, None) == 0, capsys.readouterr().out
    assert "1 charts; ok at 1280 and 390 px" in capsys.readouterr().out


def test_chapters_say_their_expected_time(tmp_path, monkeypatch):
    """The expected time printed at the top of a chapter is what bench/book.py last measured, or says it was not
    benchmarked; every chapter passes its number so it prints it."""
    import json

    from atlas_core import profiles

    monkeypatch.setattr(profiles, "EXPECTED", tmp_path / "expected.json")
    assert "not benchmarked" in profiles.expected_line("02", "default")
    (tmp_path / "expected.json").write_text(json.dumps({"default": {"02": {"cold_s": 600, "warm_s": 90, "cpus": 2,
                                                                           "when": "2026-12-04"}}}))
    line = profiles.expected_line("02", "default")
    assert "~10.0 min cold" in line and "~1.5 min warm" in line and "2 CPUs" in line
    assert "not benchmarked" in profiles.expected_line("02", "smoke")
    for c in book.chapters():
        text = c.read_text()
        assert "chapter(model" not in text or f'number="{c.stem[:2]}"' in text, f"{c.name}: pass number= to chapter()"
