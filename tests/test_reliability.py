"""Bad input, wrong adapters, torn files and interrupted runs: one-line errors, exit code 2 for usage errors,
nothing lost (issue 21). Fault injection (kills, concurrent writers) is in test_faults.py."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import atlas_core.studies.atlas
from atlas_core import paths, profiles, tasks
from atlas_core.cli import main
from atlas_core.engine import batch
from atlas_core.engine.interventions import Op, Site, Unit
from atlas_core.evidence import registry
from atlas_core.model import tiny
from atlas_core.model.subject import wrap
from atlas_core.publish import book
from atlas_core.studies import adapters, steering

TINY = ["map", "--model", "tiny-llama", "--families", "ioi", "--components", "block", "--methods", "zero",
        "--seeds", "42", "--prompts-per-family", "2", "--no-heads", "--positions", "", "--no-progress"]


def _cli(capsys, *args: str) -> tuple[int, str]:
    code = main([*TINY, *args])
    err = capsys.readouterr().err.strip().splitlines()
    return code, (err[-1] if err else "")


def _one_line(code: int, err: str, want: int, needle: str) -> None:
    assert code == want and needle in err and err.startswith("atlas: error") and "Traceback" not in err, (code, err)


# --------------------------------------------------------------------------- 1. adapters from another model
def _tiny(name: str, seed: int):
    return wrap(name, *tiny.build("llama", n_layers=2, d=32, heads=2, kv_heads=1, seed=seed), "random init", {})


def test_adapter_refuses_another_model_and_missing_metadata(tmp_path):
    a, b = _tiny("tiny-a", 0), _tiny("tiny-b", 1)  # same shapes, different weights
    ad = adapters.train(a, "toy", [{"prompt": "the sky is", "completion": " blue"}] * 4,
                        adapters.Target("atlas", (1,), ("o",), r=2, alpha=4.0),
                        adapters.TrainConfig(steps=2, lr=1e-2, batch=2), checkpoints=(1,), root=tmp_path)
    for own in (ad, ad.checkpoints[1]):  # its own model (a checkpoint shares its adapter's metadata)
        with adapters.attach(a, own):
            pass
    with pytest.raises(ValueError) as err, adapters.attach(b, ad):
        pass
    msg = str(err.value)
    assert "\n" not in msg and f"trained on tiny-a ({a.fingerprint[:12]}), not on model tiny-b ({b.fingerprint[:12]})" in msg
    bare = tmp_path / "bare"
    shutil.copytree(ad.path, bare, ignore=shutil.ignore_patterns("atlas_meta.json", "ckpt-*"))
    with pytest.raises(ValueError, match="records no base-model fingerprint.*allow_unverified=True"), adapters.attach(a, bare):
        pass
    with adapters.attach(a, bare, allow_unverified=True):
        pass


# --------------------------------------------------------------------------- 3. registry
def test_registry_survives_torn_and_bad_lines(tmp_path, monkeypatch):
    monkeypatch.setenv("ATLAS_RESULTS", str(tmp_path))
    path = registry.registry_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b'{"kind": "run", "time": "t", "n": 1}\n{"kind": "run", "ti')  # a crash mid-append
    registry.append("run", n=2)
    with path.open("ab") as f:
        f.write(b'[1, 2]\n"text"\n\xff\xfe{}\n{"kind": "claim", "time": "t", "model": "m"}\n')
    registry.append("run", n=3)
    with pytest.warns(registry.RegistryWarning) as w:
        got = registry.read(kind="run")
    assert [r["n"] for r in got] == [1, 2, 3]
    msg = str(w[0].message)
    assert "\n" not in msg and "skipped 5 bad line(s)" in msg and "not UTF-8" in msg and "missing chapter" in msg
    from atlas_core.evidence import claims

    with pytest.warns(registry.RegistryWarning):
        assert claims.table("m", "smoke").empty  # chapter 00's read does not crash


# --------------------------------------------------------------------------- 2. duplicates
def test_duplicate_seeds_and_ids_are_refused(capsys, tmp_path, tok):
    _one_line(*_cli(capsys, "--seeds", "42,137,42"), 2, "seeds 42 given more than once")
    with pytest.raises(ValueError, match="seeds 42 given more than once"):
        profiles.chapter(None, "smoke", seeds=[42, 42])
    with pytest.raises(ValueError, match="seeds 7 given more than once"):
        book.build(None, "smoke", "7,7")
    from conftest import tiny_subject

    with pytest.raises(ValueError, match="seeds 1 given more than once"):
        atlas_core.studies.atlas.map_atlas(tiny_subject("llama", tok), ["ioi"], seeds=(1, 1), progress=False)
    d = tmp_path / "tasks"
    d.mkdir()
    it = tasks.load_items("ioi")[0]
    (d / "ioi.jsonl").write_text(it.to_json() + "\n" + it.to_json() + "\n")
    with pytest.raises(ValueError) as err:
        tasks.load_items("ioi", root=tmp_path)
    assert f"ioi.jsonl:2: duplicate id '{it.id}' (first on line 1)" in str(err.value) and "\n" not in str(err.value)


# --------------------------------------------------------------------------- 5. empty / out-of-range input
def test_empty_and_out_of_range_input(capsys, tok, monkeypatch):
    for args, needle in [(["--families", ""], "--families is empty"), (["--families", " , "], "--families is empty"),
                         (["--components", ""], "--components is empty"),
                         (["--prompts-per-family", "0"], "--prompts-per-family 0: must be >= 1"),
                         (["--seeds", "a,b"], "--seeds 'a,b': expected a comma list of integers")]:
        _one_line(*_cli(capsys, *args), 2, needle)
    _one_line(*_cli(capsys, "--prompts-per-family", "401"), 2, "prompts_per_family=401 is more than some families have")
    from conftest import tiny_subject

    s = tiny_subject("llama", tok)
    with pytest.raises(ValueError, match=r"have no natural/medium items valid for tiny-llama's tokenizer"):
        atlas_core.studies.atlas.map_atlas(s, None, variant="natural", bucket="medium", progress=False)
    real = tasks.load_items
    monkeypatch.setattr(tasks, "load_items", lambda f, **kw: [] if f == "antonyms" else real(f, **kw))
    with pytest.raises(ValueError, match=r"families \['antonyms'\] have no synthetic/short items"):
        atlas_core.studies.atlas.map_atlas(s, ["ioi", "antonyms"], progress=False)


# --------------------------------------------------------------------------- 7. messages instead of tracebacks
def test_dtype_device_interrupt_and_failures_are_one_line(capsys, monkeypatch, tmp_path):
    _one_line(*_cli(capsys, "--dtype", "float8"), 2, "--dtype 'float8' is unknown; allowed: float32, bfloat16, float16")
    _one_line(*_cli(capsys, "--device", "banana"), 2, "--device 'banana' is not a device")
    if not torch.cuda.is_available():
        _one_line(*_cli(capsys, "--device", "cuda"), 2, "--device cuda: this machine has 0 CUDA device(s)")
    seen = {}

    def interrupted(*a, **kw):
        seen["out"] = kw["out"]
        raise KeyboardInterrupt

    monkeypatch.setattr(atlas_core.studies.atlas, "map_atlas", interrupted)
    monkeypatch.setenv("ATLAS_RESULTS", str(tmp_path / "res"))
    code, err = _cli(capsys)
    assert code == 130 and "interrupted" in err and "run the same command again to resume" in err
    assert seen["out"] == str(tmp_path / "res" / "atlas")  # the default --out follows $ATLAS_RESULTS

    def nan(*a, **kw):
        batch._check_finite(torch.tensor([float("nan")]), "intervened forward (block.L0@all)")

    monkeypatch.setattr(atlas_core.studies.atlas, "map_atlas", nan)
    code, err = _cli(capsys)
    assert code == 1 and "FloatingPointError: NaN/inf logits in the intervened forward" in err and "Traceback" not in err
    assert "float32 already: the intervention scale" in err and "try dtype=float32" not in err
    with pytest.raises(FloatingPointError):
        main([*TINY, "--debug"])
    with pytest.raises(FloatingPointError, match="bfloat16: try dtype=float32"):
        batch._check_finite(torch.tensor([float("inf")]), "clean forward", torch.bfloat16)


def test_steered_generation_says_nan_instead_of_empty(tok):
    from conftest import tiny_subject

    s = tiny_subject("llama", tok)
    boom = Unit.of(Site("block", 0), Op.add(torch.full((s.arch.d_model,), float("inf")), 1.0))
    with pytest.raises(FloatingPointError) as err:
        steering.generate(s, ["The capital of France is"], boom, max_new_tokens=3)
    assert "first forward of steered generation" in str(err.value) and "\n" not in str(err.value)
    assert len(steering.generate(s, ["The capital of France is"], None, max_new_tokens=3)) == 1


# --------------------------------------------------------------------------- 4. a failed chapter keeps the last good one
HEADER = "# ---\n# jupyter:\n#   kernelspec:\n#     display_name: Python 3\n#     language: python\n#     name: python3\n# ---\n\n"


def test_failed_chapter_keeps_last_good_notebook(tmp_path):
    ch = tmp_path / "09_broken.py"
    ch.write_text(HEADER + '# %% tags=["parameters"]\nprofile = "smoke"\n\n# %%\nraise ValueError("boom in chapter")\n')
    out = tmp_path / "executed" / "09_broken.ipynb"
    out.parent.mkdir()
    out.write_text('{"good": true}')
    with pytest.raises(book.ChapterFailed) as err:
        book.execute(ch, out, {"profile": "smoke"})
    msg = str(err.value)
    assert "\n" not in msg and "chapter 09_broken failed (ValueError: boom in chapter)" in msg
    assert f"the last good notebook {out} is kept" in msg and "09_broken.failed.ipynb" in msg
    assert out.read_text() == '{"good": true}'
    failed = json.loads((out.parent / "09_broken.failed.ipynb").read_text())
    assert any("boom in chapter" in json.dumps(c.get("outputs", [])) for c in failed["cells"])
    assert "boom in chapter" in (out.parent / "09_broken.failed.log").read_text()


# --------------------------------------------------------------------------- 6. output checked before the compute
def test_out_checked_before_compute_and_locked(capsys, tmp_path, monkeypatch):
    real_map = atlas_core.studies.atlas.map_atlas
    called = []
    monkeypatch.setattr(atlas_core.studies.atlas, "map_atlas", lambda *a, **kw: called.append(1))
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    _one_line(*_cli(capsys, "--out", str(blocker)), 2, f"output directory {blocker} is a file")
    _one_line(*_cli(capsys, "--out", str(blocker / "sub")), 2, f"output directory {blocker / 'sub'} is not writable")
    with paths.locked(tmp_path / "busy"):
        _one_line(*_cli(capsys, "--out", str(tmp_path / "busy")), 2, "another run is writing")
    assert not called
    with paths.locked(tmp_path / "busy"):  # released when its holder is done
        pass
    # a Python caller of map_atlas (no CLI) is refused at save time while another run holds the directory
    from atlas_core import load
    from atlas_core.engine.sweep import Cache

    s = load("tiny-llama")
    kw = dict(families=["ioi"], components=("block",), methods=("zero",), seeds=(1,), prompts_per_family=2,
              heads=False, positions=(), progress=False, neutral_prompts=0, direct=False,
              cache=Cache(tmp_path / "c.sqlite"))
    import subprocess
    import sys

    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from atlas_core import paths\n"
                               f"with paths.locked({str(tmp_path / 'held')!r}):\n print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"  # another process writes that directory now
        with pytest.raises(ValueError, match="another run is writing"):
            real_map(s, out=tmp_path / "held", **kw)
    finally:
        holder.kill()
        holder.wait()
    with paths.locked(tmp_path / "mine", reentrant=True):  # under this process's own lock it saves
        assert real_map(s, out=tmp_path / "mine", **kw) is not None
