"""A loaded model under study: HF module + tokenizer + nnsight wrapper + architecture map."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch

from . import sources
from .archmap import ArchMap

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class ModelNotFound(ValueError):
    """A model name or path that cannot be resolved."""


@dataclass
class Subject:
    """A model under study. `model` is in eval mode; `tokenizer` pads on the left for traces."""

    name: str
    model: torch.nn.Module
    tokenizer: object
    arch: ArchMap
    source: str
    meta: dict = field(default_factory=dict)
    remote: bool | str = False  # every trace runs on NDIF (True) or through nnsight's local round trip ("local")
    envoy: object = field(default=None, repr=False)

    @cached_property
    def nn(self):
        """nnsight wrapper around the same module (paths unchanged): every intervention traces through it."""
        if self.envoy is not None:
            return self.envoy
        import nnsight

        return nnsight.TransformersModel(self.model, tokenizer=self.tokenizer, task="text-generation")

    @property
    def device(self) -> torch.device:
        """Where inputs live: the weights' device, or the CPU for a remote model (its weights are on NDIF)."""
        return torch.device("cpu") if self.remote is True else next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @cached_property
    def fingerprint(self) -> str:
        """Hash of config and every weight: two subjects with equal fingerprints compute the same function.
        A remote model (weights on NDIF, meta tensors here) hashes its config and hub id instead."""
        h = hashlib.blake2b(digest_size=12)
        h.update(json.dumps(self.model.config.to_dict(), sort_keys=True, default=str).encode())
        if self.remote is True:
            h.update(f"ndif:{self.name}".encode())
            return h.hexdigest()
        for k, v in self.model.state_dict().items():
            h.update(k.encode())
            h.update(v.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    def derive(self, model: torch.nn.Module, name: str, how: str) -> Subject:
        """Another model with this tokenizer (a perturbed, merged or pruned copy): its source says `how` it was
        made from this one, and it gets its own fingerprint."""
        return wrap(name, model, self.tokenizer, f"{self.source}; {how}", dict(self.meta))

    def encode(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        """Left-padded batch on the model's device (batched last-position logits equal single-prompt ones)."""
        enc = self.tokenizer(prompts, return_tensors="pt", padding=True)
        return {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}

    def __repr__(self) -> str:
        return (
            f"Subject({self.name})\n  {self.arch.summary()}\n  params={self.n_params:,} dtype={str(self.dtype).replace('torch.', '')} "
            f"device={self.device}\n  weights: {self.source}"
        )

    __str__ = __repr__


def remote_mode(flag: str | None) -> bool | str:
    """`load`'s `remote` from a command-line `--remote` flag: ndif -> True, local -> "local", none -> False."""
    return {None: False, "ndif": True, "local": "local"}[flag]


def load(
    name_or_path: str = "smollm2-135m",
    dtype: torch.dtype | str = torch.float32,
    device: str | torch.device | None = None,
    trust_remote_code: bool = False,
    quantization: str | None = None,
    remote: bool | str = False,
) -> Subject:
    """Load a causal LM: an embedded name (`smollm2-135m`, `gemma3-270m`), a tiny random family
    (`tiny-llama`, `tiny-qwen2`, `tiny-gemma3`, `tiny-lfm2`, `tiny-gpt2`), a local path or an HF id.

    `device` defaults to $ATLAS_DEVICE (a chapter sets it from its profile, `profiles.chapter`), else the CPU.
    `quantization` may be "nf4" or "int8" (bitsandbytes). `remote=True` runs every trace on NDIF: the
    model is built here on the meta device (config and tokenizer only, no weights), the key is read by
    nnsight from NDIF_API_KEY. `remote="local"` loads the weights here and sends every trace through
    nnsight's serialize/execute round trip, exactly as the server would run it (the offline test of the
    remote path)."""
    if remote is True:
        return _load_remote(name_or_path)
    if remote not in (False, "local"):
        raise ValueError(f"remote must be False, True (NDIF) or 'local' (round trip here), not {remote!r}")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from . import tiny

    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    device = device or os.environ.get("ATLAS_DEVICE") or "cpu"
    meta: dict = {}
    if name_or_path in sources.EMBEDDED:
        path = sources.embedded_dir(name_or_path)
        src = sources.EMBEDDED[name_or_path].note
        meta["embedded"] = True
    elif name_or_path.startswith("tiny-"):
        model, tok = tiny.build(name_or_path.removeprefix("tiny-"))
        s = wrap(name_or_path, model.to(device=device, dtype=dtype), tok, "random init (seed 0), built locally", meta)
        s.remote = remote
        return s
    else:
        path = Path(name_or_path).expanduser()
        if path.exists():
            if not (path / "config.json").exists():
                raise ModelNotFound(f"{path} has no config.json: not a Hugging Face model directory")
            src = f"local directory {path}"
        else:
            if "/" not in name_or_path:
                known = ", ".join(list(sources.EMBEDDED) + [f"tiny-{f}" for f in tiny.FAMILIES])
                raise ModelNotFound(f"unknown model {name_or_path!r}: use one of {known}, a local path or an HF id (org/name)")
            path = name_or_path
            src = f"Hugging Face hub id {name_or_path}"
    kw: dict = {"dtype": dtype, "trust_remote_code": trust_remote_code}
    if quantization:
        kw["quantization_config"] = _bnb_config(quantization, dtype)
        meta["quantization"] = quantization
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(path, **kw)
    except OSError as err:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        hint = " (HF_HUB_OFFLINE=1: the hub is not reachable from here; pass a local path)" if offline else ""
        raise ModelNotFound(f"cannot load {name_or_path!r}{hint}: {str(err).splitlines()[0]}") from None
    if not quantization:
        model = model.to(device)
    s = wrap(name_or_path, model, tok, src, meta)
    s.remote = remote
    return s


def _load_remote(repo_id: str) -> Subject:
    """A Subject whose traces run on NDIF: meta-device model here, one clear line for each way it cannot work."""
    import nnsight

    if not os.environ.get("NDIF_API_KEY"):
        raise ValueError("remote=True needs an NDIF API key in the environment variable NDIF_API_KEY "
                         "(nnsight reads it; it is never logged or written to results)")
    if "/" not in repo_id:
        raise ModelNotFound(f"remote models are Hugging Face hub ids (org/name), not {repo_id!r}")
    if not nnsight.is_model_running(repo_id):
        raise ModelNotFound(f"{repo_id} is not served by NDIF right now (or NDIF is unreachable): "
                            "see https://nnsight.net/status for the models it runs")
    envoy = nnsight.LanguageModel(repo_id)  # meta weights: nothing is downloaded but config and tokenizer
    s = wrap(repo_id, envoy._model, envoy.tokenizer, f"NDIF (remote) {repo_id}", {"remote": True})
    s.remote, s.envoy = True, envoy
    return s


def wrap(name: str, model, tok, src: str, meta: dict | None = None) -> Subject:
    """A Subject around a model and tokenizer built elsewhere (a planted-structure test model, an adapter merged
    into a copy, a pruned model): eval mode, left padding, a pad token, its architecture mapped."""
    arch = ArchMap.from_model(model)  # raises the one-line unsupported-architecture error first
    meta = {} if meta is None else meta
    model.eval()
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return Subject(name=name, model=model, tokenizer=tok, arch=arch, source=src, meta=meta)


def _bnb_config(kind: str, dtype: torch.dtype):
    import logging

    from transformers import BitsAndBytesConfig

    logging.getLogger("bitsandbytes.autograd._functions").setLevel(logging.ERROR)
    if kind == "nf4":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
    if kind == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    raise ValueError(f"unknown quantization {kind!r}: use 'nf4' or 'int8'")
