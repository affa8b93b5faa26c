"""Graders run on simulated nulls: how often does a claim reach medium or high when nothing is there?

`python -m atlas_core.evidence.nulls [--reps 200]` prints the table the method page quotes. Each null keeps what a
real run has (item-level noise shared across layers, skewed effects, several families, seeds and methods)
and removes the one thing the claim asserts; a planted effect beside it shows the grader can still pass.
Every null runs the chapter's own claim builder (`hub_claim`, `agreement_claim`, `steering_claims` after
`grade` / `summary` / `knockout_table`, `lora_claims` after `compare`) on simulated tables; a repetition counts
when any claim it makes reaches the level.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from ..studies import adapters, steering
from ..studies.atlas import Atlas, agreement_claim, hub_claim
from .claims import Claim, criteria
from .stats import bootstrap_ci, sign_flip_p

RANK = {"none": 0, "low": 1, "medium": 2, "high": 3}


def null_rows(seed: int, n_layers: int = 8, n_families: int = 4, seeds=(42, 137, 256), n_items: int = 16,
              methods=("zero", "mean", "resample"), hub: int | None = None, effect: float = 0.0,
              shared_profile: bool = False) -> pd.DataFrame:
    """Per-item sweep rows of a model that flips every item and whose layers are exchangeable.

    hub/effect: add `effect` (a fraction of the clean logit difference) at one layer, for every method.
    shared_profile: every method sees the same random layer profile (methods agree, no layer special)."""
    rng = np.random.default_rng(seed)
    profile = rng.normal(0, 0.05, n_layers)
    recs = []
    for f in range(n_families):
        for s in seeds:
            for i in rng.choice(400, n_items, replace=False):
                clean = 1.0 + rng.lognormal(0, 0.5)
                item = rng.lognormal(-2.5, 0.5)  # how fragile this prompt is, under every ablation
                for m in methods:
                    own = profile if shared_profile else rng.normal(0, 0.05, n_layers)
                    for layer in range(n_layers):
                        frac = item * rng.lognormal(0, 0.5) + (own[layer] if shared_profile else 0.0)
                        frac += effect if layer == hub else 0.0
                        recs.append((s, f"fam{f}", f"fam{f}-{i}", m, layer, clean, -1.0, clean * frac,
                                     rng.lognormal(-2, 1)))
    df = pd.DataFrame(recs, columns=["seed", "family", "item_id", "method", "layer", "ld_clean", "ld_corrupt",
                                     "ld_drop", "kl"])
    return df.assign(component="block", head=-1, position="all", p_answer=0.0, top5_overlap=1.0)


def _atlas(rows: pd.DataFrame, n_layers: int) -> Atlas:
    return Atlas.from_rows(rows, "null", "null", n_layers, 1, n_boot=0)


def rates(grade_one: Callable[[int], str | Sequence[Claim]], reps: int) -> dict:
    """Share of repetitions graded >= medium and high. A builder that makes several claims per repetition (one per
    family, ...) counts a repetition when ANY of its claims gets there; beside it, the shares of single claims
    that reach medium or high and that meet their control criterion."""
    out = [grade_one(r) for r in range(reps)]
    levels = [np.array([RANK[c] for c in ([g] if isinstance(g, str) else [c.confidence for c in g])]) for g in out]
    res = {"reps": reps, "medium_or_high": float(np.mean([lv.max(initial=0) >= 2 for lv in levels])),
           "high": float(np.mean([lv.max(initial=0) >= 3 for lv in levels]))}
    if claims := [c for g in out if not isinstance(g, str) for c in g]:
        every = np.concatenate(levels)
        res |= {"claims": len(claims), "claim_medium_or_high": float((every >= 2).mean()),
                "claim_high": float((every >= 3).mean()),
                "claim_control": float(np.mean([criteria(c.evidence)["control"][0] is True for c in claims]))}
    return res


def hub_null(reps: int = 200, effect: float = 0.0, n_layers: int = 8) -> dict:
    """The hub claim when every layer is drawn from one distribution (effect > 0: one planted hub)."""
    return rates(lambda r: hub_claim(_atlas(null_rows(r, n_layers, hub=3, effect=effect), n_layers), "block").confidence, reps)


def agreement_null(reps: int = 200, shared: bool = False, n_layers: int = 8) -> dict:
    """The method-agreement claim when each method's layer profile is independent noise (shared: one profile)."""
    return rates(lambda r: agreement_claim(_atlas(null_rows(r, n_layers, shared_profile=shared), n_layers),
                                           "block").confidence, reps)


