"""Checkpointed optimiser states are checked against the optimiser before they are loaded
(:func:`mbirl.reporting.checkpoint.load_optimizer_state`, used by every trainer): an edited state is one ValueError
(one line inside ``restoring``), a saved one resumes bit for bit. The trainers' end-to-end cases are the
hostile-checkpoint fuzz family (``tests/test_fuzz_hostile.py -k checkpoints_full``)."""

from __future__ import annotations

import copy

import pytest
import torch

from mbirl.reporting.checkpoint import check_optimizer_state, load_checkpoint, load_optimizer_state, save_checkpoint


def _trained(kind: str = "adam", steps: int = 3) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    opt = (torch.optim.Adam(model.parameters(), lr=1e-2) if kind == "adam"
           else torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9))
    for _ in range(steps):
        _step(model, opt)
    return model, opt


def _step(model: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
    gen = torch.Generator().manual_seed(1)
    opt.zero_grad()
    model(torch.randn(8, 3, generator=gen)).square().mean().backward()
    opt.step()


@pytest.mark.parametrize("kind", ["adam", "sgd"])
def test_a_saved_state_resumes_bit_for_bit(tmp_path, kind):
    model, opt = _trained(kind)
    save_checkpoint(tmp_path / "c", {"model": model.state_dict(), "opt": opt.state_dict()})
    state = load_checkpoint(tmp_path / "c")
    clone, _ = _trained(kind, steps=0)
    clone.load_state_dict(state["model"])
    resumed = (torch.optim.Adam(clone.parameters(), lr=1e-2) if kind == "adam"
               else torch.optim.SGD(clone.parameters(), lr=1e-2, momentum=0.9))
    load_optimizer_state(resumed, state["opt"], scheduled=())
    for _ in range(3):
        _step(model, opt)
        _step(clone, resumed)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), clone.parameters(), strict=True))


def test_a_state_saved_before_a_setting_existed_is_taken():
    """Torch fills settings newer than the saved state with their defaults: the same as the optimiser's."""
    _, opt = _trained()
    state = copy.deepcopy(opt.state_dict())
    del state["param_groups"][0]["decoupled_weight_decay"], state["param_groups"][0]["foreach"]
    check_optimizer_state(_trained(steps=0)[1], state)


NAN = float("nan")
EDITS = {
    "wrong shape": lambda s: s["state"][0].__setitem__("exp_avg", torch.zeros(7)),
    "string moment": lambda s: s["state"][0].__setitem__("exp_avg_sq", "abc"),
    "NaN step tensor": lambda s: s["state"][0].__setitem__("step", torch.tensor(NAN)),
    "NaN step number": lambda s: s["state"][0].__setitem__("step", NAN),
    "negative step": lambda s: s["state"][0].__setitem__("step", torch.tensor(-2.0)),
    "fractional step": lambda s: s["state"][0].__setitem__("step", torch.tensor(2.5)),
    "maximize": lambda s: s["param_groups"][0].__setitem__("maximize", True),
    "no groups": lambda s: s.__setitem__("param_groups", []),
    "unknown setting": lambda s: s["param_groups"][0].__setitem__("nesterov", True),
    "other lr": lambda s: s["param_groups"][0].__setitem__("lr", 0.5),
    "NaN moment": lambda s: s["state"][1].__setitem__("exp_avg", torch.full((4,), NAN)),
    "negative second moment": lambda s: s["state"][1].__setitem__("exp_avg_sq", -torch.ones(4)),
    "double moment": lambda s: s["state"][1].__setitem__("exp_avg", torch.zeros(4, dtype=torch.float64)),
    "missing moment": lambda s: s["state"][0].pop("exp_avg_sq"),
    "SGD's state": lambda s: s["state"].__setitem__(0, {"momentum_buffer": torch.zeros(4, 3)}),
    "unknown parameter": lambda s: s["state"].__setitem__("0", s["state"].pop(0)),
    "other parameters": lambda s: s["param_groups"][0].__setitem__("params", [0, 1, 2, 3, 4]),
}


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_edited_states_are_refused_and_nothing_is_loaded(edit):
    model, opt = _trained()
    state = copy.deepcopy(opt.state_dict())
    EDITS[edit](state)
    target = _trained(steps=0)[1]
    before = copy.deepcopy(target.state_dict())
    params = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match="^opt: "):
        load_optimizer_state(target, state, scheduled=(), name="opt")
    assert target.state_dict() == before and not target.state
    assert all(torch.equal(a, b) for a, b in zip(params, model.parameters(), strict=True))


def test_a_scheduled_lr_may_differ_but_must_be_a_number():
    _, opt = _trained()
    state = copy.deepcopy(opt.state_dict())
    state["param_groups"][0]["lr"] = 0.5  # a trainer that sets the lr at every step
    check_optimizer_state(_trained(steps=0)[1], state)
    state["param_groups"][0]["lr"] = "0.5"
    with pytest.raises(ValueError, match="lr"):
        check_optimizer_state(_trained(steps=0)[1], state)
