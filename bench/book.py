"""Whole-book benchmark: each chapter executed cold (an empty sweep cache and results directory), then warm
(the same ones again), with wall time, units computed, adapters trained and the kernel's peak memory.

    .venv/bin/python bench/book.py --profile default            # every chapter, cold then warm
    .venv/bin/python bench/book.py --profile default --cold-only --chapters 01,03
    .venv/bin/python bench/book.py --profile smoke --chapters 01,02 --warm-only --cache ~/.cache/mi-atlas/sweep-cache.sqlite

The embedded models' converted weights are kept (setup, not book time). Each chapter runs in its own process
(its peak RSS is the kernel's); the table goes to stdout and bench/out/book-<profile>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from atlas_core.engine.sweep import Cache  # noqa: E402
from atlas_core.profiles import EXPECTED  # noqa: E402
from atlas_core.publish import book  # noqa: E402

CHILD = """
import json, resource, sys
from pathlib import Path
from atlas_core.publish import book
chapter, out, params = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3])
secs = book.execute(chapter, out, params)
print(json.dumps({"seconds": secs, "peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def adapters(results: Path) -> int:
    return sum(1 for _ in (results / "lora").rglob("atlas_meta.json")) if (results / "lora").exists() else 0


def run(chapter: Path, params: dict, cache: Path, results: Path, out: Path) -> dict:
    env = {**os.environ, "ATLAS_CACHE": str(cache), "ATLAS_RESULTS": str(results)}
    units0, lora0 = len(Cache(cache)), adapters(results)
    t0 = time.time()
    r = subprocess.run([sys.executable, "-c", CHILD, str(chapter), str(out / f"{chapter.stem}.ipynb"), json.dumps(params)],
                       env=env, capture_output=True, text=True, cwd=REPO)
    if r.returncode != 0:
        raise SystemExit(f"[bench] {chapter.stem} failed: {(r.stderr.strip().splitlines() or ['?'])[-1]}")
    got = json.loads(r.stdout.strip().splitlines()[-1])
    return {"chapter": chapter.stem, "wall_s": round(time.time() - t0, 1), "execute_s": round(got["seconds"], 1),
            "units_computed": len(Cache(cache)) - units0, "adapters_trained": adapters(results) - lora0,
            "peak_rss_mb": round(got["peak_rss_mb"])}


def record_expected(profile: str, rows: list[dict], model: str | None) -> None:
    """Merge this run's per-chapter times into bench/expected.json (what `profiles.expected_line` prints at the
    top of each chapter); only a run of the profile's own model counts."""
    if model:
        return
    data = json.loads(EXPECTED.read_text()) if EXPECTED.exists() else {}
    for r in rows:
        e = data.setdefault(profile, {}).setdefault(r["chapter"][:2], {})
        e[f"{r['phase']}_s"] = r["wall_s"]
        e.update(when=time.strftime("%Y-%m-%d"), cpus=os.cpu_count())
    EXPECTED.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="default")
    ap.add_argument("--model", default=None)
    ap.add_argument("--chapters", default=None, help="comma list, e.g. 01,02 (default: every chapter)")
    ap.add_argument("--warm-only", action="store_true", help="skip the cold pass (use --cache/--results to warm)")
    ap.add_argument("--cold-only", action="store_true", help="skip the warm pass")
    ap.add_argument("--cache", default=None, help="sweep cache (default: a fresh temporary one: cold)")
    ap.add_argument("--results", default=None, help="results directory (default: a fresh temporary one)")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="atlas-bench-book-"))
    cache, results = Path(a.cache or tmp / "cache.sqlite"), Path(a.results or tmp / "results")
    params = {"profile": a.profile, **({"model": a.model} if a.model else {})}
    todo = book.ordered([c for c in book.chapters() if not a.chapters or c.stem[:2] in a.chapters.split(",")])
    rows = []
    for phase in (["warm"] if a.warm_only else ["cold"] if a.cold_only else ["cold", "warm"]):
        for c in todo:
            r = {"phase": phase, **run(c, params, cache, results, tmp / phase)}
            rows.append(r)
            print(f"[bench] {phase} {r['chapter']}: {r['wall_s']:.0f} s, {r['units_computed']} units, "
                  f"{r['adapters_trained']} adapters, peak {r['peak_rss_mb']} MB", flush=True)
    out = REPO / "bench" / "out" / f"book-{a.profile}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"profile": a.profile, "model": params.get("model"), "rows": rows,
                               "when": time.strftime("%Y-%m-%d %H:%M"), "cpus": os.cpu_count()}, indent=1))
    record_expected(a.profile, rows, a.model)
    print("| phase | chapter | wall s | units computed | adapters trained | peak RSS MB |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['phase']} | {r['chapter']} | {r['wall_s']:.0f} | {r['units_computed']} | {r['adapters_trained']} | "
              f"{r['peak_rss_mb']} |")
    for phase in sorted({r["phase"] for r in rows}):
        print(f"{phase} total: {sum(r['wall_s'] for r in rows if r['phase'] == phase) / 60:.1f} min")


if __name__ == "__main__":
    main()
