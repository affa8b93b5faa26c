"""The atlas: effects per (component, layer[, head], position, method, family, seed, split) with 95% CIs,
layer maps, the hub and its stability across families, seeds and methods; saved as a diffable `atlas.json`.

What it measures (see the method page). The headline metric is `ld_frac`: the fraction of the clean
answer-vs-distractor logit difference an ablation removes, on the items the model *flips* (clean LD > 0,
corrupt LD < 0), so families are on one normalized scale and only behaviour the model has is localized.
KL(clean || ablated) over the whole vocabulary stays beside it as a disruption measure. A family whose
flip rate does not pass `tasks.FLIP_GATE` is not testable: its KL map is shown, but no claim localizes it.
Every item is assigned once, by a hash of its id, to the `select` or the `test` split: a hub (a best layer
out of many) is chosen on `select` and tested on `test`, so its control is not graded on the prompts
that chose it.

atlas.json schema (`schema: "mi-atlas/atlas@2"`):
  model, fingerprint, n_layers, n_heads, families, seeds, methods, components, primary_metric
  effects: list of {component, layer, head (-1: whole component), position, method, family, seed, split, n,
            kl, kl_lo, kl_hi, ld_drop, ld_drop_lo, ld_drop_hi, n_solved, ld_frac, ld_frac_lo, ld_frac_hi,
            p_answer, top5_overlap, ld_clean, ld_frac_all, direct_drop, direct_frac, direct_frac_all,
            kl_neutral, specificity}
            (kl = mean KL(clean || intervened) over the cell's prompts; ld_drop = mean clean - intervened
            logit diff; ld_frac = mean drop / mean clean LD over the cell's flipped prompts, NaN if none;
            ld_frac_all = the same over all the cell's prompts (NaN unless the mean clean LD > 0); direct_* = the
            direct effect through the unembedding (`studies/direct.py`), NaN where undefined; kl_neutral = the
            unit's mean KL on length-matched neutral sentences (`tasks/neutral.py`), specificity = kl - kl_neutral,
            NaN for units not swept on neutral text (heads, single positions). Atlases saved before these columns load with
            them absent; the views that need them then show NaN.)
  solved: list of {family, n_items, n_flipped, flip_rate, flip_lo, flip_hi, testable}
  hub: {component, method, metric, layer, score, testable, family_agreement, family_top_layers, seed_hubs,
        seed_scores}
  method_agreement: list of {component, method_a, method_b, spearman, p_value}
  meta: free-form run parameters (no timings: the registry holds those)

Modules: `effects` (the effects table: cells, CIs, splits), `views` / `layers` / `hub` (what `Atlas` answers: layer
and head scores and the layer map; direct vs total, specificity, sink, item maps; the hub and method agreement),
`core` (`Atlas`, atlas.json, `diff`), `mapping` (the prompts and units, `map_atlas`, `screen_vs_exact`),
`claims` (`hub_claim`, `agreement_claim`).
"""

from .claims import agreement_claim, hub_claim
from .core import Atlas, diff
from .effects import KEYS, SCHEMA, SPLITS, split_of
from .mapping import atlas_items, atlas_units, item_pool, map_atlas, neutral_items, screen_vs_exact

__all__ = [
    "KEYS", "SCHEMA", "SPLITS", "Atlas", "agreement_claim", "atlas_items", "atlas_units", "diff", "hub_claim",
    "item_pool", "map_atlas", "neutral_items", "screen_vs_exact", "split_of",
]
