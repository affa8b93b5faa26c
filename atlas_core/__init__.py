"""MI-Atlas core: load a model, intervene on it, sweep, aggregate into an atlas, state claims.

    subject = load("smollm2-135m")
    units = layer_sweep(["block", "mlp"], ["zero", "mean"], subject.arch.n_layers, subject.arch)
    rows = sweep(subject, items, units)            # tidy per-prompt metrics, cached, resumable
    atlas = map_atlas(subject, seeds=(42, 137, 256))
"""

from .archmap import ArchMap, UnsupportedArchitecture
from .atlas import Atlas, diff, map_atlas
from .engine import Batch
from .interventions import Edit, Op, Site, Unit, head_sweep, layer_sweep
from .models import DEFAULT_MODEL, EMBEDDED
from .subject import ModelNotFound, Subject, load
from .sweep import Cache, sweep

__all__ = [
    "ArchMap", "Atlas", "Batch", "Cache", "DEFAULT_MODEL", "EMBEDDED", "Edit", "ModelNotFound", "Op", "Site",
    "Subject", "Unit", "UnsupportedArchitecture", "diff", "head_sweep", "layer_sweep", "load", "map_atlas", "sweep",
]
