"""Where the project's files live; found from this package's location, so any working directory works."""

from __future__ import annotations

import os
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
