"""Execute intervention units on a prompt batch through nnsight, reusing the clean prefix.

A `Batch` traces the clean (and corrupt) prompts once, caching every decoder layer's residual input and
output. A unit whose earliest edit is at layer L then runs as one nnsight trace in which layers 0..L-1 are
skipped (`Envoy.skip`) with their cached outputs: the prefix is never recomputed, and units that start at
the same layer are packed into one trace as row blocks. Edits are applied by `tracing.apply`, the one
intervention primitive; the model's own forward computes masks, rotary embeddings and caches.
"""

from __future__ import annotations

import zlib

import torch

from ..model.subject import Subject
from . import tracing
from .interventions import Edit, Site, Unit

# Bump whenever a change here, in interventions.py or metrics.py could alter any number: it keys the sweep cache.
ENGINE_VERSION = "2"  # 2: leave-one-out mean, real-token-aligned resample seeded by the op (new op kinds need no bump)


class Batch:
    """A batch of prompts (one family) prepared for many interventions."""

    @classmethod
    def of_items(cls, subject: Subject, items, corrupt: bool = True, seed: int = 0,
                 remote: bool | str | None = None) -> Batch:
        """A batch of validated task items (prompt, corrupt, answer_id, distractor_id, diff_pos)."""
        return cls(subject, [it.prompt for it in items], [it.corrupt for it in items] if corrupt else None,
                   [it.answer_id for it in items], [it.distractor_id for it in items], [it.diff_pos for it in items],
                   seed=seed, remote=remote)

    def __init__(
        self,
        subject: Subject,
        clean: list[str],
        corrupt: list[str] | None = None,
        answer_ids=None,
        distractor_ids=None,
        diff_pos=None,
        seed: int = 0,
        remote: bool | str | None = None,
    ):
        self.s = subject
        # remote (NDIF, or nnsight's local round trip): no prefix reuse — uploading cached layer outputs costs
        # more than recomputing them there — and residual values are fetched only when a unit needs them.
        self.remote = subject.remote if remote is None else remote
        self.arch = subject.arch
        enc = subject.encode(clean)
        self.mask = enc["attention_mask"]
        self.B, self.T = self.mask.shape
        self.first = (self.mask == 0).sum(-1)  # index of each row's first real token (left padding)
        self.answer_ids = _ids(answer_ids, self.B)
        self.distractor_ids = _ids(distractor_ids, self.B)
        self.diff_pos = None if diff_pos is None else torch.as_tensor(list(diff_pos))
        self.seed = seed
        self.runs = {"clean": self._capture(enc["input_ids"])}
        if corrupt is not None:
            enc_c = subject.encode(corrupt)
            if enc_c["input_ids"].shape != enc["input_ids"].shape or not torch.equal(enc_c["attention_mask"], self.mask):
                lens = (enc["attention_mask"].sum(1) != enc_c["attention_mask"].sum(1)).nonzero().flatten().tolist()
                raise ValueError(f"clean and corrupt prompts differ in token length at batch rows {lens}: "
                                 "corrupt prompts must be the same length as their clean prompts (validate the items first)")
            self.runs["corrupt"] = self._capture(enc_c["input_ids"])
        self._values: dict = {}
        self._donors: dict[int, torch.Tensor] = {}

    # -- cached passes ---------------------------------------------------------------------------
    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, **kw) -> dict:
        with torch.inference_mode():
            return tracing.forward(self.s.nn, self.arch.paths.layers, ids, mask, remote=self.remote, **kw)

    def _capture(self, ids: torch.Tensor) -> dict:
        """One trace: every layer's residual input and output (hidden[i] = input of layer i) and the logits."""
        got = self._forward(ids, self.mask, hidden=not self.remote)
        _check_finite(got["logits"], "clean forward", self.s.dtype)
        return {"ids": ids, "hidden": got.get("hidden"), "logits": got["logits"]}

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
        """The site's value on the unedited `run` (B, T, d_site); read on demand, one trace per module site
        (`values` reads many sites in one trace)."""
        return self.values(run, [edit.site])[0]

    def values(self, run: str, sites: list[Site]) -> list[torch.Tensor]:
        """The unedited `run`'s values at `sites` (B, T, d_site each): residual ones from the capture, every
        module one from a single trace that runs only the layers holding them."""
        self._fill(run, [s for s in sites if (run, s.component, s.layer) not in self._values])
        return [(v[..., self.arch.head_slice(s.head)] if s.component == "head" else v)
                for s in sites for v in [self._values[(run, s.component, s.layer)]]]

    def borrow(self, run: str, donor: Batch, sites: list[Site]) -> None:
        """Take `donor`'s unedited `run` (same prompts, same shapes) as this batch's: its residual stream, logits
        and values at `sites`, computed on the donor's model. Cross-model patching: `Op.patch(run)` units then
        write the donor model's values into this batch's model."""
        self.runs[run] = {**self.runs[run], "hidden": donor.runs[run]["hidden"], "logits": donor.logits(run)}
        donor.values(run, sites)  # computed on the donor's model, whole modules (heads are sliced on use)
        for s in sites:
            self._values[(run, s.component, s.layer)] = donor._values[(run, s.component, s.layer)]

    def _fill(self, run: str, sites: list[Site]) -> None:
        r, need = self.runs[run], {}
        for s in sites:
            comp, layer = s.component, s.layer
            h = r["hidden"]
            if h is not None and comp in ("resid", "block"):
                self._values[(run, comp, layer)] = h[layer + 1] - h[layer] if comp == "block" else h[layer + 1]
                continue
            out = tracing.point(self.arch, s)
            pts = (out, tracing.Point(layer, "", "input", -1)) if comp == "block" else (out,)
            need[(comp, layer)] = pts
        if not need:
            return
        keep = {pts[0].layer for pts in need.values()}
        skip = {} if r["hidden"] is None else {i: r["hidden"][i + 1] for i in range(self.arch.n_layers) if i not in keep}
        got = self._forward(r["ids"], self.mask, reads=sorted({p for pts in need.values() for p in pts},
                                                              key=lambda p: (p.layer, p.stage)), skip=skip)
        for (comp, layer), pts in need.items():
            self._values[(run, comp, layer)] = got[pts[0]] - got[pts[1]] if comp == "block" else got[pts[0]]

    def replacement(self, edit: Edit, x: torch.Tensor) -> torch.Tensor:
        """The edited value of a site whose current value (B rows) is x."""
        return tracing.new_value(self.step(edit), x)

    def step(self, edit: Edit, rows: slice = slice(None)) -> tracing.Step:
        """The edit compiled for this batch: positions resolved, source values (mean/resample/patch) attached."""
        op, site = edit.op, edit.site
        if op.kind in ("mean", "resample"):
            kw = {"kind": "set", "value": self._pooled(edit)}
        elif op.kind == "patch":
            kw = {"kind": "set", "value": self.value(op.source, edit)}
        else:
            kw = _op_fields(edit)
        cols = self.arch.head_slice(site.head) if site.component == "head" else None
        return tracing.Step(tracing.point(self.arch, site), rows=rows, cols=cols, sel=self.positions(site.position),
                            block=site.component == "block", key=edit.key, **kw)

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
        """Compute the source values (mean/resample/patch) the units need, before their trace opens."""
        todo: dict[str, dict] = {}
        for u in units:
            for e in u.edits:
                if e.op.kind in ("mean", "resample"):
                    _need_pool(e.op.kind, self.B)
                if e.op.kind in ("mean", "resample", "patch") and e.site.component not in ("resid", "block"):
                    run = e.op.source or "clean"
                    if (run, e.site.component, e.site.layer) not in self._values:
                        todo.setdefault(run, {})[(e.site.component, e.site.layer)] = e.site
        for run, sites in todo.items():
            self._fill(run, list(sites.values()))

    def _run_pack(self, units: list[Unit], start: int) -> list[torch.Tensor]:
        k, B = len(units), self.B
        self.prefetch(units)
        ids = torch.cat([self.runs[u.run]["ids"] for u in units])
        steps = [self.step(e, slice(j * B, (j + 1) * B)) for j, u in enumerate(units) for e in u.edits]
        skip = {}
        if start and not self.remote:  # prefix reuse: layers < start are skipped; only layer start-1's output is read
            prefix = torch.cat([self.runs[u.run]["hidden"][start] for u in units])
            skip = dict.fromkeys(range(start), prefix)
        got = self._forward(ids, self.mask.repeat(k, 1), steps=steps, skip=skip)
        # rows whose every edit left the value bit-identical compute exactly the unedited run
        base = torch.cat([self.runs[u.run]["logits"] for u in units])
        logits = torch.where(got["touched"].to(base.device)[:, None], got["logits"], base)
        _check_finite(logits, f"intervened forward ({units[0].key}…)", self.s.dtype)
        return list(logits.split(B))



