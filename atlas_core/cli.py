"""`atlas` command line: one verb per chapter, plus the book.

    atlas map      the ablation atlas (chapter 02's library call, with every knob of `map_atlas`)
    atlas tasks | patch | steer | lora | sft | compress | summary
                   execute chapter 01 | 03 | 04 | 05 | 06 | 07 | 00 with the chapter's own parameters (read from its
                   parameters cell, so a verb always takes what its chapter takes) and print its claims
    atlas book     execute the chapters and render the book (`make book`)

Heavy modules are imported inside the verbs so that `--help` and usage errors answer at once.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import io
import os
import sys
import time
from pathlib import Path

from .paths import REPO

DTYPES = ("float32", "bfloat16", "float16")
VERBS = {"tasks": "01", "patch": "03", "steer": "04", "lora": "05", "sft": "06", "compress": "07", "robust": "08",
         "summary": "00"}  # a new chapter adds its verb


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
    m.add_argument("--replicate", default="all", choices=["all", "testable"],
                   help="testable: seeds after the first sweep only the families that pass the flip gate")
    m.add_argument("--gate-prompts", type=int, default=48, help="prompts per family for the flip gate (--replicate testable)")
    m.add_argument("--head-seeds", type=int, default=None, help="sweep heads on the first N seeds only (default: every seed)")
    m.add_argument("--bucket", default="short", choices=["short", "medium", "long"])
    m.add_argument("--variant", default="synthetic", choices=["synthetic", "natural"])
    m.add_argument("--dtype", default="float32", help=", ".join(DTYPES))
    m.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps")
    m.add_argument("--remote", default=None, choices=["ndif", "local"],
                   help="ndif: run every trace on NDIF (model = HF id, key from NDIF_API_KEY); local: nnsight's round trip here")
    m.add_argument("--out", default=None, help="output directory (atlas.json, rows.parquet); default: $ATLAS_RESULTS/atlas")
    m.add_argument("--no-progress", action="store_true")
    m.add_argument("--debug", action="store_true", help="show tracebacks (also ATLAS_DEBUG=1)")
    for verb, num in VERBS.items():
        _chapter_parser(sub, verb, num)
    sub.add_parser("book", help="execute the chapters and render the book (atlas book --help)", add_help=False)
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["book"]:
        from .publish import book

        book.main(argv[1:], prog="atlas book")
        return 0
    a = p.parse_args(argv)
    run = _map if a.cmd == "map" else _chapter
    if a.debug or os.environ.get("ATLAS_DEBUG", "") not in ("", "0"):
        return run(a)
    try:
        return run(a)
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


def run(*args: str) -> tuple[int, str]:
    """`atlas <args>` in this process, its output captured: the exit code and the last line on stderr."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(list(args))
    lines = [x for x in err.getvalue().splitlines() if x.strip()]
    return code, lines[-1] if lines else ""


def chapter_path(num: str) -> Path:
    return next((REPO / "chapters").glob(f"{num}_*.py"))


def chapter_parameters(path: Path) -> list[tuple[str, object, str]]:
    """(name, default, help) of each assignment in a jupytext chapter's parameters cell (help: its comment)."""
    lines, inside = [], False
    for ln in path.read_text().splitlines():
        if ln.startswith("# %%"):
            if inside:
                break
            inside = '"parameters"' in ln
        elif inside and "=" in ln and not ln.startswith((" ", "#")):
            lines.append(ln)
    out = []
    for ln in lines:
        code, _, comment = ln.partition("#")
        node = ast.parse(code.strip()).body[0]
        out.append((node.targets[0].id, ast.literal_eval(node.value), comment.strip()))
    return out


def _chapter_parser(sub, verb: str, num: str) -> None:
    from . import profiles

    path = chapter_path(num)
    c = sub.add_parser(verb, help=f"execute chapter {path.stem} and print its claims",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for name, default, helptext in chapter_parameters(path):
        flag = "--" + name.replace("_", "-")
        if name == "profile":
            c.add_argument(flag, default="default", choices=list(profiles.PROFILES), help="profile sizes (profiles.py)")
        elif name == "remote":
            c.add_argument(flag, default=None, choices=["ndif", "local"],
                           help="ndif: every trace runs on NDIF (key from NDIF_API_KEY); local: nnsight's round trip here")
        elif name == "seeds":
            c.add_argument(flag, default=None, help="comma list of integers; default: the profile's seeds")
        else:
            kind = type(default) if default is not None and not isinstance(default, bool) else str
            c.add_argument(flag, default=default, type=kind, help=helptext or None)
    c.add_argument("--out", default=None, help="where the executed notebook goes; default: $ATLAS_RESULTS/chapters")
    c.add_argument("--debug", action="store_true", help="show tracebacks (also ATLAS_DEBUG=1)")


def _chapter(a) -> int:
    from .evidence.claims import table
    from .model.subject import remote_mode
    from .paths import results_dir, writable_dir
    from .publish import book
    from .tasks.core import seed_list

    path = chapter_path(VERBS[a.cmd])
    params = {k: getattr(a, k) for k, _, _ in chapter_parameters(path) if getattr(a, k) is not None}
    if "seeds" in params:
        params["seeds"] = seed_list(params["seeds"])
    if "remote" in params:
        params["remote"] = remote_mode(params["remote"])
    if params.pop("results_dir", None):
        os.environ["ATLAS_RESULTS"] = str(Path(a.results_dir).resolve())
    with_dir = writable_dir(a.out or results_dir() / "chapters")
    secs = book.execute(path, with_dir / f"{path.stem}.ipynb", params, progress=True)
    run = book.run_of(params)
    claims = table(run["model"], run["profile"])
    mine = claims[claims["chapter"] == path.stem[:2]]
    print(mine[["claim", "confidence", "why"]].to_string(index=False) if len(mine) else "no claims recorded")
    print(f"executed {path.stem} in {secs:.0f} s -> {with_dir / f'{path.stem}.ipynb'}")
    return 0


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
    from . import load, tasks
    from .model.subject import remote_mode
    from .paths import locked, results_dir
    from .studies.atlas import map_atlas

    fams, comps, methods, seeds = _args(a)
    _check_device(a.dtype, a.device)
    a.out = str(a.out or results_dir() / "atlas")
    t0 = time.time()
    with locked(a.out):  # checked writable, and no other run writes it meanwhile
        subject = load(a.model, dtype=a.dtype, device=a.device, remote=remote_mode(a.remote))
        print(subject, file=sys.stderr)
        gate = (tasks.gate(subject, fams, n=a.gate_prompts, seed=seeds[0], bucket=a.bucket, variant=a.variant)
                if a.replicate == "testable" else None)
        atlas = map_atlas(subject, fams, comps, methods, seeds, a.prompts_per_family, heads=not a.no_heads,
                          positions=_csv(a.positions), bucket=a.bucket, variant=a.variant, out=a.out,
                          progress=not a.no_progress, gate=gate, replicate=a.replicate, head_seeds=a.head_seeds)
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
