# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 03 · Activation patching
#
# Ablation (chapter 02) says what a behaviour *needs*; patching says where the information that
# decides it *lives*. Each family has clean prompts and equal-length corrupt prompts whose answer is
# the distractor. **Denoising** runs the corrupt prompt with one site's clean activation written in
# (`Op.patch("clean")`): does this site alone restore the clean answer? **Noising** runs the clean
# prompt with the corrupt activation (`Op.patch("corrupt")`): does this site alone break it?
#
# Metric: normalized recovery of the mean logit difference (answer − distractor),
# (LD_patched − LD_corrupt) / (LD_clean − LD_corrupt), ratio of means over prompts with a 95% bootstrap
# CI. `score` = recovery for denoising and 1 − recovery for noising (the fraction destroyed), so 1 always
# means "this site carries the decision". Sites: residual stream (`resid`), the block's write
# (`block`), attention and MLP writes, and single heads, at the **last token** and at the **first token
# where clean and corrupt differ** (`diff`: the subject / name / operand that carries the answer).
#
# **Budget** (default profile, SmolLM2-135M): 3 families × 8 prompts, every layer for resid/block/attn/mlp
# × 2 positions × 2 methods, heads (denoising, last token) every 3rd layer, and cross-model patching on
# one family; about 6 minutes on one CPU core, seconds from the sweep cache.

# %% tags=["parameters"]
model = None  # default: the profile's model
profile = "smoke"
seeds = None  # default: the profile's seeds (the first one samples the prompts)
results_dir = None  # default: $ATLAS_RESULTS or results/

# %% tags=["remove-cell"]
import time

import altair as alt
import pandas as pd
from IPython.display import display

from atlas_core import charts, patching, tasks
from atlas_core.claims import Claim, record
from atlas_core.profiles import chapter
from atlas_core.sweep import sweep

ctx = chapter(model, profile, seeds, results_dir)
model, seed, subject, P = ctx.model, ctx.seeds[0], ctx.subject, ctx.cfg["patching"]
families = P["families"] or list(tasks.FAMILIES)
arch = subject.arch
n_layers = arch.n_layers
layers = list(range(0, n_layers, P["layer_stride"]))
T0 = time.time()
print(subject)

# %% [markdown]
# ## The sweep

# %% tags=["hide-output"]
valid, report = tasks.validate([it for f in families for it in tasks.load_items(f, "synthetic", "short")], subject.tokenizer)
items = [it for f in families for it in tasks.sample([i for i in valid if i.family == f], P["n"], seed)]
units = patching.units(arch, P.get("components", ("resid", "block", "attn", "mlp")), ("last", "diff"), ("denoise", "noise"),
                       layers=layers, head_layers=range(0, n_layers, P["head_stride"]))
t0 = time.time()
df = sweep(subject, items, units, seed=seed, desc="patching")
summ = patching.summarize(df)
print(f"{len(units)} units x {len(families)} families; computed={df.attrs['computed']} cached={df.attrs['cached']}; "
      f"{time.time() - t0:.0f} s")

# %%
# NBVAL_CHECK_OUTPUT
print(f"{len(items)} prompts over {len(families)} families; {len(units)} patching units")

# %% [markdown]
# ## Where the decision lives: layer × component maps
# Score per layer (1 = the site carries the clean − corrupt decision), one panel per position and
# method, one row per family. Hover for the CI.

# %% tags=["hide-input"]
lay = summ[summ["component"] != "head"]
charts.heatmap(lay.assign(panel=lay["position"] + " · " + lay["method"]), "layer", "component", "score",
               row="family", column="panel", scheme="redblue", scale={"domain": [-0.5, 1.5], "reverse": True},
               width=110, height=80,
               tooltip=["family", "component", "layer", "panel", alt.Tooltip("score:Q", format=".2f"),
                        alt.Tooltip("score_lo:Q", format=".2f"), alt.Tooltip("score_hi:Q", format=".2f")])

# %% [markdown]
# The residual stream at the `diff` token against the last token, denoising, with CIs: the layer where
# the two curves cross is where the answer-relevant information has been moved to the last position.

# %% tags=["hide-input"]
res = summ[(summ["component"] == "resid") & (summ["method"] == "denoise")]
charts.line_with_ci(res, "layer", "recovery", "recovery_lo", "recovery_hi", color="position", width=170, height=150).facet(
    facet="family:N", columns=3)

