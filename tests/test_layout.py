"""The library's layering (README, Architecture): every import points down."""

from __future__ import annotations

import ast

from conftest import ROOT

GROUND = ("errors", "atomic", "params", "device")
PACKAGES = ("data", "models", "scoring", "train", "infer", "figures")   # bottom to top


def _astroseg_imports(path) -> set[str]:
    """The first component under `astroseg.` of every module `path` imports."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                 [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
        found |= {n.split(".")[1] for n in names if n.startswith("astroseg.")}
    return found


def test_every_library_import_points_down():
    lib = ROOT / "astroseg"
    top = {p.stem for p in lib.glob("*.py")} | {p.name for p in lib.iterdir() if p.is_dir()
                                               and (p / "__init__.py").exists()}
    assert top == set(GROUND) | set(PACKAGES) | {"__init__", "cli"}, "a new module: place it"
    for path in lib.rglob("*.py"):
        rel = path.relative_to(lib)
        own = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        if own == "cli" or own == "__init__":
            continue
        allowed = set(GROUND[:GROUND.index(own)] if own in GROUND else
                      GROUND + PACKAGES[:PACKAGES.index(own) + 1])
        wrong = _astroseg_imports(path) - allowed
        assert not wrong, f"astroseg/{rel} imports {sorted(wrong)}, which sit above it"
