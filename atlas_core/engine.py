"""Execute intervention units on a prompt batch, reusing the clean prefix.

A `Batch` runs the clean (and corrupt) prompts once, caching every decoder layer's input and call
arguments. A unit whose earliest edit is at layer L then resumes from the cached layer-L input: the
layers before L are never recomputed (prefix reuse), and units that start at the same layer are
packed into one forward as row blocks. Edits are applied by short-lived forward hooks on the site's
module (or by the layer loop itself for `block`/`resid`). `run_nnsight` executes the same unit as one
nnsight trace over the full model: the independent reference and the naive baseline.
"""

from __future__ import annotations

import contextlib
import zlib

import torch

from .interventions import Edit, Unit
from .subject import Subject

# Bump whenever a change here, in interventions.py or metrics.py could alter any number: it keys the sweep cache.
ENGINE_VERSION = "2"  # 2: leave-one-out mean, real-token-aligned resample seeded by the op (new op kinds need no bump)


class Batch:
    """A batch of prompts (one family) prepared for many interventions."""

    def __init__(
        self,
        subject: Subject,
        clean: list[str],
        corrupt: list[str] | None = None,
        answer_ids=None,
        distractor_ids=None,
        diff_pos=None,
        seed: int = 0,
    ):
        self.s = subject
        self.arch = subject.arch
        self.layers = subject.model.get_submodule(self.arch.paths.layers)
        enc = subject.encode(clean)
        self.mask = enc["attention_mask"]
        self.B, self.T = self.mask.shape
        self.first = (self.mask == 0).sum(-1)  # index of each row's first real token (left padding)
        self.answer_ids = _ids(answer_ids, self.B)
        self.distractor_ids = _ids(distractor_ids, self.B)
        self.diff_pos = None if diff_pos is None else torch.as_tensor(list(diff_pos))
        self.seed = seed
        self.runs = {"clean": self._capture(enc["input_ids"], self.mask)}
        if corrupt is not None:
            enc_c = subject.encode(corrupt)
            if enc_c["input_ids"].shape != enc["input_ids"].shape or not torch.equal(enc_c["attention_mask"], self.mask):
                lens = (enc["attention_mask"].sum(1) != enc_c["attention_mask"].sum(1)).nonzero().flatten().tolist()
                raise ValueError(f"clean and corrupt prompts differ in token length at batch rows {lens}: "
                                 "corrupt prompts must be the same length as their clean prompts (validate the items first)")
            self.runs["corrupt"] = self._capture(enc_c["input_ids"], self.mask)
        self._values: dict = {}
        self._tiled: dict = {}
        self._donors: dict[int, torch.Tensor] = {}

    # -- cached passes ---------------------------------------------------------------------------
    def _capture(self, ids: torch.Tensor, mask: torch.Tensor) -> dict:
        n = self.arch.n_layers
        calls: list = [None] * n
        final: list = [None]

        def pre(i):
            def hook(_m, args, kwargs):
                calls[i] = (args, kwargs)

            return hook

        def post(_m, _a, out):
            final[0] = out[0] if isinstance(out, tuple) else out

        hs = [lay.register_forward_pre_hook(pre(i), with_kwargs=True) for i, lay in enumerate(self.layers)]
        hs.append(self.layers[n - 1].register_forward_hook(post))
        try:
            with torch.inference_mode():
                out = self.s.model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask),
                                   use_cache=False, logits_to_keep=1)
        finally:
            for h in hs:
                h.remove()
        hidden, rest = [], []
        for args, kwargs in calls:
            kw = dict(kwargs)
            hidden.append(args[0] if args else kw.pop("hidden_states"))
            rest.append((tuple(args[1:]), kw))
        hidden.append(final[0])
        logits = out.logits[:, -1].float()
        _check_finite(logits, "clean forward")
        return {"ids": ids, "hidden": hidden, "call": rest, "logits": logits}

    def logits(self, run: str = "clean") -> torch.Tensor:
        return self.runs[run]["logits"]

    # -- positions and source values -------------------------------------------------------------
    def positions(self, pos) -> torch.Tensor:
        """(B, T) bool mask of the token positions a site addresses (left padding aware)."""
        real = self.mask.bool()
        first = self.first
        idx = None
        if pos == "all":
            return real
        if pos == "first":
            idx = first
        elif pos == "last":
            idx = torch.full_like(first, self.T - 1)
        elif pos == "diff":
            if self.diff_pos is None:
                raise ValueError("position 'diff' needs diff_pos (the first token where clean and corrupt differ)")
            idx = first + self.diff_pos.to(first.device)
        elif isinstance(pos, int):
            n = int(self.mask.sum(-1).min())
            if not -n <= pos < n:
                raise ValueError(f"position {pos} is past the shortest prompt of the batch ({n} tokens): "
                                 f"use an int in [{-n}, {n - 1}] or 'first'/'last'/'all'/'diff'")
            idx = first + pos if pos >= 0 else torch.full_like(first, self.T + pos)
        idx = idx.clamp(0, self.T - 1)  # only 'diff' can overrun
        sel = torch.zeros_like(real)
        sel[torch.arange(self.B), idx] = True
        return sel & real

    def value(self, run: str, edit: Edit) -> torch.Tensor:
        """The site's value on the unedited `run` (B, T, d_site); computed once per (run, site)."""
        site = edit.site
        key = (run, site.component, site.layer)
        if key not in self._values:
            r = self.runs[run]
            if site.component == "resid":
                v = r["hidden"][site.layer + 1]
            elif site.component == "block":
                v = r["hidden"][site.layer + 1] - r["hidden"][site.layer]
            else:
                v = self._module_value(r, site)
            self._values[key] = v
        v = self._values[key]
        return v[..., self.arch.head_slice(site.head)] if site.component == "head" else v

    def _module_value(self, r: dict, site) -> torch.Tensor:
        lay = self.layers[site.layer]
        mod = lay.get_submodule(self.arch.relative_path(site.component, site.layer))
        got: list = []
        if site.component == "head":
            h = mod.register_forward_pre_hook(lambda _m, args: got.append(args[0]))
        else:
            h = mod.register_forward_hook(lambda _m, _a, out: got.append(out[0] if isinstance(out, tuple) else out))
        try:
            args, kw = r["call"][site.layer]
            with torch.inference_mode():
                lay(r["hidden"][site.layer], *args, **kw)
        finally:
            h.remove()
        return got[0]

    def replacement(self, edit: Edit, x: torch.Tensor) -> torch.Tensor:
        """The edited value of a site whose current value (B rows) is x."""
        op, site = edit.op, edit.site
        sel = self.positions(site.position)
        if op.kind == "zero":
            repl = torch.zeros_like(x)
        elif op.kind in ("mean", "resample"):
            repl = self._pooled(edit)
        elif op.kind == "patch":
            repl = self.value(op.source, edit)
        elif op.kind == "add":
            repl = x + op.alpha * op.vector.to(device=x.device, dtype=x.dtype)
        elif op.kind == "project":
            v = op.vector.to(device=x.device, dtype=x.dtype)
            repl = x - (x @ v)[..., None] * v
        elif op.kind == "scale":
            repl = x * op.alpha
        elif op.kind == "random":
            gen = torch.Generator().manual_seed(op.seed * 1_000_003 + zlib.crc32(site.key.encode()))
            r = torch.randn(x.shape, generator=gen).to(device=x.device, dtype=x.dtype)
            repl = r / r.norm(dim=-1, keepdim=True) * x.norm(dim=-1, keepdim=True)
        else:  # pragma: no cover - Op validates kinds
            raise ValueError(op.kind)
        return torch.where(sel[..., None], repl.to(x.dtype), x)

    def donors(self, op_seed: int = 0) -> torch.Tensor:
        """Row i's resample donor row: a derangement seeded by the batch seed AND the op's seed."""
        if op_seed not in self._donors:
            gen = torch.Generator().manual_seed(zlib.crc32(f"{self.seed}:{op_seed}".encode()))
            self._donors[op_seed] = _derangement(self.B, gen).to(self.mask.device)
        return self._donors[op_seed]

    def _pooled(self, edit: Edit) -> torch.Tensor:
        """(B, T, d) mean/resample values, taken from the other prompts of the batch (see Op.mean, Op.resample)."""
        op = edit.op
        _need_pool(op.kind, self.B)
        ref = self.value("clean", edit)
        f, s, n = self._stats(edit)  # float64; only the selected values are rounded to the site's dtype
        firsts = self.positions("first")[..., None]
        if op.kind == "mean":  # leave-one-out: the other B-1 prompts, their non-first tokens pooled
            w = 1 - torch.eye(self.B, dtype=f.dtype, device=f.device)
            m_first = w @ f / (self.B - 1)
            cnt = (w @ n)[:, None]
            m_rest = torch.where(cnt > 0, (w @ s) / cnt.clamp_min(1), m_first)
            return torch.where(firsts, m_first[:, None].to(ref.dtype), m_rest[:, None].to(ref.dtype))
        p = self.donors(op.seed)
        d_first, d_mean = f[p], torch.where(n[:, None] > 0, s / n.clamp_min(1)[:, None], f)[p]
        aligned = torch.arange(self.T, device=f.device) > self.first[p][:, None]  # a donor non-first real token
        rest = torch.where(aligned[..., None], ref[p], d_mean[:, None].to(ref.dtype))
        return torch.where(firsts, d_first[:, None].to(ref.dtype), rest)

    def _stats(self, edit: Edit) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per prompt, in float64: its first real token's value (B, d), the sum (B, d) and the count (B,) of its
        other real tokens' values; computed once per site."""
        site = edit.site
        key = ("stats", site.component, site.layer, site.head)
        if key not in self._values:
            ref = self.value("clean", edit)
            rest = self.mask.bool() & ~self.positions("first")
            f = ref[torch.arange(self.B, device=ref.device), self.first].double()
            s = torch.where(rest[..., None], ref, 0).sum(1, dtype=torch.float64)
            self._values[key] = (f, s, rest.sum(1).double())
        return self._values[key]

    # -- running units ---------------------------------------------------------------------------
    def run(self, units: list[Unit], max_tokens: int = 16384) -> list[torch.Tensor]:
        """Last-position logits (B, V) for each unit; units are grouped by start layer and packed."""
        out: list = [None] * len(units)
        by_layer: dict[int, list[int]] = {}
        for i, u in enumerate(units):
            by_layer.setdefault(u.start_layer, []).append(i)
        per_pack = max(1, max_tokens // (self.B * self.T))
        for layer in sorted(by_layer):
            idx = by_layer[layer]
            for j in range(0, len(idx), per_pack):
                chunk = idx[j : j + per_pack]
                for i, lg in zip(chunk, self._run_pack([units[i] for i in chunk], layer)):
                    out[i] = lg
        return out

    def prefetch(self, units: list[Unit]) -> None:
        """Compute the source values (mean/resample/patch) the units need, before any edit hook exists."""
        for u in units:
            for e in u.edits:
                if e.op.kind in ("mean", "resample"):
                    _need_pool(e.op.kind, self.B)
                if e.op.kind in ("mean", "resample", "patch"):
                    self.value(e.op.source or "clean", e)

    def _run_pack(self, units: list[Unit], start: int) -> list[torch.Tensor]:
        k, B = len(units), self.B
        self.prefetch(units)
        h = torch.cat([self.runs[u.run]["hidden"][start] for u in units])
        hooks: dict[tuple[str, int, bool], list] = {}
        layer_edits: dict[int, list] = {}
        for j, u in enumerate(units):
            rows = slice(j * B, (j + 1) * B)
            for e in u.edits:
                if e.site.component in ("block", "resid"):
                    layer_edits.setdefault(e.site.layer, []).append((rows, e))
                else:
                    rel = self.arch.relative_path(e.site.component, e.site.layer)
                    hooks.setdefault((rel, e.site.layer, e.site.component == "head"), []).append((rows, e))
        self._touched = torch.zeros(k * B, dtype=torch.bool, device=h.device)
        with contextlib.ExitStack() as stack, torch.inference_mode():
            for (rel, layer, is_pre), entries in hooks.items():
                mod = self.layers[layer].get_submodule(rel)
                handle = (mod.register_forward_pre_hook(self._pre_hook(entries)) if is_pre
                          else mod.register_forward_hook(self._out_hook(entries)))
                stack.callback(handle.remove)
            for i in range(start, self.arch.n_layers):
                args, kw = self._tiled_call(i, k)
                out = self.layers[i](h, *args, **kw)
                out = out[0] if isinstance(out, tuple) else out
                for rows, e in layer_edits.get(i, []):
                    if e.site.component == "block":
                        d = out[rows] - h[rows]
                        new = self.replacement(e, d)
                        self._note(rows, d, new)
                        out[rows] = h[rows] + new
                    else:
                        new = self.replacement(e, out[rows])
                        self._note(rows, out[rows], new)
                        out[rows] = new
                h = out
            logits = self.head(h[:, -1])
            # rows whose every edit left the value bit-identical compute exactly the unedited run
            for j, u in enumerate(units):
                rows = slice(j * B, (j + 1) * B)
                same = ~self._touched[rows]
                logits[rows][same] = self.runs[u.run]["logits"][same]
        _check_finite(logits, f"intervened forward ({units[0].key}…)")
        return list(logits.split(B))

    def _note(self, rows: slice, old: torch.Tensor, new: torch.Tensor) -> None:
        self._touched[rows] |= (new != old).flatten(1).any(1)

    def _edit_rows(self, entries, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        for rows, e in entries:
            if e.site.component == "head":
                sl = self.arch.head_slice(e.site.head)
                new = self.replacement(e, x[rows, :, sl])
                self._note(rows, x[rows, :, sl], new)
                x[rows, :, sl] = new
            else:
                new = self.replacement(e, x[rows])
                self._note(rows, x[rows], new)
                x[rows] = new
        return x

    def _pre_hook(self, entries):
        def hook(_m, args):
            return (self._edit_rows(entries, args[0]), *args[1:])

        return hook

    def _out_hook(self, entries):
        def hook(_m, _a, out):
            if isinstance(out, tuple):
                return (self._edit_rows(entries, out[0]), *out[1:])
            return self._edit_rows(entries, out)

        return hook

    def _tiled_call(self, i: int, k: int):
        """Layer i's captured call arguments with every batch-sized tensor repeated k times."""
        if k == 1:
            return self.runs["clean"]["call"][i]
        key = (i, k)
        if key not in self._tiled:
            args, kw = self.runs["clean"]["call"][i]
            self._tiled = {kk: v for kk, v in self._tiled.items() if kk[1] == k}  # keep one pack size
            self._tiled[key] = (_tile(args, self.B, k), _tile(kw, self.B, k))
        return self._tiled[key]

    def head(self, h_last: torch.Tensor) -> torch.Tensor:
        """Final norm + unembedding (+ Gemma-style softcap) of last-position residuals (N, d)."""
        m = self.s.model
        x = m.get_submodule(self.arch.paths.final_norm)(h_last[:, None])
        logits = m.get_submodule(self.arch.paths.unembed)(x)[:, 0].float()
        cap = getattr(m.config, "final_logit_softcapping", None)
        return torch.tanh(logits / cap) * cap if cap else logits


def run_nnsight(batch: Batch, unit: Unit) -> torch.Tensor:
    """The same unit as ONE nnsight trace over the full model (no prefix reuse): reference / naive loop."""
    s, arch = batch.s, batch.arch
    ids = batch.runs[unit.run]["ids"]
    batch.prefetch([unit])
    nn = s.nn
    with torch.inference_mode(), nn.trace({"input_ids": ids, "attention_mask": batch.mask},
                                            position_ids=position_ids(batch.mask), logits_to_keep=1):
        for e in sorted(unit.edits, key=lambda e: e.site.layer):
            lay = nn.get(arch.layer_path(e.site.layer)) if hasattr(nn, "get") else _nn_get(nn, arch.layer_path(e.site.layer))
            comp = e.site.component
            if comp in ("block", "resid"):
                inp = lay.inputs[0][0] if lay.inputs[0] else lay.inputs[1]["hidden_states"]
                out = lay.output
                if comp == "block":
                    lay.output = inp + batch.replacement(e, out - inp)
                else:
                    lay.output = batch.replacement(e, out)
            elif comp == "head":
                mod = _nn_get(lay, arch.relative_path(comp, e.site.layer))
                x = mod.inputs[0][0]
                sl = arch.head_slice(e.site.head)
                new = x.clone()
                new[..., sl] = batch.replacement(e, x[..., sl])
                mod.inputs = ((new,), mod.inputs[1])
            else:
                mod = _nn_get(lay, arch.relative_path(comp, e.site.layer))
                out = mod.output
                if isinstance(out, tuple):
                    mod.output = (batch.replacement(e, out[0]), *out[1:])
                else:
                    mod.output = batch.replacement(e, out)
        logits = nn.output.logits[:, -1].float().save()
    return logits


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    """Positions counted from each row's first real token (left padding must not shift absolute positions)."""
    return (mask.long().cumsum(-1) - 1).clamp_min(0)


def _nn_get(root, path: str):
    for part in path.split("."):
        root = root[int(part)] if part.isdigit() else getattr(root, part)
    return root


def _tile(obj, B: int, k: int):
    if isinstance(obj, torch.Tensor):
        return obj.repeat(k, *([1] * (obj.dim() - 1))) if obj.dim() >= 2 and obj.shape[0] == B else obj
    if isinstance(obj, tuple):
        return tuple(_tile(o, B, k) for o in obj)
    if isinstance(obj, list):
        return [_tile(o, B, k) for o in obj]
    if isinstance(obj, dict):
        return {kk: _tile(v, B, k) for kk, v in obj.items()}
    return obj


def _ids(x, B: int) -> torch.Tensor | None:
    if x is None:
        return None
    t = torch.as_tensor(list(x), dtype=torch.long)
    if t.numel() != B:
        raise ValueError(f"expected {B} token ids, got {t.numel()}")
    return t


def _need_pool(kind: str, B: int) -> None:
    if B < 2:
        raise ValueError(f"{kind} ablation needs >= 2 prompts in a batch (got {B}): sample >= 2 prompts per family")


def _derangement(n: int, gen: torch.Generator) -> torch.Tensor:
    """A seeded permutation with no fixed point (identity for n == 1)."""
    if n == 1:
        return torch.zeros(1, dtype=torch.long)
    shift = int(torch.randint(1, n, (1,), generator=gen))
    order = torch.randperm(n, generator=gen)
    perm = torch.empty(n, dtype=torch.long)
    perm[order] = order.roll(shift)
    return perm


def _check_finite(logits: torch.Tensor, where: str) -> None:
    if not torch.isfinite(logits).all():
        raise FloatingPointError(f"NaN/inf logits in the {where}: check the model dtype (try dtype=float32) and the intervention scale")
