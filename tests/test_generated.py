"""generated/ must be exactly what scripts/gen_protos.py makes from protos/."""

from __future__ import annotations

import filecmp
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _files(tree: Path) -> dict[str, Path]:
    return {
        str(p.relative_to(tree)): p
        for p in tree.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("gen_protos", ROOT / "scripts" / "gen_protos.py")
    assert spec is not None
    assert spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    fresh = tmp_path / "generated"
    gen.generate(fresh)
    committed, expected = _files(ROOT / "generated"), _files(fresh)
    assert sorted(committed) == sorted(expected), "run: .venv/bin/python scripts/gen_protos.py"
    stale = [
        name for name in expected if not filecmp.cmp(committed[name], expected[name], shallow=False)
    ]
    assert stale == [], f"stale generated files {stale}; run scripts/gen_protos.py"


def test_generated_imports_live_under_generated() -> None:
    for path in (ROOT / "generated").rglob("*.py"):
        text = path.read_text()
        assert "\nfrom cgn." not in text, path
        assert "\nimport cgn." not in text, path
