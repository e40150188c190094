"""The wheel: ``python -m build`` makes one that installs into a fresh virtual environment and runs the quickstart
and the MAIRL-to-SB3 tutorial away from the repository (the shipped demonstrations travel as data files).

The fresh environment sees the dependencies through a ``.pth`` line naming this environment's site-packages (no
network, no second torch); ``mbirl`` itself comes only from the wheel: the editable install's finder is not
activated by a ``.pth`` path entry."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_installs_and_runs_without_the_repository(tmp_path):
    pytest.importorskip("build")
    src = tmp_path / "src_copy"  # build from a copy: the repository gets no build/ directory
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copytree(ROOT / "data" / "demos", src / "data" / "demos")
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path / "dist"),
                    str(src)], check=True, capture_output=True, timeout=300)
    wheel = next((tmp_path / "dist").glob("mbirl-*.whl"))

    env_dir = tmp_path / "fresh"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             check=True, capture_output=True, text=True).stdout.strip()
    Path(purelib, "_mbirl_test_deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True,
                   capture_output=True, timeout=300)

    work = tmp_path / "elsewhere"
    work.mkdir()

    def run(*args: str) -> str:
        proc = subprocess.run(list(args), cwd=work, capture_output=True, text=True, timeout=900,
                              env={"PATH": f"{env_dir / 'bin'}:/usr/bin:/bin", "OMP_NUM_THREADS": "1",
                                   "HOME": str(tmp_path)})
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        return proc.stdout

    where = run(str(python), "-c", "import mbirl; print(mbirl.__file__); print(mbirl.shipped_demos('Pendulum-v1'))")
    module, demos = where.split()
    assert module.startswith(str(env_dir)) and demos.startswith(str(env_dir))
    assert run(str(env_dir / "bin" / "mbirl"), "--version").strip() == "mbirl 0.1.0"
    run(str(env_dir / "bin" / "mbirl"), "quickstart", "--run-dir", "qs", "--outer-iters", "1", "--no-progress")
    info = json.loads((work / "qs" / "weighted" / "run.json").read_text())
    assert info["git"] is None and info["mbirl_version"] == "0.1.0"
    shutil.copy(ROOT / "examples" / "mairl_own_env.py", work / "tutorial.py")
    out = run(str(python), "tutorial.py", "--quick", "--out", "tutorial")
    assert "SAC on the learned reward: true return" in out
