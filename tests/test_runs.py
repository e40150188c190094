"""The run-directory driver: one rule for refusing, resuming and finishing a run."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import ClassVar

import pytest
import torch

from mbirl.errors import InputError
from mbirl.reporting.runs import ALREADY_HOLDS_A_RUN, RunDir


@dataclass
class _Inner:
    lr: float = 1e-3
    """learning rate"""
    width: int = 8
    """hidden units"""


@dataclass
class _Run:
    RESUMABLE: ClassVar[tuple[str, ...]] = ("steps", "inner.width")
    data: str
    steps: int = 10
    inner: _Inner = field(default_factory=_Inner)


def test_fresh_run_writes_nothing_until_start(tmp_path):
    run = RunDir(tmp_path / "r", _Run(data="x"))
    assert run.state is None and not run.resumed
    assert not (tmp_path / "r").exists()
    run.start()
    assert json.loads((tmp_path / "r" / "config.json").read_text()) == {
        "data": "x", "steps": 10, "inner": {"lr": 1e-3, "width": 8}}


def test_existing_run_is_refused_without_resume(tmp_path):
    RunDir(tmp_path / "r", _Run(data="x")).start()  # config.json alone marks the directory as holding a run
    with pytest.raises(InputError, match="already holds a run"):
        RunDir(tmp_path / "r", _Run(data="x"))
    assert ALREADY_HOLDS_A_RUN.startswith("run directory already holds a run")


def test_resume_returns_the_checkpoint_and_allows_only_resumable_changes(tmp_path):
    cfg = _Run(data="x")
    run = RunDir(tmp_path / "r", cfg)
    run.start()
    run.save({"w": torch.arange(3.0), "step": 4})
    longer = replace(cfg, steps=20, inner=replace(cfg.inner, width=16))  # both RESUMABLE
    resumed = RunDir(tmp_path / "r", longer, resume=True)
    assert resumed.resumed and resumed.state is not None
    assert resumed.state["step"] == 4 and torch.equal(resumed.state["w"], torch.arange(3.0))
    with pytest.raises(InputError, match=r"different configuration \(inner.lr\)"):
        RunDir(tmp_path / "r", replace(cfg, inner=_Inner(lr=0.1)), resume=True)
    with pytest.raises(InputError, match=r"different configuration \(data\)"):
        RunDir(tmp_path / "r", replace(cfg, data="y"), resume=True)


def test_resume_of_a_run_saved_with_flat_keys(tmp_path):
    """A run saved before its config nested a sub-config compares field by field after moving its keys."""
    run = RunDir(tmp_path / "r", _Run(data="x"))
    run.start()
    run.save({"step": 1})
    meta = json.loads((tmp_path / "r" / "checkpoints" / "last.json").read_text())
    skeleton = meta["state"]["__dict__"]
    for pair in skeleton:
        if pair[0] == "config":
            pair[1] = {"__dict__": [["data", "x"], ["steps", 10], ["lr", 0.001], ["width", 8]]}
    (tmp_path / "r" / "checkpoints" / "last.json").write_text(json.dumps(meta))
    assert RunDir(tmp_path / "r", _Run(data="x"), resume=True).resumed
    with pytest.raises(InputError, match="inner.lr"):
        RunDir(tmp_path / "r", _Run(data="x", inner=_Inner(lr=0.5)), resume=True)


def test_resume_without_checkpoint_checks_config_json_and_starts_fresh(tmp_path):
    RunDir(tmp_path / "r", _Run(data="x")).start()
    run = RunDir(tmp_path / "r", _Run(data="x"), resume=True)
    assert run.state is None
    with pytest.raises(InputError, match="data"):
        RunDir(tmp_path / "r", _Run(data="z"), resume=True)


def test_finish_writes_metrics_and_summary_atomically(tmp_path):
    run = RunDir(tmp_path / "r", _Run(data="x"))
    run.start()
    run.finish({"loss": 1.5}, summary="# done\n")
    assert json.loads((tmp_path / "r" / "metrics.json").read_text()) == {"loss": 1.5}
    assert (tmp_path / "r" / "summary.md").read_text() == "# done\n"
    assert not list((tmp_path / "r").glob(".*.tmp"))


def test_progress_and_logger(tmp_path):
    run = RunDir(tmp_path / "r", _Run(data="x"))
    run.start()
    with run.logger(tensorboard=False) as log, run.progress("train", 3, enabled=False) as update:
        for step in range(1, 4):
            log.log(step, **{"losses/x": float(step)})
            update(advance=1, info=f"step {step}")
    rows = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and rows[-1]["losses/x"] == 3.0
