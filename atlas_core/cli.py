"""`atlas` command line: the library's main entry points with the same names and defaults."""

from __future__ import annotations

import argparse
import os
import sys
import time

DTYPES = ("float32", "bfloat16", "float16")


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
    m.add_argument("--dtype", default="float32", help=", ".join(DTYPES))
    m.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps")
    m.add_argument("--remote", default=None, choices=["ndif", "local"],
                   help="ndif: run every trace on NDIF (model = HF id, key from NDIF_API_KEY); local: nnsight's round trip here")
    m.add_argument("--out", default=None, help="output directory (atlas.json, rows.parquet); default: $ATLAS_RESULTS/atlas")
    m.add_argument("--no-progress", action="store_true")
    m.add_argument("--debug", action="store_true", help="show tracebacks (also ATLAS_DEBUG=1)")
    a = p.parse_args(argv)
    if a.debug or os.environ.get("ATLAS_DEBUG", "") not in ("", "0"):
        return _map(a)
    try:
        return _map(a)
    except (ValueError, KeyError, FileNotFoundError) as err:  # usage errors: what was wrong and what is allowed
        print(f"atlas: error: {str(err).strip() or type(err).__name__}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        from .paths import cache_path

        print(f"atlas: interrupted; every finished unit is cached in {cache_path()}: run the same command again to "
              "resume where it stopped", file=sys.stderr)
        return 130
    except Exception as err:  # a failure of the run itself (e.g. FloatingPointError): one line, no traceback
        first = (str(err).strip().splitlines() or [""])[0]
        print(f"atlas: error: {type(err).__name__}: {first} (--debug or ATLAS_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


def _args(a) -> tuple[list[str], list[str], list[str], list[int]]:
    """Families, components, methods and seeds from the command line, checked before anything is loaded."""
    from . import tasks
    from .engine.interventions import COMPONENTS, method_op
    from .tasks.core import distinct

    fams = list(tasks.FAMILIES) if a.families == "all" else _csv(a.families)
    comps, methods = _csv(a.components), _csv(a.methods)
    for flag, vals, allowed in (("--families", fams, f"{', '.join(tasks.FAMILIES)} or 'all'"),
                                ("--components", comps, "block,attn,mlp,..."), ("--methods", methods, "zero,mean,resample,random"),
                                ("--seeds", _csv(a.seeds), "integers, e.g. 42,137,256")):
        if not vals:
            raise ValueError(f"{flag} is empty; give a comma list of {allowed}")
    bad = [f for f in fams if f not in tasks.FAMILIES]
    if bad:
        raise ValueError(f"unknown families {bad}; known: {', '.join(tasks.FAMILIES)}")
    bad = [c for c in comps if c not in COMPONENTS or c == "head"]
    if bad:
        raise ValueError(f"unknown components {bad}; known: {', '.join(c for c in COMPONENTS if c != 'head')} (heads: default on, --no-heads)")
    for meth in methods:
        method_op(meth)  # raises a one-line error for unknown methods
    if any(meth in ("denoise", "noise") for meth in methods):
        raise ValueError("patching methods belong to `atlas patch` / chapter 03; use zero, mean, resample or random here")
    try:
        seeds = [int(s) for s in _csv(a.seeds)]
    except ValueError:
        raise ValueError(f"--seeds {a.seeds!r}: expected a comma list of integers, e.g. 42,137,256") from None
    if a.prompts_per_family < 1:
        raise ValueError(f"--prompts-per-family {a.prompts_per_family}: must be >= 1 (mean and resample need >= 2)")
    return distinct(fams, "families"), distinct(comps, "components"), distinct(methods, "methods"), distinct(seeds, "seeds")


def _check_device(dtype: str, device: str) -> None:
    import torch

    if dtype not in DTYPES:
        raise ValueError(f"--dtype {dtype!r} is unknown; allowed: {', '.join(DTYPES)}")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"--device {device!r} is not a device; allowed: cpu, cuda, cuda:N, mps") from None
    if dev.type == "cuda" and not (torch.cuda.is_available() and (dev.index or 0) < torch.cuda.device_count()):
        raise ValueError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s); use --device cpu")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {device}: MPS is not available on this machine; use --device cpu")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device {device!r} is not supported; allowed: cpu, cuda, cuda:N, mps")


def _map(a) -> int:
    from . import load
    from .paths import locked, results_dir
    from .studies.atlas import map_atlas

    fams, comps, methods, seeds = _args(a)
    _check_device(a.dtype, a.device)
    a.out = str(a.out or results_dir() / "atlas")
    t0 = time.time()
    with locked(a.out):  # checked writable, and no other run writes it meanwhile
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
