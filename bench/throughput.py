"""Atlas throughput in ONE run: naive loop vs sweep engine vs the hook engine it replaced vs the compute floor.

    .venv/bin/python bench/throughput.py [--model smollm2-135m] [--prompts 16] [--device cpu] [--dtype float32]

(a) naive: one nnsight trace over the full model per (site, operation) unit, no prefix reuse;
(b) engine: `Batch.run` (nnsight traces, Envoy.skip prefix reuse, row packing), batch preparation included;
(b') the raw-hook engine of commit --hook-rev (loaded from git history, same units, same packing): the
     engine before nnsight became the one intervention layer;
(c) raw forward throughput, giving the floor of a zero-ablation sweep of L blocks:
    L(L+1)/2 block evaluations per prompt with prefix reuse, L^2 without.
Engines are timed alternately (best of --reps) so machine load hits both alike.
Prints a markdown table and writes bench/out/throughput-<model>-<device>-<dtype>.json. Never a test.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from atlas_core import load, tasks
from atlas_core.engine.batch import Batch, run_nnsight
from atlas_core.engine.interventions import Op, Site, Unit, head_sweep, layer_sweep
from atlas_core.engine.tracing import position_ids


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, dev, reps=1):
    _sync(dev)
    t0 = time.perf_counter()
    for _ in range(reps):
        out = fn()
    _sync(dev)
    return (time.perf_counter() - t0) / reps, out


def hook_engine(rev: str):
    """The engine module of git revision `rev`, imported inside atlas_core (its relative imports resolve there)."""
    src = subprocess.run(["git", "show", f"{rev}:atlas_core/engine.py"], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).parent).stdout
    import atlas_core.engine.interventions
    import atlas_core.model.subject

    # that revision's atlas_core was flat: point its relative imports at today's modules of the same names
    sys.modules.setdefault("atlas_core.interventions", atlas_core.engine.interventions)
    sys.modules.setdefault("atlas_core.subject", atlas_core.model.subject)
    spec = importlib.util.spec_from_loader("atlas_core._hook_engine", loader=None)
    mod = importlib.util.module_from_spec(spec)
    mod.__package__ = "atlas_core"
    exec(compile(src, f"{rev}:atlas_core/engine.py", "exec"), mod.__dict__)
    return mod


def best(fns: dict, dev, reps: int) -> dict:
    """Best wall time of each callable over `reps` alternating rounds."""
    t = dict.fromkeys(fns, float("inf"))
    for _ in range(reps):
        for k, fn in fns.items():
            t[k] = min(t[k], timed(fn, dev)[0])
    return t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--family", default="ioi")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--naive-units", type=int, default=0, help="time the naive loop on this many units (0: all)")
    ap.add_argument("--hook-rev", default="83b0da5", help="git revision of the raw-hook engine to compare with")
    ap.add_argument("--reps", type=int, default=2)
    a = ap.parse_args()
    s = load(a.model, dtype=a.dtype, device=a.device)
    dev = s.device
    items, _ = tasks.validate(tasks.load_items(a.family), s.tokenizer)
    items = tasks.sample(items, a.prompts, 0)
    prompts = [it.prompt for it in items]
    L = s.arch.n_layers
    blocks = [Unit.of(Site("block", i), Op.zero()) for i in range(L)]
    mixed = layer_sweep(["block", "attn", "mlp"], ["zero", "mean", "resample"], L, s.arch) + head_sweep(s.arch)

    def batch():
        return Batch(s, prompts, [it.corrupt for it in items], [it.answer_id for it in items],
                     [it.distractor_id for it in items], [it.diff_pos for it in items])

    enc = s.encode(prompts)
    with torch.inference_mode():
        fwd = lambda: s.model(**enc, position_ids=position_ids(enc["attention_mask"]), use_cache=False, logits_to_keep=1)  # noqa: E731
        fwd()
        t_fwd, _ = timed(fwd, dev, reps=5)
    t_block = t_fwd / L
    floor_prefix, floor_plain = L * (L + 1) / 2 * t_block, L * L * t_block

    old = hook_engine(a.hook_rev)

    def hook_batch():
        return old.Batch(s, prompts, [it.corrupt for it in items], [it.answer_id for it in items],
                         [it.distractor_id for it in items], [it.diff_pos for it in items])

    b = batch()
    run_nnsight(b, blocks[0])  # warm nnsight
    naive_units = blocks if not a.naive_units else blocks[: a.naive_units]
    t_naive, _ = timed(lambda: [run_nnsight(b, u) for u in naive_units], dev)
    t_naive *= len(blocks) / len(naive_units)
    ref, got = hook_batch().run(blocks + mixed), batch().run(blocks + mixed)
    max_diff = max(float((x - y).abs().max()) for x, y in zip(ref, got))
    t = best({"engine": lambda: batch().run(blocks), "hook": lambda: hook_batch().run(blocks)}, dev, a.reps)
    t_engine_blocks, t_hook_blocks = t["engine"], t["hook"]
    tm = best({"engine": lambda: batch().run(mixed), "hook": lambda: hook_batch().run(mixed)}, dev, 1)
    t_mixed_engine, t_mixed_hook = tm["engine"], tm["hook"]
    t_naive_mixed = t_naive / len(blocks) * len(mixed)  # naive cost per unit is one full forward either way

    peak = (torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    T = enc["input_ids"].shape[1]
    res = {
        "model": a.model, "device": str(dev), "dtype": a.dtype, "prompts": a.prompts, "tokens_padded": T,
        "layers": L, "machine": f"{platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}"
        + (f", {torch.cuda.get_device_name()}" if dev.type == "cuda" else ""),
        "forward_s": t_fwd, "block_eval_s": t_block,
        "hook_engine_rev": a.hook_rev, "max_logit_diff_vs_hook_engine": max_diff,
        "zero_block_sweep": {"units": L, "naive_s": t_naive, "engine_s": t_engine_blocks, "hook_engine_s": t_hook_blocks,
                             "floor_prefix_s": floor_prefix, "floor_no_prefix_s": floor_plain,
                             "engine_vs_naive_speedup": t_naive / t_engine_blocks,
                             "engine_over_hook_engine": t_engine_blocks / t_hook_blocks,
                             "engine_over_floor": t_engine_blocks / floor_prefix},
        "mixed_atlas_units": {"units": len(mixed), "engine_s": t_mixed_engine, "hook_engine_s": t_mixed_hook,
                              "engine_over_hook_engine": t_mixed_engine / t_mixed_hook, "naive_s_est": t_naive_mixed,
                              "speedup_est": t_naive_mixed / t_mixed_engine},
        "peak_memory_mib": peak,
    }
    default_units = 12 * 3 * (len(mixed) + 2 * L)  # 12 families x 3 seeds; +first/last block units
    res["default_atlas_projection_min"] = default_units * (t_mixed_engine / len(mixed)) / 60
    # The default atlas's own floor: every unit resumes at its layer (prefix reuse), so it costs L - layer block
    # evaluations of this batch; the prefix itself once per batch. At the measured raw-forward speed:
    evals = sum(L - u.start_layer for u in mixed) + 2 * L * (L + 1) / 2 + L
    res["default_atlas_floor_min"] = 12 * 3 * evals * t_block / 60
    res["default_atlas_block_evals_per_batch"] = evals
    out = Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    (out / f"throughput-{a.model}-{dev.type}-{a.dtype}.json").write_text(json.dumps(res, indent=1))
    z, m = res["zero_block_sweep"], res["mixed_atlas_units"]
    print(f"| {a.model} | {res['machine']} | {a.dtype} | {a.prompts}x{T} tok | fwd {t_fwd * 1e3:.0f} ms | "
          f"naive {z['naive_s']:.1f} s | engine {z['engine_s']:.1f} s | hook engine {z['hook_engine_s']:.1f} s | "
          f"floor {z['floor_prefix_s']:.1f} s (no prefix {z['floor_no_prefix_s']:.1f} s) | speedup "
          f"{z['engine_vs_naive_speedup']:.2f}x | engine/hook {z['engine_over_hook_engine']:.2f} | engine/floor "
          f"{z['engine_over_floor']:.2f} | mixed {m['units']} units {m['engine_s']:.1f} s vs hook {m['hook_engine_s']:.1f} s "
          f"({m['engine_over_hook_engine']:.2f}; naive est {m['naive_s_est']:.0f} s, {m['speedup_est']:.1f}x) | "
          f"peak {peak:.0f} MiB | max |Δlogit| vs hook engine {max_diff:.1e} |")
    print(f"projected default atlas (12 families x 16 prompts x 3 seeds, {default_units} units): "
          f"{res['default_atlas_projection_min']:.0f} min; its compute floor at raw-forward speed "
          f"({evals:.0f} block evaluations per 16-prompt batch x 36 batches): {res['default_atlas_floor_min']:.0f} min")


if __name__ == "__main__":
    main()
