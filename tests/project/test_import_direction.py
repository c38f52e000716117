"""Adapters are a leaf under generation and tuning, and routers sit beside generation, not in it:
the import graph says so (parsed, not grepped)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "layered"


def _imports(folder: Path) -> dict[str, set[str]]:
    """Every module each file under ``folder`` imports (absolute names; relative ones resolved)."""
    found: dict[str, set[str]] = {}
    for path in sorted(folder.rglob("*.py")):
        package = ".".join(path.relative_to(ROOT.parent).with_suffix("").parts[:-1])
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join([*parts[: len(parts) - node.level + 1], *([base] if base else [])])
                names.add(base)
                names.update(f"{base}.{alias.name}" for alias in node.names)
        found[str(path.relative_to(ROOT.parent))] = names
    return found


def _offenders(folder: str, forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    files = _imports(ROOT / folder)
    assert files, f"no Python files under layered/{folder}"
    bad = {path: sorted(n for n in names if any(n == p or n.startswith(p + ".") for p in forbidden)) for path, names in files.items()}
    return {path: names for path, names in bad.items() if names}


def test_adapters_import_neither_generation_nor_tuning():
    assert _offenders("adapters", ("layered.generation", "layered.tuning")) == {}


def test_generation_never_imports_tuning():
    assert _offenders("generation", ("layered.tuning",)) == {}


def test_routers_live_outside_generation_and_import_neither_generation_nor_tuning():
    # A router picks an adapter per question; it needs no generator, so it is not part of generation/.
    assert not (ROOT / "generation" / "routing.py").exists()
    files = _imports(ROOT)
    routing = files["layered/routing.py"]
    assert sorted(n for n in routing if n.startswith(("layered.generation", "layered.tuning"))) == []
    assert {path for path, names in files.items() if path.startswith("layered/generation/") and "layered.routing" in names} == set()


def test_the_check_sees_imports_inside_functions(tmp_path):
    """The scan must be able to fail: a function-level import is found like a top-level one."""
    folder = tmp_path / "layered" / "generation"
    folder.mkdir(parents=True)
    (folder / "x.py").write_text("def f():\n    from layered.tuning.config import TuneConfig\n    from ..tuning import fit\n")
    global ROOT
    saved, ROOT = ROOT, tmp_path / "layered"
    try:
        assert _offenders("generation", ("layered.tuning",)) == {
            "layered/generation/x.py": ["layered.tuning", "layered.tuning.config", "layered.tuning.config.TuneConfig", "layered.tuning.fit"],
        }
    finally:
        ROOT = saved
