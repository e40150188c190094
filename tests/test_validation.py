"""The config layer: nested config dataclasses from YAML and JSON, type checks, legacy flat keys."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from mbirl.errors import InputError
from mbirl.validation import (
    apply_overrides,
    config_from_dict,
    config_to_dict,
    field_default,
    flatten_config,
    load_config,
)


@dataclass
class _Trainer:
    horizon: int = 20
    """steps per rollout"""
    lr: float = 1e-3
    """learning rate"""
    hidden: tuple[int, ...] = (100, 50)
    """layer widths"""
    clip: float | None = None
    """optional clip"""


@dataclass
class _Run:
    demos: str
    steps: int = 5
    split: tuple[int, int] = (0, 3)
    trainer: _Trainer = field(default_factory=_Trainer)


def test_nested_yaml_round_trip(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("demos: d.npz\nsteps: 7\ntrainer:\n  horizon: 10\n  hidden: [64, 64, 32]\n  clip: 2\n")
    overrides = load_config(path, _Run)
    assert overrides == {"demos": "d.npz", "steps": 7, "trainer": {"horizon": 10, "hidden": (64, 64, 32),
                                                                    "clip": 2.0}}
    cfg = config_from_dict(_Run, overrides, source="t")
    assert cfg.trainer == _Trainer(horizon=10, hidden=(64, 64, 32), clip=2.0)
    assert cfg.trainer.lr == 1e-3 and cfg.split == (0, 3)
    assert config_from_dict(_Run, config_to_dict(cfg), source="t") == cfg


def test_flat_legacy_keys_move_into_the_nested_config_with_a_warning(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("demos: d.npz\nhorizon: 12\n")
    with pytest.warns(FutureWarning, match=r"'horizon'.*'trainer.horizon'"):
        overrides = load_config(path, _Run)
    assert overrides == {"demos": "d.npz", "trainer": {"horizon": 12}}
    with pytest.raises(InputError, match="unknown option"):
        load_config(path, _Run, legacy=False)


@pytest.mark.parametrize(("text", "match"), [
    ("trainer: 3\n", "expected a mapping"),
    ("trainer: {horizon: 1.5}\n", "expected an integer"),
    ("trainer: {nope: 1}\n", "unknown option"),
    ("split: [1, 2, 3]\n", "list of 2"),
    ("trainer: {hidden: [1, x]}\n", "expected an integer"),
    ("steps: .nan\n", "expected an integer"),
    ("trainer: {lr: .inf}\n", "finite"),
    ("- a\n", "mapping"),
])
def test_bad_values_are_refused_with_the_field_named(tmp_path, text, match):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(InputError, match=match):
        load_config(path, _Run)


def test_long_rejected_values_are_truncated(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("demos: [" + ", ".join(["1"] * 5000) + "]\n")
    with pytest.raises(InputError) as err:
        load_config(path, _Run)
    assert len(str(err.value)) < 300


def test_required_fields_and_defaults():
    with pytest.raises(InputError, match="missing required option.*demos"):
        config_from_dict(_Run, {"steps": 3}, source="t")
    assert field_default(_Run, "trainer.horizon") == 20
    assert field_default(_Run, "split") == [0, 3]
    cfg = apply_overrides(_Run(demos="x"), {"trainer": {"lr": 0.5}})
    assert cfg.trainer.lr == 0.5 and cfg.trainer.horizon == 20
    assert flatten_config(config_to_dict(cfg))["trainer.lr"] == 0.5
