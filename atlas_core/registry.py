"""Append-only JSONL registry of runs: what ran, with which parameters and fingerprints, where its tables are."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from .paths import results_dir


def registry_path() -> Path:
    return results_dir() / "registry.jsonl"


def append(kind: str, **record) -> dict:
    """Append one record (a single write of one line, flushed and fsynced) and return it."""
    rec = {"kind": kind, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **record}
    line = json.dumps(rec, sort_keys=True, default=str) + "\n"
    path = registry_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())
    return rec


def read(**match) -> list[dict]:
    """All records whose fields equal `match` (e.g. kind="atlas", model="smollm2-135m"); unreadable lines skipped."""
    path = registry_path()
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if all(rec.get(k) == v for k, v in match.items()):
            out.append(rec)
    return out
