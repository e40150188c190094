"""Metrics to a JSONL file and TensorBoard scalars (tags grouped as ``charts/``, ``losses/``)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

__all__ = ["MetricsLogger"]


class MetricsLogger:
    """Append-only metrics log of one run: ``metrics.jsonl`` plus TensorBoard events under ``tb/``.

    On resume, rows at or after ``resume_from_step`` (the first step still to run) are dropped so the file matches an
    uninterrupted run.
    """

    def __init__(self, run_dir: str | Path, *, tensorboard: bool = True, resume_from_step: int | None = None
                 ) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / "metrics.jsonl"
        if resume_from_step is not None and self.path.exists():
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and _step_of(line) is not None and _step_of(line) < resume_from_step]  # type: ignore[operator]
            self.path.write_text("".join(k + "\n" for k in kept))
        elif resume_from_step is None and self.path.exists():
            self.path.unlink()
        self._fh = self.path.open("a")
        self._tb: Any = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self.run_dir / "tb"), purge_step=resume_from_step)

    def log(self, step: int, **scalars: float) -> None:
        row = {"step": step, **{k: (float(v) if math.isfinite(float(v)) else None) for k, v in scalars.items()}}
        self._fh.write(json.dumps(row) + "\n")
        self._fh.flush()
        if self._tb is not None:
            for key, value in scalars.items():
                self._tb.add_scalar(key, float(value), step)

    def close(self) -> None:
        self._fh.close()
        if self._tb is not None:
            self._tb.close()

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _step_of(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None
