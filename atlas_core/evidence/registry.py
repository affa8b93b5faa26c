"""Append-only JSONL registry of runs: what ran, with which parameters and fingerprints, where its tables are.

One record per line. An append is one `write` of the whole line under an exclusive lock, and starts a new
line first if a crashed writer left a torn last line, so concurrent writers never interleave and never glue
onto a broken record. A read holds a shared lock (it never sees half a record) and skips, with one warning,
every line that is not a whole JSON object with the fields its kind needs.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
import warnings
from pathlib import Path

from ..paths import results_dir

# fields every record has, and the fields its readers need per kind (claims.table, chapter 00)
BASE_FIELDS = ("kind", "time")
REQUIRED: dict[str, tuple[str, ...]] = {
    "claim": ("chapter", "statement", "metric", "counterfactual", "control", "evidence", "model", "profile"),
    "atlas": ("model", "fingerprint", "params"),
}


class RegistryWarning(UserWarning):
    """Bad lines were skipped while reading the registry."""


def registry_path() -> Path:
    return results_dir() / "registry.jsonl"


def append(kind: str, **record) -> dict:
    """Append one record (one locked write of one line, fsynced) and return it."""
    rec = {"kind": kind, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **record}
    line = (json.dumps(rec, sort_keys=True, default=str) + "\n").encode()
    path = registry_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":  # a torn last line (a writer died mid-append)
            line = b"\n" + line
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)  # releases the lock
    return rec


def _problem(line: bytes) -> tuple[dict | None, str]:
    """(record, '') or (None, what is wrong with the line)."""
    try:
        rec = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError:
        return None, "not UTF-8"
    except json.JSONDecodeError:
        return None, "not JSON (torn or edited)"
    if not isinstance(rec, dict):
        return None, f"a JSON {type(rec).__name__}, not an object"
    missing = [k for k in BASE_FIELDS + REQUIRED.get(rec.get("kind"), ()) if k not in rec]
    return (None, f"missing {', '.join(missing)}") if missing else (rec, "")


def read(**match) -> list[dict]:
    """All records whose fields equal `match` (e.g. kind="atlas", model="smollm2-135m"); a bad line is skipped and
    reported in one RegistryWarning (path, line numbers and what is wrong), never raised."""
    path = registry_path()
    if not path.exists():
        return []
    with path.open("rb") as f:
        fcntl.flock(f, fcntl.LOCK_SH)
        data = f.read()
    out, bad = [], []
    for i, line in enumerate(data.split(b"\n"), 1):
        if not line.strip():
            continue
        rec, why = _problem(line)
        if rec is None:
            bad.append(f"{i} ({why})")
        elif all(rec.get(k) == v for k, v in match.items()):
            out.append(rec)
    if bad:
        warnings.warn(f"registry {path}: skipped {len(bad)} bad line(s): line {'; line '.join(bad[:5])}"
                      f"{' …' if len(bad) > 5 else ''}", RegistryWarning, stacklevel=2)
    return out
