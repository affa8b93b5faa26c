"""The one intervention layer: where a site lives (`point`), what an edit does (`Step`) and the traced forward
that applies edits (`forward`, `generate`).

Every forward that edits a model — the sweep's packed forwards, the attribution screen's forward+backward,
steered generation, cross-model patching — is an nnsight trace opened here, with the edits compiled to plain
`Step`s (tensors and strings, no model objects), so the same trace body runs locally, through nnsight's
`remote="local"` round trip, or on NDIF. No other module of atlas_core registers a hook or opens a trace.

A site resolves to a `Point`: a layer, a module path inside it ("" = the decoder layer) and a port — the
module's output, or its input for `head` sites (the out-projection's input holds the per-head outputs).
`block` steps edit the layer's output minus its input (the block's residual write).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

# Execution order of the sites inside one decoder layer: an nnsight trace must touch modules in this order.
STAGE = {"q": 0, "k": 0, "v": 0, "qkv": 0, "head": 1, "o": 2, "attn": 3, "mixer": 3, "conv": 3,
         "gate": 4, "up": 4, "down": 5, "mlp": 6, "block": 7, "resid": 7}


@dataclass(frozen=True)
class Point:
    """Where a site's value is read and written: `port` ("input"/"output") of module `path` in `layer`."""

    layer: int
    path: str
    port: str
    stage: int


def point(arch, site) -> Point:
    """The one resolution of a site to its module and edit point."""
    port = "input" if site.component == "head" else "output"
    return Point(site.layer, arch.relative_path(site.component, site.layer), port, STAGE[site.component])


@dataclass
class Step:
    """One compiled edit: on batch `rows` (and feature `cols`), at the token positions `sel` — a (rows, T) bool
    mask, or "all"/"last" of each forward (generation) — replace the site's value x by:
    zero: 0 · add: x + alpha·vector · project: x − (x·v)v · scale: alpha·x · random: a seeded Gaussian direction
    with x's norm · set (mean, resample, patch): `value`. `block` steps act on the layer's output − input."""

    point: Point
    kind: str
    rows: slice = field(default_factory=lambda: slice(None))
    cols: slice | None = None
    sel: torch.Tensor | str = "all"
    block: bool = False
    alpha: float = 1.0
    vector: torch.Tensor | None = None
    value: torch.Tensor | None = None
    seed: int = 0
    key: str = field(default="", compare=False)


def first(x):
    """A module output's tensor: the tensor itself, or the first element of a tuple output."""
    return x[0] if isinstance(x, tuple) else x


def like(orig, t: torch.Tensor):
    """`t` in the structure of the module output `orig` (tuple outputs keep their other elements)."""
    return (t, *orig[1:]) if isinstance(orig, tuple) else t


def new_value(s: Step, x: torch.Tensor) -> torch.Tensor:
    """The step's edited value of x (rows, T, d), at its positions only."""
    if s.kind == "zero":
        repl = torch.zeros_like(x)
    elif s.kind == "set":
        repl = s.value.to(device=x.device, dtype=x.dtype)
    elif s.kind == "add":
        repl = x + s.alpha * s.vector.to(device=x.device, dtype=x.dtype)
    elif s.kind == "project":
        v = s.vector.to(device=x.device, dtype=x.dtype)
        repl = x - (x @ v)[..., None] * v
    elif s.kind == "scale":
        repl = x * s.alpha
    elif s.kind == "random":
        r = torch.randn(x.shape, generator=torch.Generator().manual_seed(s.seed)).to(device=x.device, dtype=x.dtype)
        repl = r / r.norm(dim=-1, keepdim=True) * x.norm(dim=-1, keepdim=True)
    else:
        raise ValueError(f"unknown step kind {s.kind!r}")
    if isinstance(s.sel, str):
        sel = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        if s.sel == "last":
            sel[:, :-1] = False
    else:
        sel = s.sel.to(x.device)
    return torch.where(sel[..., None], repl, x)


def _layer_input(lay):
    args, kw = lay.inputs
    return args[0] if args else kw["hidden_states"]


def _read(lay, pt: Point):
    if not pt.path:
        return _layer_input(lay) if pt.port == "input" else first(lay.output)
    env = lay.get(pt.path)
    return env.inputs[0][0] if pt.port == "input" else first(env.output)


