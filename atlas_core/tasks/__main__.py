"""`python -m atlas_core.tasks regenerate | check | report --model NAME | baselines --model NAME[,NAME...]`."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m atlas_core.tasks")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("regenerate", help="write data/ from the generators")
    sub.add_parser("check", help="exit 1 when data/ differs from the generators")
    for name in ("report", "baselines"):
        p = sub.add_parser(name)
        p.add_argument("--model", default="smollm2-135m")
        p.add_argument("--n", type=int, default=50)
        p.add_argument("--bucket", default="short")
    a = ap.parse_args(argv)

    import pandas as pd

    pd.set_option("display.width", 250)
    pd.set_option("display.max_columns", 40)
    from . import store

    if a.cmd == "regenerate":
        files = store.regenerate()
        print(f"wrote {len(files)} files to data/")
        return 0
    if a.cmd == "check":
        bad = store.diff_data()
        print("data/ matches the generators" if not bad else "differs: " + ", ".join(bad))
        return int(bool(bad))
    if a.cmd == "report":
        from . import load_items, validate

        tok = _tokenizer(a.model)
        for var, bucket in (("synthetic", "short"), ("natural", "short"), ("synthetic", "medium"), ("synthetic", "long")):
            _, rep = validate(load_items(None, var, bucket), tok)
            print(f"\n== {a.model}: {var} / {bucket}\n{rep.to_string(index=False)}")
        return 0
    from . import baselines

    df = baselines([m.strip() for m in a.model.split(",")], n=a.n, bucket=a.bucket)
    cols = ["model", "family", "variant", "n", "accuracy", "accuracy_lo", "accuracy_hi", "chance", "status", "p_answer",
            "logit_diff_clean", "logit_diff_clean_lo", "logit_diff_clean_hi", "logit_diff_corrupt",
            "logit_diff_corrupt_lo", "logit_diff_corrupt_hi", "pair_accuracy", "pair_status"]
    print(df[cols].round(3).to_string(index=False))
    return 0


def _tokenizer(model: str):
    if model == "smollm2-135m":
        from ..model.tiny import shared_tokenizer

        return shared_tokenizer()
    from transformers import AutoTokenizer

    from ..model.sources import EMBEDDED, embedded_dir

    return AutoTokenizer.from_pretrained(embedded_dir(model) if model in EMBEDDED else model)


if __name__ == "__main__":
    sys.exit(main())
