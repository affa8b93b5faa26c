# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 90 · What happens when …
#
# … the input is wrong, a run is interrupted, two runs write the same place, a file is torn, or a chapter
# fails. Every example below is executed when the book is built, on the tiny random model in a scratch
# directory (your results and caches are not touched), so what you read is what the code does today.

# %% tags=["parameters"]
model = None
profile = "smoke"
seeds = None
results_dir = None  # unused: this page works in a scratch directory
remote = False  # unused: the examples run locally on tiny-llama

# %% tags=["remove-cell"]
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pandas as pd

from atlas_core import paths
from atlas_core.cli import run as cli_run
from atlas_core.evidence import registry

with warnings.catch_warnings():  # tqdm's notebook-widget warning, once, here rather than in a result below
    warnings.simplefilter("ignore")
    from atlas_core.engine.sweep import Cache

scratch = Path(tempfile.mkdtemp(prefix="atlas-what-happens-"))
MAP = ["map", "--model", "tiny-llama", "--families", "ioi,antonyms", "--components", "block,mlp", "--methods",
       "zero,mean", "--seeds", "1", "--prompts-per-family", "4", "--no-heads", "--positions", "", "--no-progress"]


# %% [markdown]
# ## … the input is wrong
# One line that says what was wrong and what is allowed, exit code 2, and nothing computed. (`--debug` or
# `ATLAS_DEBUG=1` shows the traceback.)

# %%
# NBVAL_CHECK_OUTPUT
bad = {"no families": ["--families", ""], "a seed twice": ["--seeds", "42,42"], "no prompts": ["--prompts-per-family", "0"],
       "an unknown family": ["--families", "ioi,poetry"], "an unknown dtype": ["--dtype", "float8"]}
rows = []
for what, args in bad.items():
    code, line = cli_run(*MAP, "--out", str(scratch / "bad"), *args)
    rows.append({"input": what, "exit": code, "message": line})
with pd.option_context("display.max_colwidth", None):
    print(pd.DataFrame(rows).to_string(index=False))

# %% [markdown]
# ## … a run is interrupted
# `atlas map` commits every (prompt batch, unit) result to the sweep cache as it goes. We start a run, stop it
# with Ctrl-C (SIGINT) as soon as its first results are committed, then run the same command again: it computes
# only what is missing, and its table equals an uninterrupted run's.

# %%
env = {**os.environ, "ATLAS_CACHE": str(scratch / "cache.sqlite"), "ATLAS_RESULTS": str(scratch / "results")}
cmd = [sys.executable, "-m", "atlas_core.cli", *MAP]


cache = Cache(scratch / "cache.sqlite")  # a reader beside the run's writer (SQLite WAL)
p = subprocess.Popen([*cmd, "--out", str(scratch / "run")], env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
while len(cache) == 0 and p.poll() is None:
    time.sleep(0.05)
p.send_signal(signal.SIGINT)
_, err = p.communicate()
print(f"interrupted: exit {p.returncode}, {len(cache)} cache rows committed (results and batch baselines)")
print("  " + [x for x in err.splitlines() if x.strip()][-1].replace(str(scratch), "<scratch>"))
again = subprocess.run([*cmd, "--out", str(scratch / "run")], env=env, capture_output=True, text=True)
print("resumed:", next(x for x in again.stdout.splitlines() if x.startswith("units")))
fresh = subprocess.run([*cmd, "--out", str(scratch / "fresh")], capture_output=True, text=True,
                       env={**env, "ATLAS_CACHE": str(scratch / "fresh-cache.sqlite")})
a, b = (pd.read_parquet(scratch / d / "rows.parquet") for d in ("run", "fresh"))
print("resumed table == uninterrupted table:", a.drop(columns="split", errors="ignore").equals(b.drop(columns="split", errors="ignore")))

# %% [markdown]
# ## … two runs write the same output directory
# A run holds `<out>/.atlas.lock` while it writes; a second one is refused at once instead of racing it.

# %%
# NBVAL_CHECK_OUTPUT
with paths.locked(scratch / "busy"):  # another run holds the directory
    code, line = cli_run(*MAP, "--out", str(scratch / "busy"))
print(f"exit {code}: {line.replace(str(scratch), '<scratch>')}")

# %% [markdown]
# ## … the run registry has a torn line
# A process killed mid-append can leave half a line. The next append starts on a fresh line, and a reader
# skips what it cannot parse and says so, instead of crashing (chapter 00 reads this file).

# %%
# NBVAL_CHECK_OUTPUT
os.environ["ATLAS_RESULTS"] = str(scratch / "registry")
try:
    registry.append("note", text="first")
    with registry.registry_path().open("a") as f:
        f.write(json.dumps({"kind": "note", "text": "torn"})[:20])  # a writer died here
    registry.append("note", text="after the crash")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        notes = [r["text"] for r in registry.read(kind="note")]
finally:
    del os.environ["ATLAS_RESULTS"]
print("records read:", notes)
print("warning:", str(caught[0].message).replace(str(scratch), "<scratch>") if caught else None)

# %% [markdown]
# ## … a chapter fails
# The build executes each chapter into a temporary notebook and replaces the last good one only on success;
# a failed run is kept beside it with its log, and the build names both.

# %%
import nbformat

from atlas_core.publish import book

good = scratch / "executed" / "99_demo.ipynb"
good.parent.mkdir(parents=True, exist_ok=True)
nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print('the last good run')")]), good)
broken = scratch / "99_demo.py"
broken.write_text("# %%\nraise ValueError('something went wrong in this chapter')\n")
try:
    book.execute(broken, good, {})
except book.ChapterFailed as err:
    print(str(err).replace(str(scratch), "<scratch>"))
print("last good notebook kept:", "the last good run" in good.read_text())