# %% [markdown]
# ## Top sites per family
# The five strongest denoising sites (component, layer, position) per family, and the noising score of
# the same site: a site that both restores and breaks the behaviour carries it on its own.

# %%
key = ["family", "component", "layer", "head", "position"]
den = summ[summ["method"] == "denoise"].set_index(key)
noi = summ[summ["method"] == "noise"].set_index(key)[["score", "score_lo", "score_hi"]].add_prefix("noise_")
both = den.join(noi).reset_index().sort_values("score", ascending=False)  # every site: denoising + noising scores
top = both.groupby("family").head(5)
# NBVAL_IGNORE_OUTPUT
top[[*key, "score", "score_lo", "score_hi", "noise_score", "noise_score_lo", "kl"]].round(3)

# %% [markdown]
# ## Heads
# Denoising single heads (their slice of the attention output) at the last token.

# %% tags=["hide-input"]
heads = summ[summ["component"] == "head"]
charts.heatmap(heads, "head", "layer", "recovery", facet="family", scheme="redblue", width=160, height=120) if len(heads) else None

# %% [markdown]
# ## Cross-model patching
# Activations of this model (A) written into a copy B of the same architecture whose decoder weights
# carry seeded noise (as a fine-tune would leave them; a LoRA-adapted copy from chapter 05 plugs in
# the same way). A's block writes replace B's for layers 0..k, for growing k; recovery measures how far
# B's logit difference moves to A's, and KL(A ‖ patched B) how far its whole next-token distribution.
# Patching every layer makes B's final residual equal A's, so the curve must end at 1. Is it monotonic?

# %% tags=["hide-output"]
other = patching.perturbed(subject, sigma=P["cross_sigma"], seed=1)
ks = sorted(set(layers) | {n_layers - 1})
cum = [u for u in patching.cumulative("block", n_layers) if len(u.edits) - 1 in ks]
single = [u for u in patching.units(arch, ("resid",), ("all",), ("denoise",), layers=ks)]
fam0 = families[0]
cross = patching.cross_patch(other, subject, [it for it in items if it.family == fam0], cum + single)

# %%
cr = []
for _, g in cross.groupby("unit"):
    comp, n = g["component"].iloc[0], int(g["n_layers_patched"].iloc[0])
    est, lo, hi = patching.recovery_ci(g["logit_diff"], g["ld_clean"], g["ld_corrupt"])
    last = int(g["layer"].iloc[0]) + n - 1 if comp == "block" else int(g["layer"].iloc[0])
    cr.append({"curve": "blocks 0..k (A's writes)" if comp == "block" else "resid at k only", "k": last,
               "recovery": est, "recovery_lo": lo, "recovery_hi": hi, "kl": g["kl"].mean()})
cr = pd.DataFrame(cr)
mono = patching.monotonic(cr[cr["curve"].str.startswith("blocks")].sort_values("k")["recovery"].to_numpy())
mono_kl = patching.monotonic(-cr[cr["curve"].str.startswith("blocks")].sort_values("k")["kl"].to_numpy(), tol=1e-3)
gap = cross.groupby("item_id")[["ld_clean", "ld_corrupt"]].first().mean()
print(f"{fam0}: mean LD A = {gap['ld_clean']:.2f}, B = {gap['ld_corrupt']:.2f}; recovery monotonic: {mono[0]} "
      f"({mono[1]} drops > 0.02); KL non-increasing: {mono_kl[0]} ({mono_kl[1]} rises)")
charts.line_with_ci(cr, "k", "recovery", "recovery_lo", "recovery_hi", color="curve", width=420)

# %% [markdown]
# ## Claims
# Patching the residual stream at the `diff` token early on restores everything by construction: it
# replaces the one token that differs. The informative facts are (1) **where the information moves**:
# the last layer at which the `diff`-token residual still carries the decision and the first layer at
# which the last-token residual does (both: lower 95% CI of denoising recovery > 0.5); and (2) **which
# component write at the last token** carries it (block, attention, MLP or head; not the residual).
# Control: the unpatched corrupt run (recovery 0). Methods: denoising and noising agree when both lower
# CI bounds exceed 0.5 at the same site. Breadth: families with the same kind of finding.

# %%
def resid(f: str, position: str, method: str) -> pd.DataFrame:
    """The residual-stream rows of one family, position and method."""
    return summ[(summ["family"] == f) & (summ["component"] == "resid") & (summ["position"] == position)
                & (summ["method"] == method)]


