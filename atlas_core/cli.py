"""`atlas` command line: the library's main entry points with the same names and defaults."""

from __future__ import annotations

import argparse
import sys
import time


def _csv(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="atlas", description="MI-Atlas: map a model by intervening on it.")
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("map", help="ablation atlas: sweep components x layers x methods over task families",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    m.add_argument("--model", default="smollm2-135m", help="embedded name, tiny-<family>, local path or HF id")
    m.add_argument("--families", default="all", help="comma list of task families, or 'all'")
    m.add_argument("--components", default="block,attn,mlp", help="comma list: block,attn,mlp,mixer,resid,...")
    m.add_argument("--methods", default="zero,mean,resample", help="comma list: zero,mean,resample,random")
    m.add_argument("--seeds", default="42,137,256", help="prompt-sampling seeds")
    m.add_argument("--prompts-per-family", type=int, default=16)
    m.add_argument("--no-heads", action="store_true", help="skip the per-head zero-ablation sweep")
    m.add_argument("--positions", default="first,last", help="extra block zero-ablation positions ('' for none)")
    m.add_argument("--bucket", default="short", choices=["short", "medium", "long"])
    m.add_argument("--variant", default="synthetic", choices=["synthetic", "natural"])
    m.add_argument("--dtype", default="float32")
    m.add_argument("--device", default="cpu")
    m.add_argument("--remote", default=None, choices=["ndif", "local"],
                   help="ndif: run every trace on NDIF (model = HF id, key from NDIF_API_KEY); local: nnsight's round trip here")
    m.add_argument("--out", default="results/atlas", help="output directory (atlas.json, rows.parquet)")
    m.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    try:
        return _map(a)
    except (ValueError, KeyError, FileNotFoundError, RuntimeError) as err:
        print(f"atlas: error: {err}", file=sys.stderr)
        return 2


def _map(a) -> int:
    from . import load, tasks
    from .atlas import map_atlas
    from .interventions import COMPONENTS, method_op

    fams = list(tasks.FAMILIES) if a.families == "all" else _csv(a.families)
    bad = [f for f in fams if f not in tasks.FAMILIES]
    if bad:
        raise ValueError(f"unknown families {bad}; known: {', '.join(tasks.FAMILIES)}")
    comps = _csv(a.components)
    bad = [c for c in comps if c not in COMPONENTS or c == "head"]
    if bad:
        raise ValueError(f"unknown components {bad}; known: {', '.join(c for c in COMPONENTS if c != 'head')} (heads: default on, --no-heads)")
    methods = _csv(a.methods)
    for meth in methods:
        method_op(meth)  # raises a one-line error for unknown methods
    if any(meth in ("denoise", "noise") for meth in methods):
        raise ValueError("patching methods belong to `atlas patch` / chapter 03; use zero, mean, resample or random here")
    seeds = [int(s) for s in _csv(a.seeds)]
    t0 = time.time()
    remote = {"ndif": True, "local": "local", None: False}[a.remote]
    subject = load(a.model, dtype=a.dtype, device=a.device, remote=remote)
    print(subject, file=sys.stderr)
    atlas = map_atlas(subject, fams, comps, methods, seeds, a.prompts_per_family, heads=not a.no_heads,
                      positions=_csv(a.positions), bucket=a.bucket, variant=a.variant, out=a.out,
                      progress=not a.no_progress)
    ev = atlas.hub_evidence()
    rs = atlas.run_stats
    print(f"units computed={rs['computed']} cached={rs['cached']}  wall={time.time() - t0:.1f}s")
    sol = atlas.solved
    print(f"testable families ({len(atlas.testable_families)}/{len(sol)}): {', '.join(atlas.testable_families) or 'none'}")
    if ev["testable"]:
        print(f"hub: {ev['component']}/{ev['method']} layer {ev['hub']} (chosen on the select split of {ev['n_candidates']} "
              f"layers; test split vs {ev['control']}: {ev['effect_minus_control']:+.3f}, p={ev['p_value']:.3g}; "
              f"seeds replicated {ev['seeds_replicated']}/{ev['n_seeds']})")
    else:
        hub = atlas.hub()
        print(f"hub: not testable (no family solved); disruption hub by KL: {hub['component']}/{hub['method']} layer {hub['layer']}")
    print(atlas.method_agreement().to_string(index=False))
    print(f"wrote {a.out}/atlas.json and {a.out}/rows.parquet")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