def last_logits(subject: Subject, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(N, V) last-position logits of one plain traced forward (local or remote, as the subject says)."""
    with torch.inference_mode():
        return tracing.forward(subject.nn, subject.arch.paths.layers, ids, mask, remote=subject.remote)["logits"]


def generate(subject: Subject, prompts: list[str], unit: Unit | None = None, max_new_tokens: int = 16,
             remote: bool | str | None = None) -> list[str]:
    """Greedy continuations with the unit's edits applied at every forward of generation: position "all" edits
    every token of each forward (the prompt, then each new token), "last" the newest token. Edits that need
    a source run (mean, resample, patch) have no meaning here and raise."""
    steps = []
    for e in unit.edits if unit else ():
        if e.op.kind in ("mean", "resample", "patch") or e.site.position not in ("all", "last"):
            raise ValueError(f"generation takes edits at position 'all'/'last' that need no source run; got {e.key}")
        steps.append(tracing.Step(tracing.point(subject.arch, e.site), sel=e.site.position, block=e.site.component == "block",
                                  cols=subject.arch.head_slice(e.site.head) if e.site.head is not None else None,
                                  key=e.key, **_op_fields(e)))
    enc = subject.encode(list(prompts))
    tok = subject.tokenizer
    with torch.inference_mode():
        ids = tracing.generate(subject.nn, subject.arch.paths.layers, enc["input_ids"], enc["attention_mask"], steps,
                               max_new_tokens, tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
                               remote=subject.remote if remote is None else remote)
    new = ids[:, enc["input_ids"].shape[1]:]
    if new.shape[1] and (new == new[:, :1]).all(1).any():  # NaN logits decode as one repeated token (or ''): check
        with torch.inference_mode():
            _check_finite(tracing.forward(subject.nn, subject.arch.paths.layers, enc["input_ids"], enc["attention_mask"],
                                          steps, remote=subject.remote if remote is None else remote)["logits"],
                          f"first forward of steered generation ({unit.key})" if unit else "clean forward of generation",
                          subject.dtype)
    return tok.batch_decode(new, skip_special_tokens=True)


def _op_fields(edit: Edit) -> dict:
    """Step fields of an op that needs no source value."""
    op = edit.op
    if op.kind in ("add", "project"):
        return {"kind": op.kind, "vector": op.vector, "alpha": op.alpha}
    if op.kind == "random":
        return {"kind": "random", "seed": op.seed * 1_000_003 + zlib.crc32(edit.site.key.encode())}
    return {"kind": op.kind, "alpha": op.alpha}


def run_nnsight(batch: Batch, unit: Unit) -> torch.Tensor:
    """The same unit as one trace over the full model, no prefix reuse: the naive baseline."""
    return batch._run_pack([unit], 0)[0]


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


def _check_finite(logits: torch.Tensor, where: str, dtype: torch.dtype = torch.float32) -> None:
    """A one-line FloatingPointError on NaN/inf logits, with the fix that fits the model's `dtype`."""
    if not torch.isfinite(logits).all():
        name = str(dtype).replace("torch.", "")
        if dtype in (torch.float16, torch.bfloat16):
            hint = f"the model runs in {name}: try dtype=float32, or a smaller intervention scale"
        elif where.startswith("clean forward"):
            hint = f"the model runs in {name} and nothing was edited: its weights or inputs are not finite"
        else:
            hint = f"the model runs in {name} already: the intervention scale (alpha, vector norm) is too large"
        raise FloatingPointError(f"NaN/inf logits in the {where}: {hint}")
