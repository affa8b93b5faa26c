"""The house rules, enforced: no reach into another module's private names, no functions in chapters, no
module the size of a second pipeline."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "atlas_core"
MAX_LINES = 420  # "no module over ~400 lines"


def _modules():
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def _private_uses(path: Path) -> list[str]:
    """`from x import _name`, and `mod._name` where `mod` is an atlas_core module this file imported."""
    tree = ast.parse(path.read_text())
    own = ("atlas_core", ".")
    mods, bad = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module != "__future__":
            src = "." * node.level + (node.module or "")
            if src.startswith(own):
                for a in node.names:
                    if a.name.startswith("_") and not a.name.startswith("__"):
                        bad.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {a.name} from {src}")
                    mods.add(a.asname or a.name)
        elif isinstance(node, ast.Import):
            mods.update((a.asname or a.name).split(".")[0] for a in node.names if a.name.startswith("atlas_core"))
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in mods
                and node.attr.startswith("_") and not node.attr.startswith("__")):
            bad.append(f"{path.relative_to(ROOT)}:{node.lineno} uses {node.value.id}.{node.attr}")
    return bad


def test_no_module_or_chapter_reaches_into_another_modules_private_names():
    bad = [b for p in [*_modules(), *sorted((ROOT / "chapters").glob("*.py"))] for b in _private_uses(p)]
    assert not bad, "\n".join(bad)


def test_the_private_name_check_can_fail(tmp_path, monkeypatch):
    f = tmp_path / "x.py"
    f.write_text("from atlas_core.engine.sweep import _key\nfrom atlas_core import tasks\ntasks._x\ntasks.__doc__\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert [b.split(" ", 1)[1] for b in _private_uses(f)] == ["imports _key from atlas_core.engine.sweep", "uses tasks._x"]


def test_chapters_define_no_functions():
    bad = []
    for c in sorted((ROOT / "chapters").glob("*.py")):
        for node in ast.walk(ast.parse(c.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda):
                bad.append(f"{c.name}:{node.lineno} defines {getattr(node, 'name', 'a lambda')}")
    assert not bad, "chapters are thin: move these into a study module and test them there\n" + "\n".join(bad)


def test_no_module_is_a_second_pipeline_in_size():
    big = [f"{p.relative_to(ROOT)}: {n} lines" for p in _modules() if (n := len(p.read_text().splitlines())) > MAX_LINES]
    assert not big, "split these along their sections (<= ~400 lines):\n" + "\n".join(big)
