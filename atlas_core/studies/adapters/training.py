"""Train an adapter, or reuse it from the cache, and attach a saved one to its subject.

Training is deterministic given the seed (right-padded batches, loss on completion tokens only, constant learning
rate, so the step-k checkpoint of a long run equals a k-step run). Adapters are cached under ``results/lora/``
keyed by (model fingerprint, family, target, training config, data), written to a temporary folder and renamed,
so a re-executed chapter reuses them and a killed run leaves no half file. `attach` loads one into its subject
after `check_fits`, which turns an adapter that does not fit the model, or was trained on another, into a
one-line ValueError naming both.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from lion_pytorch import Lion
from peft import PeftModel, get_peft_model
from safetensors import safe_open
from transformers.optimization import Adafactor

from ...model.subject import Subject
from ...paths import content_key, read_json, results_dir, write_json_atomic
from .data import TrainConfig, collate, completion_logits, data_hash, train_tokenizer
from .targeting import Target, lora_config

CACHE_VERSION = 2
OPTIMIZERS = ("adamw", "adafactor", "lion")
LION_LR_FACTOR = 1 / 3  # Lion wants a 3-10x smaller step than AdamW (Chen et al. 2023)


def cache_key(*parts) -> str:
    """The adapters' cache keys (adapter folders, evaluations beside them): 16 hex digits."""
    return content_key(*parts, digest_size=8)


@contextmanager
def _wrapped(subject: Subject, make: Callable) -> Iterator:
    """Yield a PeftModel over subject.model; always unload afterwards (base weights untouched)."""
    grads = {n: p.requires_grad for n, p in subject.model.named_parameters()}
    pm = make(subject.model)
    try:
        yield pm
    finally:
        pm.unload()
        if hasattr(subject.model, "peft_config"):
            del subject.model.peft_config
        for n, p in subject.model.named_parameters():
            p.requires_grad_(grads.get(n, False))
        subject.model.eval()


def adapter_meta(adapter_dir: str | Path) -> dict:
    """The adapter's `atlas_meta.json`; a checkpoint (`ckpt-N`) shares its adapter's; {} when there is none."""
    adapter_dir = Path(adapter_dir)
    meta = read_json(adapter_dir / "atlas_meta.json")
    if not meta and adapter_dir.name.startswith("ckpt-"):
        meta = read_json(adapter_dir.parent / "atlas_meta.json")
    return meta


def check_fits(adapter_dir: str | Path, subject: Subject, allow_unverified: bool = False) -> None:
    """Raise a one-line ValueError if the adapter's LoRA shapes do not fit the model's modules, or if it was trained
    on another model (its recorded base fingerprint differs). An adapter that records no base fingerprint (no
    `atlas_meta.json`: trained elsewhere) is refused unless `allow_unverified` (then only shapes are checked)."""
    adapter_dir = Path(adapter_dir)
    meta = adapter_meta(adapter_dir)
    origin = f"{meta.get('model', '?')} ({str(meta.get('fingerprint', '?'))[:12]})"
    mods = dict(subject.model.named_modules())
    with safe_open(str(adapter_dir / "adapter_model.safetensors"), "pt") as f:
        for key in sorted(f.keys()):
            m = re.match(r"(?:base_model\.model\.)?(.*)\.lora_([AB])\.weight$", key)
            if not m:
                continue
            path, ab = m.groups()
            shape = tuple(f.get_slice(key).get_shape())
            base = mods.get(path)
            if base is None:
                raise ValueError(f"adapter {adapter_dir.name} trained on {origin} targets {path} (lora_{ab} {shape}), "
                                 f"which model {subject.name} ({subject.fingerprint[:12]}) does not have "
                                 f"({subject.arch.n_layers} layers, d_model={subject.arch.d_model})")
            w = base.weight
            out_f, in_f = (w.shape[1], w.shape[0]) if subject.arch.family == "gpt2" else (w.shape[0], w.shape[1])
            need = in_f if ab == "A" else out_f
            got = shape[1] if ab == "A" else shape[0]
            if need != got:
                raise ValueError(f"adapter {adapter_dir.name} trained on {origin} has {path}.lora_{ab} of shape "
                                 f"{list(shape)}, but model {subject.name} ({subject.fingerprint[:12]}) has {path} of "
                                 f"shape [out={out_f}, in={in_f}]")
    if not meta.get("fingerprint"):
        if not allow_unverified:
            raise ValueError(f"adapter {adapter_dir} records no base-model fingerprint (no atlas_meta.json), so it cannot "
                             f"be checked against model {subject.name} ({subject.fingerprint[:12]}); pass "
                             "allow_unverified=True if you know it was trained on this model")
    elif meta["fingerprint"] != subject.fingerprint:
        raise ValueError(f"adapter {adapter_dir.name} was trained on {origin}, not on model {subject.name} "
                         f"({subject.fingerprint[:12]}): an adapter only means something on its own base model")


@contextmanager
def attach(subject: Subject, adapter: Adapter | str | Path, allow_unverified: bool = False) -> Iterator:
    """The subject with a saved adapter loaded: yields the PeftModel (it addresses the adapter: scaling,
    `disable_adapter`). PEFT injects the adapter into `subject.model` in place, so until the block ends the subject
    itself, and the engine's forwards on it, compute the adapted model; afterwards it is unloaded. Raises a
    one-line ValueError if it does not fit or was trained on another model (`check_fits`; `allow_unverified`
    accepts an adapter without atlas metadata)."""
    path = adapter.path if isinstance(adapter, Adapter) else Path(adapter)
    check_fits(path, subject, allow_unverified)

    def make(model: torch.nn.Module) -> PeftModel:
        try:
            return PeftModel.from_pretrained(model, str(path))
        except (RuntimeError, ValueError) as err:  # PEFT/torch size or target mismatch: say it in one line
            first = str(err).strip().splitlines()
            raise ValueError(f"adapter {path.name} does not fit model {subject.name}: "
                             f"{' '.join(s.strip() for s in first[:3])[:400]}") from None

    with _wrapped(subject, make) as pm:
        pm.eval()
        yield pm


