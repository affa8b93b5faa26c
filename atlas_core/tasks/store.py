"""Write data/ from the generators (byte-identical for a seed) and compare data/ with the generators."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

from ..paths import data_dir
from .core import FAMILIES, Item
from .training import CONCEPTS, TRAIN_FAMILIES, build_concept, build_training

SEED = 0
REFERENCE_TOKENIZER = "smollm2-135m"


def _dump(rows) -> bytes:
    return "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


def build_files(seed: int = SEED, tokenizer=None) -> dict[str, bytes]:
    """{relative path: bytes} of every data file (manifest excluded). generation_rejects.json counts, per
    family, the drafts the generators discarded under the reference tokenizer, and why."""
    from .generators import Tok, generate_family
    from .neutral_text import SENTENCES

    if tokenizer is None:
        from ..model.tiny import shared_tokenizer

        tokenizer = shared_tokenizer()
    T = Tok(tokenizer)
    files: dict[str, bytes] = {}
    rejects = {}
    for fam in FAMILIES:
        rejects[fam] = Counter()
        items: list[Item] = generate_family(fam, T, seed=seed, rejects=rejects[fam])
        files[f"tasks/{fam}.jsonl"] = "".join(it.to_json() + "\n" for it in items).encode("utf-8")
    files["generation_rejects.json"] = (json.dumps({f: dict(sorted(c.items())) for f, c in rejects.items()}, indent=1)
                                        + "\n").encode("utf-8")
    for fam in TRAIN_FAMILIES:
        for split, rows in build_training(fam, seed).items():
            files[f"train/{fam}.{split}.jsonl"] = _dump(rows)
    for name in CONCEPTS:
        files[f"contrastive/{name}.jsonl"] = _dump([{"positive": p, "negative": n} for p, n in build_concept(name, seed)])
    files["neutral/sentences.jsonl"] = _dump([{"text": t} for t in SENTENCES])
    return files


def manifest(files: dict[str, bytes], seed: int = SEED) -> bytes:
    entries = {}
    for path, data in sorted(files.items()):
        if not path.endswith(".jsonl"):
            entries[path] = {"sha256": hashlib.sha256(data).hexdigest()}
            continue
        lines = [json.loads(x) for x in data.decode("utf-8").splitlines()]
        e = {"lines": len(lines), "sha256": hashlib.sha256(data).hexdigest()}
        if path.startswith("tasks/"):
            e["counts"] = dict(sorted(Counter(f"{r['variant']}/{r['bucket']}" for r in lines).items()))
        entries[path] = e
    m = {"seed": seed, "generator": "python -m atlas_core.tasks regenerate",
         "reference_tokenizer": REFERENCE_TOKENIZER, "files": entries}
    return (json.dumps(m, indent=1, sort_keys=True) + "\n").encode("utf-8")


def regenerate(root: Path | None = None, seed: int = SEED) -> dict[str, bytes]:
    """Write every data file and manifest.json under root (default data/); returns what was written."""
    root = root or data_dir()
    files = build_files(seed)
    files["manifest.json"] = manifest(files, seed)
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return files


def diff_data(root: Path | None = None, seed: int = SEED) -> list[str]:
    """Paths where data/ disagrees with the generators (empty list when they agree byte for byte)."""
    root = root or data_dir()
    files = build_files(seed)
    files["manifest.json"] = manifest(files, seed)
    bad = [rel for rel, data in sorted(files.items()) if not (root / rel).is_file() or (root / rel).read_bytes() != data]
    return bad
