"""Fault injection (issue 21): processes killed during a registry append, a notebook write and a sweep commit;
concurrent writers on one registry and one output directory. Afterwards every file parses and every completed
record is there. Each test prints its counts (run with -s): faults injected, records checked, records lost."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from atlas_core.cli import main
from atlas_core.evidence import registry
from atlas_core.publish import book

pytestmark = pytest.mark.faults
ROOT = Path(__file__).resolve().parent.parent


def _kill(p: subprocess.Popen) -> None:
    os.killpg(p.pid, signal.SIGKILL)
    p.wait(timeout=30)


def _report(name: str, faults: int, checked: int, lost: int) -> None:
    print(f"\n[faults] {name}: faults injected={faults} records checked={checked} records lost={lost}")


APPEND = """
import os, sys
from atlas_core.evidence import registry
tag, n, torn = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "torn"
for i in range(n):
    if torn and i == n - 1:  # a crash in the middle of this append: half the line written, then the process dies
        real = os.write
        os.write = lambda fd, b: (real(fd, b[: len(b) // 2]), os._exit(1))
    registry.append("fault", rid=f"{tag}-{i}", pad="x" * 200)
    print(f"{tag}-{i}", flush=True)  # acknowledged: append returned
"""


def test_registry_kills_torn_appends_and_concurrent_writers(tmp_path, monkeypatch):
    env = {"ATLAS_RESULTS": str(tmp_path)}
    monkeypatch.setenv("ATLAS_RESULTS", str(tmp_path))
    acked, faults = set(), 0
    for k in range(3):  # a crash mid-append (torn line), then the next writer must not glue onto it
        p = subprocess.run([sys.executable, "-c", APPEND, f"torn{k}", "5", "torn"], cwd=ROOT,
                           env={**os.environ, **env}, capture_output=True, text=True, timeout=120)
        acked |= set(p.stdout.split())
        faults += 1
    for k in range(3):  # SIGKILL at an arbitrary moment of a stream of appends
        p = subprocess.Popen([sys.executable, "-c", APPEND, f"kill{k}", "100000", "-"], cwd=ROOT,
                             env={**os.environ, **env}, stdout=subprocess.PIPE, text=True, start_new_session=True)
        for _ in range(50 + 37 * k):
            acked.add(p.stdout.readline().strip())
        _kill(p)
        faults += 1
    writers = [subprocess.Popen([sys.executable, "-c", APPEND, f"conc{w}", "300", "-"], cwd=ROOT,
                                env={**os.environ, **env}, stdout=subprocess.PIPE, text=True) for w in range(2)]
    for p in writers:  # two writers on one registry at once
        out, _ = p.communicate(timeout=300)
        acked |= set(out.split())
    faults += 1
    with pytest.warns(registry.RegistryWarning, match="skipped 3 bad line") as w:  # the three torn appends, each
        got = {r["rid"] for r in registry.read(kind="fault")}  # on its own line (never glued to the next record)
    assert str(w[0].message).count("not JSON") == 3
    lines = [x for x in (tmp_path / "registry.jsonl").read_bytes().split(b"\n") if x.strip()]
    assert len(lines) == len(got) + 3 and len(got) == len({json.loads(x)["rid"] for x in lines if x.endswith(b"}")})
    lost = acked - got
    assert not lost and {f"conc{w}-{i}" for w in range(2) for i in range(300)} <= got
    registry.append("after", ok=True)  # the file stays appendable
    with pytest.warns(registry.RegistryWarning):
        assert len(registry.read(kind="after")) == 1
    _report("registry", faults, len(lines), len(lost))


HEADER = "# ---\n# jupyter:\n#   kernelspec:\n#     display_name: Python 3\n#     language: python\n#     name: python3\n# ---\n\n"
EXECUTE = """
import sys
from pathlib import Path
from atlas_core.publish import book
book.execute(Path(sys.argv[1]), Path(sys.argv[2]), {})
"""


def test_killed_notebook_write_keeps_the_last_good_notebook(tmp_path):
    import nbformat

    ch, out = tmp_path / "09_slow.py", tmp_path / "executed" / "09_slow.ipynb"
    ch.write_text(HEADER + '# %% tags=["parameters"]\nx = 1\n\n# %%\nprint("good run", x)\n')
    book.execute(ch, out, {"x": 2})  # the last good notebook
    good = out.read_bytes()
    ch.write_text(HEADER + '# %% tags=["parameters"]\nx = 1\n\n# %%\nimport time\ntime.sleep(120)\n')
    p = subprocess.Popen([sys.executable, "-c", EXECUTE, str(ch), str(out)], cwd=ROOT, start_new_session=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    running = out.with_name(".09_slow.running.ipynb")
    t0 = time.time()
    while not running.exists() and time.time() - t0 < 120:  # papermill has started writing the new notebook
        time.sleep(0.2)
    time.sleep(1.0)
    _kill(p)
    assert running.exists() and out.read_bytes() == good
    nb = nbformat.read(out, 4)
    assert "good run 2" in json.dumps(nb.cells[-1].outputs)
    _report("notebook", 1, 1, 0)


SWEEP = """
import itertools, sys
from atlas_core import load, tasks
from atlas_core.engine.interventions import layer_sweep
from atlas_core.engine.sweep import Cache, sweep
s = load("tiny-llama")
items, _ = tasks.validate(tasks.load_items("ioi")[:6], s.tokenizer)
units = layer_sweep(["block", "attn", "mlp"], ["zero", "mean", "resample"], s.arch.n_layers, s.arch)
for seed in itertools.count():
    sweep(s, items, units, seed=seed, cache=Cache(sys.argv[1]), progress=False)
    print(seed, flush=True)
"""


def _cache_rows(path: Path) -> int:
    with sqlite3.connect(path, timeout=60) as db:
        return db.execute("SELECT count(*) FROM results").fetchone()[0]


def test_killed_sweep_commits_lose_nothing_and_resume_identically(tmp_path):
    from atlas_core import load, tasks
    from atlas_core.engine.interventions import layer_sweep
    from atlas_core.engine.sweep import Cache, sweep

    db = tmp_path / "cache.sqlite"
    before, faults = 0, 0
    for k in range(2):  # SIGKILL while the sweep commits group after group
        p = subprocess.Popen([sys.executable, "-c", SWEEP, str(db)], cwd=ROOT, start_new_session=True,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        p.stdout.readline()  # seed 0 complete: now mid-way through later seeds
        time.sleep(0.3 + 0.4 * k)
        committed = _cache_rows(db)
        _kill(p)
        faults += 1
        after = _cache_rows(db)
        assert after >= committed >= before
        before = after
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        payloads = [json.loads(r[0]) for r in con.execute("SELECT payload FROM results")]
    s = load("tiny-llama")
    items, _ = tasks.validate(tasks.load_items("ioi")[:6], s.tokenizer)
    units = layer_sweep(["block", "attn", "mlp"], ["zero", "mean", "resample"], s.arch.n_layers, s.arch)
    resumed = sweep(s, items, units, seed=1, cache=Cache(db), progress=False)
    fresh = sweep(s, items, units, seed=1, cache=Cache(tmp_path / "fresh.sqlite"), progress=False)
    assert resumed.equals(fresh)
    _report("sweep cache", faults, len(payloads), 0)


HOLD = """
import sys
from atlas_core import paths
with paths.locked(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.read()
"""


def test_two_runs_on_one_output_directory(tmp_path, capsys, monkeypatch):
    import pandas as pd

    monkeypatch.setenv("ATLAS_CACHE", str(tmp_path / "cache.sqlite"))
    out = tmp_path / "out"
    args = ["map", "--model", "tiny-llama", "--families", "ioi", "--components", "block", "--methods", "zero",
            "--seeds", "42", "--prompts-per-family", "2", "--no-heads", "--positions", "", "--no-progress", "--out", str(out)]
    other = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], cwd=ROOT, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    assert other.stdout.readline().strip() == "held"
    assert main(args) == 2
    assert "another run is writing" in capsys.readouterr().err
    other.communicate("", timeout=60)
    assert main(args) == 0
    doc = json.loads((out / "atlas.json").read_text())
    rows = pd.read_parquet(out / "rows.parquet")
    assert doc["schema"].startswith("mi-atlas/atlas@") and len(rows) > 0
    assert not list(out.glob("*.tmp"))
    _report("output directory", 1, 2, 0)
