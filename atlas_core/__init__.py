"""MI-Atlas core: load a model, intervene on it, sweep, aggregate into an atlas, state claims.

    subject = load("smollm2-135m")
    units = layer_sweep(["block", "mlp"], ["zero", "mean"], subject.arch.n_layers, subject.arch)
    rows = sweep(subject, items, units)            # tidy per-prompt metrics, cached, resumable
    atlas = map_atlas(subject, seeds=(42, 137, 256))
"""

from .engine.batch import Batch
from .engine.interventions import Edit, Op, Site, Unit, head_sweep, layer_sweep
from .engine.sweep import Cache, sweep
from .model.archmap import ArchMap, UnsupportedArchitecture
from .model.sources import DEFAULT_MODEL, EMBEDDED
from .model.subject import ModelNotFound, Subject, load
from .studies.atlas import Atlas, diff, map_atlas

__all__ = [
    "ArchMap", "Atlas", "Batch", "Cache", "DEFAULT_MODEL", "EMBEDDED", "Edit", "ModelNotFound", "Op", "Site",
    "Subject", "Unit", "UnsupportedArchitecture", "diff", "head_sweep", "layer_sweep", "load", "map_atlas", "sweep",
]