def apply(L, steps: Sequence[Step], n_rows: int) -> torch.Tensor:
    """Inside an open trace, with L the decoder layers' envoy: apply every step in execution order, one read
    and one write per touched module. Returns (n_rows,) bool: which rows any step actually changed."""
    touched = torch.zeros(n_rows, dtype=torch.bool)
    by_layer: dict[int, dict[Point, list[Step]]] = {}
    for s in steps:
        by_layer.setdefault(s.point.layer, {}).setdefault(s.point, []).append(s)
    for i in sorted(by_layer):
        lay = L[i]
        groups = sorted(by_layer[i].items(), key=lambda kv: kv[0].stage)
        inp = _layer_input(lay) if any(s.block for _, ss in groups for s in ss) else None
        for pt, ss in groups:
            env = lay.get(pt.path) if pt.path else lay
            if pt.port == "input":
                args, kw = env.inputs
                x = args[0].clone()
            else:
                out = env.output
                x = first(out).clone()
            for s in ss:
                cur = x[s.rows] if s.cols is None else x[s.rows, :, s.cols]
                if s.block:  # edit the block's write d = output − input
                    d = cur - inp[s.rows]
                    nd = new_value(s, d)
                    touched[s.rows] |= (nd != d).flatten(1).any(1).cpu()
                    new = inp[s.rows] + nd
                else:
                    new = new_value(s, cur)
                    touched[s.rows] |= (new != cur).flatten(1).any(1).cpu()
                if s.cols is None:
                    x[s.rows] = new
                else:
                    x[s.rows, :, s.cols] = new
            if pt.port == "input":
                env.inputs = ((x, *args[1:]), kw)
            else:
                env.output = like(out, x)
    return touched


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    """Positions counted from each row's first real token (left padding must not shift absolute positions)."""
    return (mask.long().cumsum(-1) - 1).clamp_min(0)


def _inputs(ids: torch.Tensor, mask: torch.Tensor) -> tuple[dict, dict]:
    return {"input_ids": ids, "attention_mask": mask}, {"position_ids": position_ids(mask), "use_cache": False}


def forward(nn, layers_path: str, ids: torch.Tensor, mask: torch.Tensor, steps: Sequence[Step] = (),
            skip: dict[int, object] | None = None, reads: Sequence[Point] = (), hidden: bool = False,
            grad_from: str | None = None, all_logits: bool = False, remote: bool | str = False) -> dict:
    """One traced forward: layers in `skip` return the given output without running (prefix reuse), `steps`
    are applied, `reads` are saved (module values of the run), `hidden` saves every layer's residual input
    and output. `grad_from` (a module path, e.g. the embedding) makes that output require grad, so the saved
    values can be differentiated after the trace (run it under torch.enable_grad()). Returns last-position
    logits, `touched` rows, `reads` values and `hidden` (inputs of layers 0..n-1, then the last layer's
    output; with `all_logits`, logits at every position (B, T, V)). Local and remote runs execute the same body."""
    if steps and (reads or hidden):
        raise ValueError("a traced forward either applies steps or reads values, not both")
    skip = skip or {}
    got: dict = {}  # made before the trace: values stored inside it survive
    inputs, kw = _inputs(ids, mask)
    with nn.trace(inputs, remote=remote, logits_to_keep=0 if all_logits else 1, **kw):
        if grad_from:
            g = nn.get(grad_from).output
            if not g.requires_grad:
                g.requires_grad_(True)
        L = nn.get(layers_path)
        n = len(L)
        todo = {p.layer for p in reads} | ({*range(n)} if hidden else set())
        if hidden:
            got["hidden"] = [_layer_input(L[0]).save()]
        for i in range(n):  # in execution order: a skip waits for its layer, reads must not lag behind it
            if i in skip:
                L[i].skip(skip[i])
            elif i in todo:
                for p in sorted((p for p in reads if p.layer == i), key=lambda p: p.stage):
                    got[p] = _read(L[i], p).save()
                if hidden:
                    got["hidden"].append(first(L[i].output).save())
        if steps:
            got["touched"] = apply(L, steps, ids.shape[0]).save()
        got["logits"] = (nn.output.logits if all_logits else nn.output.logits[:, -1]).float().save()
    return got


def generate(nn, layers_path: str, ids: torch.Tensor, mask: torch.Tensor, steps: Sequence[Step] = (),
             max_new_tokens: int = 16, pad_token_id: int | None = None, remote: bool | str = False) -> torch.Tensor:
    """Greedy continuation ids (N, prompt + new) with the steps applied at every forward of generation."""
    out: dict = {}
    with warnings.catch_warnings():  # an open tracer.all() loop ends at the last step by design: nnsight warns
        warnings.filterwarnings("ignore", message=".*was never reached.*")
        with nn.generate(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad_token_id,
                         remote=remote) as tracer:
            with tracer.invoke({"input_ids": ids, "attention_mask": mask}):
                if steps:
                    L = nn.get(layers_path)
                    for _ in tracer.all():
                        apply(L, steps, ids.shape[0])
            with tracer.invoke():  # after the open loop: the finished ids
                out["ids"] = tracer.result.save()
    return out["ids"]