def carrying(f: str, position: str, method: str) -> list[int]:
    """Layers whose residual at `position` carries the decision (lower 95% CI of the score > 0.5)."""
    r = resid(f, position, method)
    return sorted(int(x) for x in r.loc[r["score_lo"] > 0.5, "layer"])


def crossover(f: str) -> dict:
    d, last, last_noise = carrying(f, "diff", "denoise"), carrying(f, "last", "denoise"), carrying(f, "last", "noise")
    return {"family": f, "diff_until": d[-1] if d else None, "last_from": last[0] if last else None,
            "noise_agrees": bool(last and last[0] in last_noise)}


moves = pd.DataFrame([crossover(f) for f in families])
writes = both[(both["position"] == "last") & (both["component"] != "resid")].groupby("family").head(1)
# NBVAL_IGNORE_OUTPUT
display(moves, writes[[*key, "score", "score_lo", "score_hi", "noise_score", "noise_score_lo"]].round(3))

# %%
n_moves = int(moves["last_from"].notna().sum())
claims = []
for r in moves.itertuples():
    if pd.isna(r.last_from):
        b = resid(r.family, "last", "denoise").sort_values("score_lo").iloc[-1]
        text = (f"In {r.family}, a single last-token residual site carries the decision: not supported (best: layer "
                f"{int(b.layer)}, recovery {b.score:.2f}, lower 95% CI {b.score_lo:.2f} ≤ 0.5)")
    else:
        src = ("no layer of the changed token's residual carries it alone" if pd.isna(r.diff_until)
               else f"the changed token's residual carries it up to layer {int(r.diff_until)}")
        text = (f"In {r.family}, the decision reaches the last position at layer {int(r.last_from)} (of 0–{n_layers - 1}): "
                f"{src}, the last token's from layer {int(r.last_from)} on (denoising recovery, lower 95% CI > 0.5)")
    claims.append(Claim(text, metric="normalized recovery of the mean logit difference, bootstrap 95% CI over prompts",
                        counterfactual="clean residual stream at one layer and position in the corrupt prompt",
                        control="unpatched corrupt run (recovery 0)",
                        evidence={"ci_excludes_control": bool(pd.notna(r.last_from)), "n_methods": 2,
                                  "methods_agreeing": 1 + int(r.noise_agrees), "n_families": len(moves),
                                  "families_agreeing": n_moves if pd.notna(r.last_from) else len(moves) - n_moves},
                        chapter="03", model=model, profile=profile))
kinds = writes["component"].value_counts()


def site_name(r) -> str:
    return f"head {r.head} of layer {r.layer}" if r.component == "head" else f"the {r.component} of layer {r.layer}"


claims += [
    Claim(f"In {r.family}, the strongest single write at the last token is {site_name(r)}: patching it into the corrupt run "
          f"restores {r.score:.2f} of the logit difference (95% CI {r.score_lo:.2f}–{r.score_hi:.2f}); noising it "
          + ("was not measured" if pd.isna(r.noise_score) else f"removes {r.noise_score:.2f}"),
          metric="normalized recovery of the mean logit difference, bootstrap 95% CI over prompts",
          counterfactual=f"clean {r.component} output at layer {r.layer}, last position, in the corrupt prompt",
          control="unpatched corrupt run (recovery 0)",
          evidence={"ci_excludes_control": bool(r.score_lo > 0), "n_methods": 1 if pd.isna(r.noise_score) else 2,
                    "methods_agreeing": int(r.score_lo > 0.5) + int(r.noise_score_lo > 0.5),
                    "n_families": len(writes), "families_agreeing": int(kinds[r.component])},
          chapter="03", model=model, profile=profile)
    for r in writes.itertuples()
]
fin = cr[cr["curve"].str.startswith("blocks")].sort_values("k").iloc[-1]
claims.append(Claim(
    f"Writing A's block outputs into a noised copy B recovers A's logit difference {'monotonically' if mono[0] else 'non-monotonically'} "
    f"as more layers are patched ({mono[1]} drops), reaching {fin.recovery:.2f} with all layers",
    metric="normalized recovery toward model A, ratio of means", counterfactual="A's block writes at layers 0..k in B",
    control="unpatched B (recovery 0)", evidence={"ci_excludes_control": bool(fin.recovery_lo > 0)},
    chapter="03", model=model, profile=profile))
print(f"chapter time {time.time() - T0:.0f} s")
record(claims)[["claim", "confidence", "why"]]