@dataclass
class Adapter:
    """A trained adapter on disk plus what training reported."""

    path: Path
    target: Target
    train: TrainConfig
    family: str
    n_trainable: int
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    checkpoints: dict[int, Path] = field(default_factory=dict)
    cached: bool = False

    @property
    def final_loss(self) -> float:
        """Mean train loss over the last quarter of the steps (one step is one noisy batch)."""
        if not self.losses:
            return float("nan")
        return float(np.mean(self.losses[-max(1, len(self.losses) // 4):]))


def _optimizer(name: str, params: list, lr: float) -> torch.optim.Optimizer:
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    if name == "adafactor":
        return Adafactor(params, lr=lr, relative_step=False, scale_parameter=False, warmup_init=False)
    if name == "lion":
        return Lion(params, lr=lr * LION_LR_FACTOR, weight_decay=0.0)
    raise ValueError(f"unknown optimizer {name!r}; known: {', '.join(OPTIMIZERS)}")


def adapter_dir(subject: Subject, family: str, t: Target, tc: TrainConfig, examples_hash: str,
                root: Path | None = None) -> Path:
    """Where a run's adapter is cached: ``results/lora/<fingerprint[:12]>/<family>/<strategy>-s<seed>-<key>``, the key
    over (CACHE_VERSION, fingerprint, family, target, training config, `data_hash` of the examples)."""
    key = cache_key(CACHE_VERSION, subject.fingerprint, family, asdict(t), asdict(tc), examples_hash)
    return Path(root or results_dir() / "lora") / subject.fingerprint[:12] / family / f"{t.strategy}-s{tc.seed}-{key}"


def load_cached(path: Path, t: Target, tc: TrainConfig, family: str) -> Adapter | None:
    """The complete adapter cached at `path` (metadata and weights written), or None."""
    meta = read_json(path / "atlas_meta.json")
    if not meta or not (path / "adapter_model.safetensors").exists():
        return None
    ck = {int(s): path / f"ckpt-{s}" for s in meta.get("checkpoints", []) if (path / f"ckpt-{s}").exists()}
    return Adapter(path, t, tc, family, meta["n_trainable"], meta["losses"], meta["seconds"], ck, cached=True)


def train(subject: Subject, family: str, examples: Sequence[dict], t: Target, tc: TrainConfig,
          checkpoints: Sequence[int] = (), root: Path | None = None, progress: bool = False) -> Adapter:
    """Train (or reuse from the cache) a LoRA adapter on (prompt, completion) examples; `checkpoints`: steps whose
    adapter is saved too (a cached run without them is trained again)."""
    path = adapter_dir(subject, family, t, tc, data_hash(examples), root)
    if (hit := load_cached(path, t, tc, family)) is not None and set(checkpoints) <= set(hit.checkpoints):
        return hit
    if subject.remote is True:
        raise ValueError(f"training a LoRA needs {subject.name}'s weights here; NDIF runs traces, not training: "
                         "run this chapter without remote")
    tok = train_tokenizer(subject)
    torch.manual_seed(tc.seed)  # LoRA A init
    order = np.random.default_rng(tc.seed).permutation(len(examples))
    t0 = time.perf_counter()
    losses: list[float] = []
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".tmp-{path.name}-"))
    try:
        with _wrapped(subject, lambda m: get_peft_model(m, lora_config(t, subject.arch))) as pm:
            params = [p for p in pm.parameters() if p.requires_grad]
            n_trainable = sum(p.numel() for p in params)
            opt = _optimizer(tc.optimizer, params, tc.lr)
            pm.train()
            for step in range(tc.steps + 1):
                if step in checkpoints:
                    pm.save_pretrained(str(tmp / f"ckpt-{step}"))
                if step == tc.steps:
                    break
                idx = [order[(step * tc.batch + j) % len(order)] for j in range(tc.batch)]
                batch = {k: v.to(subject.device) for k, v in collate(tok, [examples[i] for i in idx], tc.max_len).items()}
                logits, targets, _ = completion_logits(pm, batch)
                loss = torch.nn.functional.cross_entropy(logits, targets)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                losses.append(float(loss.detach()))
                if progress and (step % 10 == 0 or step == tc.steps - 1):
                    print(f"  [{t.tag} seed {tc.seed}] step {step} loss {losses[-1]:.3f}", flush=True)
            pm.eval()
            pm.save_pretrained(str(tmp))
        secs = time.perf_counter() - t0
        meta = {"model": subject.name, "fingerprint": subject.fingerprint, "family": family, "target": asdict(t),
                "train": asdict(tc), "n_trainable": n_trainable, "losses": losses, "seconds": secs,
                "checkpoints": sorted(checkpoints), "data_hash": data_hash(examples)}
        write_json_atomic(tmp / "atlas_meta.json", meta)
        done = load_cached(path, t, tc, family)  # another process may have finished the same run first
        if done is None or not set(checkpoints) <= set(done.checkpoints):
            shutil.rmtree(path, ignore_errors=True)  # (a stale partial copy would be incomplete: replace it)
            os.replace(tmp, path)  # appears complete or not at all
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return replace(load_cached(path, t, tc, family), cached=False)
