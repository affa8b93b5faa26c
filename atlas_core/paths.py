"""Where the project's files live; found from this package's location, so any working directory works."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def data_dir() -> Path:
    return REPO / "data"


def results_dir() -> Path:
    """Results, caches and the run registry (ignored by git); override with $ATLAS_RESULTS."""
    return Path(os.environ.get("ATLAS_RESULTS", REPO / "results"))


def cache_path() -> Path:
    """The content-addressed sweep cache. Keys carry model fingerprint, items, unit and engine version, so
    one cache is safely shared by every checkout; override with $ATLAS_CACHE."""
    return Path(os.environ.get("ATLAS_CACHE", Path.home() / ".cache" / "mi-atlas" / "sweep-cache.sqlite"))


def content_key(*parts, digest_size: int = 16) -> str:
    """Hex key of the JSON of `parts` (sorted keys): the one way a cache entry is named (sweep results: 32 hex
    digits; adapter folders and their evaluations: 16)."""
    return hashlib.blake2b(json.dumps(parts, sort_keys=True, default=str).encode(), digest_size=digest_size).hexdigest()


def read_json(path: Path) -> dict:
    """A JSON file's content; {} when it is missing or unreadable (a cache miss)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def write_json_atomic(path: Path, obj, sort_keys: bool = False) -> Path:
    """Write JSON to a temporary file beside `path` and rename it over `path`: readers see the whole file or
    none, and a crash never leaves a half-written one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, default=str, indent=1, sort_keys=sort_keys)
    os.replace(tmp, path)
    return path


def writable_dir(out: str | Path) -> Path:
    """`out`, created if missing, after checking that a file can be written there (before any compute);
    a one-line ValueError when a file is in the way or the directory is not writable."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output directory {out} is a file: remove it or choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=out).close()
    except OSError as err:
        raise ValueError(f"output directory {out} is not writable ({err.strerror or err}): choose another --out") from None
    return out


_HELD: set[Path] = set()  # output directories this process holds: `locked` is re-entrant within a process


@contextmanager
def locked(out: str | Path, reentrant: bool = False) -> Iterator[Path]:
    """Hold `out/.atlas.lock` for the block, so two runs never write one output directory at once; a second run
    gets a one-line ValueError instead of waiting. `reentrant`: pass through when this process already holds
    it (the CLI holds it around `map_atlas`, which takes it again to save). The lock goes with the process (a
    killed run leaves none)."""
    out = writable_dir(out)
    key = out.resolve()
    if reentrant and key in _HELD:
        yield out
        return
    fd = os.open(out / ".atlas.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ValueError(f"another run is writing {out} (it holds {out / '.atlas.lock'}): wait for it to finish "
                         "or choose another --out") from None
    _HELD.add(key)
    try:
        yield out
    finally:
        _HELD.discard(key)
        os.close(fd)
