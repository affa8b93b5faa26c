"""Across model families: why activations of one separately trained model cannot simply be patched into another."""

from __future__ import annotations

from collections.abc import Sequence

from transformers import AutoConfig, AutoTokenizer

from ...model import sources, tiny
from ...model.subject import Subject


def _shape(model: Subject | str) -> tuple[str, str, int, int, object]:
    """(name, family, d_model, n_layers, tokenizer) of a Subject or a model name, without loading weights."""
    if isinstance(model, Subject):
        return model.name, model.arch.family, model.arch.d_model, model.arch.n_layers, model.tokenizer
    if model.startswith("tiny-"):
        tok = tiny.shared_tokenizer()
        cfg = tiny.config(model.removeprefix("tiny-"), len(tok))
    else:
        path = sources.embedded_dir(model) if model in sources.EMBEDDED else model
        cfg, tok = AutoConfig.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    cfg = getattr(cfg, "text_config", None) or cfg
    d = getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd", None)
    n = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer", None)
    return model, cfg.model_type, int(d), int(n), tok


def cross_family_why(a: Subject | str, b: Subject | str, items: Sequence) -> str:
    """Why activations of model `a` cannot simply be patched into `b` (Subjects or names; names load only config and
    tokenizer): different widths or depths, separately trained residual bases (a map would have to be learned), and
    whether the tokenizers split the items' prompts identically, which a learned map needs to align positions honestly."""
    (na, fa, da, la, ta), (nb, fb, db, lb, tb) = _shape(a), _shape(b)
    if na == nb:
        return f"{na} and {nb} are the same model: there is nothing to map"
    prompts = [it.prompt for it in items]
    same = sum(ta(p)["input_ids"] == tb(p)["input_ids"] for p in prompts)
    why = [f"{na} ({fa}, d_model={da}, {la} layers, vocab {len(ta)}) and {nb} ({fb}, d_model={db}, {lb} layers, "
           f"vocab {len(tb)})"]
    if (da, la) != (db, lb):
        why.append("have different residual widths or depths, so no activation fits the other model as it is")
    why.append("are separate models (not one the fine-tune of the other): their residual streams share no basis, so "
               "a patch needs a learned map")
    if same == len(prompts) and prompts:
        why.append(f"tokenize all {same} prompts identically, so positions align and a linear map fit on held-out "
                   "activations would be honest; it is not implemented here")
    else:
        why.append(f"tokenize only {same} of {len(prompts)} prompts identically, so token positions cannot be aligned "
                   "honestly and a map fit on them would pair unrelated tokens; answer logit differences are also in "
                   "different vocabularies")
    return "; ".join(why[:1]) + " " + "; ".join(why[1:])
