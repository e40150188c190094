"""Run directories: metrics logging (JSONL + TensorBoard), checkpoints, figures."""

from mbirl.fileio import write_json_atomic
from mbirl.reporting.checkpoint import load_checkpoint, save_checkpoint
from mbirl.reporting.logger import MetricsLogger

__all__ = ["MetricsLogger", "load_checkpoint", "save_checkpoint", "write_json_atomic"]
