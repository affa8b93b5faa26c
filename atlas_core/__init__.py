"""MI-Atlas core: load a model, intervene on it, sweep, aggregate into an atlas, state claims, publish.

    subject = load("smollm2-135m")
    units = layer_sweep(["block", "mlp"], ["zero", "mean"], subject.arch.n_layers, subject.arch)
    rows = sweep(subject, items, units)            # tidy per-prompt metrics, cached, resumable
    atlas = map_atlas(subject, seeds=(42, 137, 256))

The pipeline, one folder per stage (`ls atlas_core` shows it):

    tasks/     the task suite: families, generators, the data on disk, baselines and the flip gate
    model/     the subject: where weights come from, the family's module names, the loaded model, tiny configs
    engine/    intervening: the vocabulary (Site, Op, Edit, Unit), the one nnsight trace (`tracing`), a prompt
               batch that applies units (`batch`), sweeps with a content-addressed cache, the attribution screen
    studies/   one study per chapter: the ablation atlas (+ direct effects), patching, steering, adapters (LoRA),
               sft (fine-tuning sweeps, formats, judged quality), compression (skipping, healing, quantization)
    evidence/  metrics, statistics, claims graded from their evidence, the run registry, graders on nulls,
               judges of generated answers and reference-free text measurements
    publish/   the book build (papermill + Jupyter Book), charts, the one-page summary
    cli.py     `atlas VERB`: one verb per chapter (map, tasks, patch, steer, lora, sft, compress, summary) and `book`
    paths.py, profiles.py   where files live; the sizes of a run (smoke, default, full), in one place

Data flows from a study to the engine and back: a study builds units, the engine sweeps them into tidy rows,
the study turns rows into tables and `Claim`s, `evidence` grades them, a chapter (chapters/NN_*.py) shows
them and `publish` renders the book. Imports follow the same order: `model`, `tasks.core` and `evidence`
(but `nulls`, which calibrates the studies' graders) are leaves; `engine` uses `model`; `studies` use the
engine; `publish` reads what the studies recorded. A new study goes in `studies/` (a module, or a package once
it passes ~400 lines), gets a chapter that only calls it (no functions in chapters), a verb in `cli.VERBS`,
and its sizes in `profiles.py`.
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
