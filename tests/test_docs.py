"""The documentation site builds cleanly (``mkdocs build --strict``) with an API reference that covers every public
name, and the tutorials under ``examples/`` run end to end with tiny budgets."""

from __future__ import annotations

import ast
import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))


def _public_names() -> list[str]:
    """``module.name`` for every name in a module's ``__all__`` (read statically), the command line excepted."""
    out = []
    for path in sorted((ROOT / "src" / "mbirl").rglob("*.py")):
        parts = list(path.relative_to(ROOT / "src").with_suffix("").parts)
        if "cli" in parts:
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__"
                                                    for t in node.targets):
                assert isinstance(node.value, (ast.List, ast.Tuple)), f"{path}: __all__ must be a literal list"
                out += [f"{'.'.join(parts)}.{e.value}" for e in node.value.elts
                        if isinstance(e, ast.Constant) and e.value != "__version__"]
    return out


def test_mkdocs_build_is_strict_clean_and_covers_every_public_name(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings_handlers.python")
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "-d", str(site)],
                          cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    html = "".join(p.read_text() for p in (site / "api").rglob("*.html"))
    anchors = set(re.findall(r'id="([\w.]+)"', html))
    missing = [name for name in _public_names() if name not in anchors]
    assert not missing, f"not in the API reference (docs/api/*.md): {missing}"
    for example in EXAMPLES:  # every tutorial has its page, which includes the script itself
        page = site / "tutorials" / example.stem / "index.html"
        assert page.is_file() and "def main(" in re.sub(r"<[^>]+>", "", page.read_text()), example.stem


@pytest.mark.slow
@pytest.mark.parametrize("example", EXAMPLES, ids=[e.stem for e in EXAMPLES])
def test_tutorial_runs_with_a_tiny_budget(example, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    namespace = runpy.run_path(str(example), run_name="tutorial")
    result = namespace["main"](tmp_path / "out", quick=True)
    assert isinstance(result, dict) and result