def comparison_null(reps: int = 200, n: int = 3, effect: float = 0.0, test: str = "sign-flip") -> dict:
    """A paired comparison over n replicates (seeds): "A beats B" graded from an exact sign-flip p-value, or,
    for contrast, from a bootstrap CI (what chapter 05 did before: its 3-seed CI is [min, max])."""
    def one(r: int) -> str:
        d = np.random.default_rng(r).normal(effect, 1.0, n)
        if test == "sign-flip":
            ev = {"p_value": sign_flip_p(d), "n_seeds": n, "seeds_replicated": int((d > 0).sum())}
        else:
            ev = {"ci_excludes_control": bool(bootstrap_ci(d, seed=r)[1] > 0), "n_seeds": n,
                  "seeds_replicated": int((d > 0).sum())}
        return Claim("A beats B", "metric", "A vs B", "B", ev).confidence

    out = rates(one, reps)
    rng = np.random.default_rng(0)
    if test == "sign-flip":
        out["control_passed"] = float(np.mean([sign_flip_p(rng.normal(effect, 1, n)) <= 0.05 for _ in range(reps)]))
    else:
        out["control_passed"] = float(np.mean([bootstrap_ci(rng.normal(effect, 1, n), seed=i)[1] > 0 for i in range(reps)]))
    return out


# chapter 04 at the default profile's sizes: 8 selection + 8 held-out prompts per target, every one of SmolLM2's 30
# layers x 8 strengths screened (60 (layer, sign) candidates), 10 random + 20 shuffled-label controls at ±0.4 (20
# draws: the empirical p the claims also use can reach 1/21 < 0.05), the first 2 of each kind screened over the 30
# layers at ±0.4 (the same 60 candidates)
STEER_ALPHAS = (-0.8, -0.4, -0.2, -0.1, 0.1, 0.2, 0.4, 0.8)


