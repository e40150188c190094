"""The README's Python examples run as written and print the figures they claim."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _examples() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def _run(code: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, str(README), "exec"), {"__name__": "readme_example"})  # noqa: S102 (our own README)
    return out.getvalue().strip()


def test_readme_has_one_example_per_method():
    examples = _examples()
    assert len(examples) == 2
    assert "MBIRL(" in examples[0] and "build_mairl(" in examples[1]


def test_mbirl_example_reproduces_the_official_figure():
    assert _run(_examples()[0]) == "123.8"


def test_mairl_example_matches_the_run_directory(tmp_path, monkeypatch):
    """On a small budget, the example's loop gives exactly what ``mbirl mairl train`` reports."""
    from mbirl.experiments.mairl_run import MAIRLRunConfig, run_mairl

    root = README.parent
    monkeypatch.chdir(root)
    code = _examples()[1]
    assert "50_000" in code
    printed = _run(code.replace("50_000", "2_000"))
    cfg = MAIRLRunConfig(demos="data/demos/Pendulum-v1.npz", env_steps=2_000, eval_every=2_000, seed=0)
    metrics = run_mairl(cfg, tmp_path / "run", progress=False)
    assert printed == f"{metrics['final_normalized_return']:.3f}"
    assert metrics["env_steps"] >= 2_000


@pytest.mark.parametrize("path", ["docs/design.md", "docs/usage.md", "docs/notes.md", "docs/results/mbirl.md",
                                  "docs/results/mairl.md", "docs/results/visual.md"])
def test_readme_links_exist(path):
    assert f"({path})" in README.read_text()
    assert (README.parent / path).is_file()


def test_readme_stays_a_front_door():
    assert len(README.read_bytes()) <= 12 * 1024
