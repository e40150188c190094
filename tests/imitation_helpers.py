"""Helpers shared by the imitation-harness tests (imported by test_imitation, test_adversarial_ppo, test_dac,
test_sweep)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mbirl.cli import main

TIMING = ("train_seconds", "seconds_per_1k_env_steps")


def untimed(metrics: dict) -> dict:
    """``metrics`` without its wall-clock entries (the only ones a resumed run may change)."""
    return {k: v for k, v in metrics.items() if k not in TIMING}


def rows(run_dir: Path) -> list[dict]:
    """The run's ``metrics.jsonl`` rows without their wall-clock column."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "charts/seconds"} for line in lines]


def cli(*args: str) -> int:
    """Exit code of ``mbirl ARGS`` run in this process."""
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    return int(exc.value.code or 0)


def interrupt_after(monkeypatch: pytest.MonkeyPatch, cls: type, calls: int) -> None:
    """Make ``cls.iteration_step`` raise KeyboardInterrupt after ``calls`` iterations (a run killed mid-way)."""
    original = cls.iteration_step
    count = [0]

    def step(self):
        count[0] += 1
        if count[0] > calls:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(cls, "iteration_step", step)