def steering_study(seed: int, effect: float = 0.0, direction_sd: float = 0.0,
                   families: Sequence[str] = ("ioi", "antonyms", "factual_recall"),
                   concept: str = "sentiment", n: int = 8, n_layers: int = 30, n_random: int = 10, n_shuffled: int = 20,
                   n_screen_controls: int = 2, alpha: float = 0.4) -> tuple[steering.Study, pd.DataFrame]:
    """A chapter-04 `Study` and knockout table where each target's contrastive direction is one more draw of its
    controls' distribution. Effect of a direction at a layer on a prompt: α · s_i · (b + ε), s_i the prompt's
    clean − corrupt gap (shared by every direction), ε ~ N(0, 1) per (direction, layer, prompt), b ~ N(0,
    direction_sd) the direction's own mean at that layer, the same on every prompt (selection, held-out, other
    families'). Families are solved (testable). effect > 0: the real direction gains `effect` on its own target's
    prompts at the middle layer (so it is selective there).

    Only what `summary` and `steering_claims` read is simulated: the screens as per-cell means on the selection
    prompts (the real direction's over layers x `STEER_ALPHAS`, the first `n_screen_controls` controls of each kind
    over layers x ±`alpha`), the held-out rows of the real direction's chosen (layer, sign) at ±`alpha` (the largest
    control strength) with every control at that cell and each screened control at its own chosen cell, and the
    knockout rows at +`alpha`; `grade`, `best_layers`, `choose`, `summary` and `knockout_table` are the chapter's."""
    rng = np.random.default_rng(seed)
    targets = {**dict.fromkeys(families, 1), concept: -1}
    kinds = [("real", 0), *(("random", i) for i in range(n_random)), *(("shuffled", i) for i in range(n_shuffled))]
    screened = [j for j, (k, i) in enumerate(kinds) if k != "real" and i < n_screen_controls]
    b = rng.normal(0, direction_sd, (len(targets), len(kinds), n_layers))
    own = b.copy()
    own[:, 0, n_layers // 2] += effect
    sel_gap, gap = ({t: 0.5 + rng.lognormal(0, 0.5, n) for t in targets} for _ in range(2))  # selection, held-out prompts
    lay, ca = np.arange(n_layers), (-alpha, alpha)
    screen, cscreen, cbest, graded, ko = [], [], [], [], []
    for ti, (t, sgn) in enumerate(targets.items()):
        # mean effect per unit α on the selection prompts, (direction, layer); held-out noise per (direction, layer, prompt)
        m = (sel_gap[t] * (own[ti][..., None] + rng.normal(0, 1, (len(kinds), n_layers, n)))).mean(-1)
        eps = rng.normal(0, 1, (len(kinds), n_layers, n))
        screen.append(pd.DataFrame({"family": t, "layer": np.repeat(lay, len(STEER_ALPHAS)),
                                    "alpha": np.tile(STEER_ALPHAS, n_layers), "effect": np.outer(m[0], STEER_ALPHAS).ravel()}))
        cscreen += [pd.DataFrame({"family": t, "kind": kinds[j][0], "idx": kinds[j][1], "layer": np.repeat(lay, 2),
                                  "alpha": np.tile(ca, n_layers), "effect": np.outer(m[j], ca).ravel()}) for j in screened]
        (L, s), = steering.choose(steering.best_layers(screen[-1]))[["layer", "sign"]].to_numpy()
        by = ("family", "kind", "idx")
        cbest.append(cb := steering.choose(steering.best_layers(pd.concat(cscreen[-len(screened):]), by), by))
        cells = {(j, L, s * alpha) for j in range(len(kinds))}  # every direction at the real one's cell, ...
        cells |= {(kinds.index((c.kind, c.idx)), c.layer, c.sign * alpha) for c in cb.itertuples()}  # ... screened at own
        j, Lc, a = (np.array(x) for x in zip(*sorted(cells), strict=True))
        meta = pd.DataFrame({"unit": [f"{t}|{kinds[i][0]}|{kinds[i][1]}|{x}|{y}" for i, x, y in zip(j, Lc, a, strict=True)],
                             "target": t, "kind": [kinds[i][0] for i in j], "idx": [kinds[i][1] for i in j], "layer": Lc,
                             "alpha": a})
        e = a[:, None] * gap[t] * (own[ti, j, Lc][:, None] + eps[j, Lc])  # (cell, prompt)
        rows = pd.DataFrame({"family": t, "item_id": np.tile([f"{t}-{i}" for i in range(n)], len(j)),
                             "unit": np.repeat(meta["unit"], n), "layer": 0, "alpha": 0.0,  # layer, α: from meta
                             "ld_drop": sgn * e.ravel(), "kl": 0.01})
        graded.append(steering.effects(rows, meta, sgn))
        if sgn == 1:  # knockout: +α along the family's direction at its best +α layer, every family's held-out prompts
            Lk = int(steering.best_layers(screen[-1]).query("sign == 1")["layer"].iloc[0])
            for g in families:
                x = alpha * gap[g] * ((own[ti, 0, Lk] + eps[0, Lk]) if g == t else (b[ti, 0, Lk] + rng.normal(0, 1, n)))
                ko.append(pd.DataFrame({"target": t, "family": g, "layer": Lk, "alpha": alpha, "ld_drop": x,
                                        "ld_clean": gap[g] / 2, "ld_corrupt": -gap[g] / 2, "kl": 0.01}))
    per_prompt = pd.concat(graded, ignore_index=True)
    screen, cbest = pd.concat(screen, ignore_index=True), pd.concat(cbest, ignore_index=True)
    solved = pd.DataFrame({"family": list(families), "n_items": 2 * n, "n_flipped": 2 * n, "flip_rate": 1.0,
                           "flip_lo": 0.8, "flip_hi": 1.0, "testable": True})
    st = steering.Study({}, targets, {t: steering.Split(t, [], [], []) for t in targets}, screen,
                        steering.grade(per_prompt, control_best=cbest), steering.best_layers(screen), per_prompt, solved,
                        pd.concat(cscreen, ignore_index=True), cbest)
    kt = steering.knockout_table(pd.concat(ko, ignore_index=True))  # + the columns `knockout` adds (families solved)
    return st, kt.assign(mode="project", n_candidates=n_layers, testable=kt["n_off"] > 0, untestable_why="", held_out=True)


def steering_null(reps: int = 200, effect: float = 0.0, direction_sd: float = 0.0, **kw) -> dict:
    """Every claim `steering_claims` makes (steering per target, knockout per family) on `steering_study`."""
    def one(r: int) -> list[Claim]:
        st, ko = steering_study(r, effect, direction_sd, **kw)
        return steering.steering_claims(steering.summary(st, kw.get("n_layers", 30)), ko, model="null", profile="null")

    return rates(one, reps)


LORA_CONTROLS = ("random", "depth-matched", "wrong-family", "all-linear")


def lora_head(seed: int, n_seeds: int = 3, effect: float = 0.0,
              families: Sequence[str] = ("json_schema", "factual_recall", "code_semantics"),
              k: int = 6, layer_params: int = 100_000, n_layers: int = 30,
              beats: Sequence[str] = LORA_CONTROLS) -> pd.DataFrame:
    """Chapter 05's headline grid (eval loss per family x {atlas, random, depth-matched, wrong-family, all-linear} x
    seed, trainable parameters, each at its chosen learning rate) when the atlas's layers train no better than its
    controls: loss = family level + seed shift (shared by every strategy: same data order and step count) + run
    noise, whose atlas − control difference has sd 1 per seed. effect > 0: the atlas's runs lower by `effect` sd
    than the controls in `beats` (the others get the same gain: the atlas does not beat them). Random and
    depth-matched within ±4% of the atlas's parameters, wrong-family k layers, all-linear every layer."""
    rng = np.random.default_rng(seed)
    rows = []
    for f in families:
        level = 2 + rng.lognormal(0, 0.5)
        for s in range(n_seeds):
            shift = rng.normal(0, 0.5)
            params = {"atlas": k * layer_params, "wrong-family": k * layer_params, "all-linear": n_layers * layer_params,
                      **{c: round(k * layer_params * (1 + rng.uniform(-0.04, 0.04))) for c in ("random", "depth-matched")}}
            for st in ("atlas", *LORA_CONTROLS):
                gain = effect if st == "atlas" or st not in beats else 0.0
                rows.append({"family": f, "strategy": st, "seed": s, "n_trainable": params[st], "lr": 1e-3,
                             "eval_loss": level + shift + rng.normal(0, 0.5 ** 0.5) - gain,
                             "exact_match": rng.uniform(), "basis": "ld_frac" if st.startswith("atlas") else ""})
    return pd.DataFrame(rows)


def lora_null(reps: int = 200, n_seeds: int = 3, effect: float = 0.0, n_layers: int = 30, **kw) -> dict:
    """Every claim `lora_claims` makes ("the atlas wins" per family against every control, learning rates searched
    per family over 4 rates so nothing caps the verdict, and the per-layer norm/effect claim on a map with no
    association over `n_layers` layers) from `compare` on `lora_head`."""
    def one(r: int) -> list[Claim]:
        head = lora_head(r, n_seeds, effect, n_layers=n_layers, **kw)
        fams = list(dict.fromkeys(head["family"]))
        targets = pd.DataFrame({"family": fams, "metric": "ld_frac", "basis": "ld_frac", "why": ""}).set_index("family")
        lrs = pd.DataFrame([{"family": f, "strategy": st, "lr": 1e-3, "n_lrs": 4, "n_search_seeds": 1}
                            for f in fams for st in ("atlas", *LORA_CONTROLS)])
        rng = np.random.default_rng([r, 1])
        norm = adapters.norm_effect(pd.DataFrame({"norm": rng.lognormal(0, 1, n_layers), "effect": rng.normal(0, 1, n_layers)}))
        return adapters.lora_claims(adapters.compare(head), norm, targets, kw.get("k", 6), lrs=lrs)

    return rates(one, reps)


def table(reps: int = 200) -> pd.DataFrame:
    """Every grader on its null (and one planted effect each), one row per case."""
    rows = [
        ("hub (ch 02)", "all layers exchangeable", hub_null(reps)),
        ("hub (ch 02)", "planted hub, +0.1 of clean LD", hub_null(reps, effect=0.1)),
        ("method agreement (ch 02)", "independent method profiles", agreement_null(reps)),
        ("method agreement (ch 02)", "one shared profile", agreement_null(reps, shared=True)),
        ("steering + knockout (ch 04)", "real direction = a control draw, prompt noise only", steering_null(reps)),
        ("steering + knockout (ch 04)", "+ per-direction layer means, sd 0.5", steering_null(reps, direction_sd=0.5)),
        ("steering + knockout (ch 04)", "+ per-direction layer means, sd 1", steering_null(reps, direction_sd=1.0)),
        ("steering + knockout (ch 04)", "planted +2 on own prompts, one layer", steering_null(reps, effect=2.0)),
        ("atlas wins LoRA, 3 seeds (ch 05 default)", "no difference", lora_null(reps, 3)),
        ("atlas wins LoRA, 5 seeds", "no difference", lora_null(reps, 5)),
        ("atlas wins LoRA, 8 seeds (ch 05 full)", "no difference", lora_null(reps, 8)),
        ("atlas wins LoRA, 8 seeds", "atlas lower by 1.5 sd than random only", lora_null(reps, 8, 1.5, beats=["random"])),
        ("atlas wins LoRA, 8 seeds", "atlas lower by 1.5 sd than all but depth-matched",
         lora_null(reps, 8, 1.5, beats=["random", "wrong-family", "all-linear"])),
        ("atlas wins LoRA, 8 seeds", "planted: atlas lower by 1.5 sd than every control", lora_null(reps, 8, effect=1.5)),
        ("3-seed bootstrap CI (before)", "no difference", comparison_null(reps, 3, test="bootstrap")),
    ]
    return pd.DataFrame([{"grader": g, "null": n, **r} for g, n, r in rows])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=200)
    a = p.parse_args(argv)
    print(table(a.reps).to_string(index=False))


if __name__ == "__main__":
    main()
