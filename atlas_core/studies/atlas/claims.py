"""The atlas's claims, worded from their evidence: the hub (`hub_claim`) and method agreement (`agreement_claim`)."""

from __future__ import annotations

from ...evidence.claims import Claim
from .core import Atlas
from .layers import SINK


def hub_claim(atlas: Atlas, component: str, exclude: tuple[int, ...] = (), method: str = "zero", **tags) -> Claim:
    """The claim "component layer H is the hub", its statement and direction taken from `hub_evidence`."""
    ev = atlas.hub_evidence(component, method, exclude)
    tags = {"tag": f"02.hub.{component}" + "".join(f".excl{x}" for x in exclude), **tags}
    where = f" (excluding layer{'s' if len(exclude) > 1 else ''} {', '.join(map(str, exclude))})" if exclude else ""
    kw = dict(counterfactual=f"{method}-ablate the {component} write at each layer, all positions",
              control=ev["control"], evidence=ev, **tags)
    if not ev["testable"]:
        return Claim(f"{component}: no {method}-ablation hub{where} can be localized — not testable here, the model "
                     "solves no task family", metric="fraction of the clean logit difference lost (none solved)", **kw)
    h, k = ev["hub"], ev["n_candidates"]
    held = f"held-out {ev['effect_minus_control']:+.2f} vs {ev['control']}, p = {ev['p_value']:.3g}; best of {k} layers"
    if ev["p_value"] <= 0.05 and ev["effect_minus_control"] > 0:
        text = f"{component} layer {h} is the {method}-ablation hub{where} ({held})"
    else:
        text = f"{component} layer {h} scores highest{where} but does not beat the median layer on held-out prompts ({held})"
    share = ev.get("first_token_share")
    if share is not None and share >= SINK:
        text += f"; ablating the first token alone reproduces {share:.0%} of its effect (an attention-sink effect)"
    comp_layers = [x for x in ev.get("compensated_layers", []) if x != h]
    if comp_layers:
        many = len(comp_layers) > 1
        text += (f"; layer{'s' if many else ''} {', '.join(map(str, comp_layers))} ha{'ve' if many else 's'} a direct "
                 f"effect at least twice {'their' if many else 'its'} total effect: compensated downstream, not unimportant")
    return Claim(text, metric="fraction of the clean logit difference lost, flipped items of testable families", **kw)


def agreement_claim(atlas: Atlas, component: str, **tags) -> Claim:
    """The claim "the ablation methods rank this component's layers alike", worded from `agreement_evidence`."""
    ev = atlas.agreement_evidence(component)
    tags = {"tag": f"02.agreement.{component}", **tags}
    kw = dict(metric="Spearman correlation of layer profiles between methods (test split)",
              counterfactual="the same layers ablated by each method", control="rho = 0 (no shared ranking)",
              evidence=ev, **tags)
    if not ev["testable"]:
        return Claim(f"{component}: whether ablation methods agree is not testable here (the model solves no task family)", **kw)
    names = ", ".join(ev["methods"])
    if ev["p_value"] <= 0.05:
        return Claim(f"{names} ablation rank {component} layers alike (min Spearman {ev['min_spearman']:.2f}, every pair p <= 0.05)", **kw)
    return Claim(f"{names} ablation do not demonstrably rank {component} layers alike (min Spearman "
                 f"{ev['min_spearman']:.2f}; largest pair p = {ev['p_value']:.2g})", **kw)
