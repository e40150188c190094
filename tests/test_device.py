"""``--device auto|cpu|cuda``: one resolver, a one-line refusal of a missing GPU before any work, and every network,
tensor and replay sample of a trainer on the device its configuration names.

No GPU is needed: the plumbing is checked with torch's ``meta`` device (tensors with a device and a shape but no
data), which refuses to mix with CPU tensors exactly as CUDA does, so a trainer built "on meta" shows that nothing
was left behind on the CPU, and whole training iterations run on it (:class:`PlaceholderValues` answers where the
code reads a number) show that no step creates a CPU tensor where the device's belong.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

from mbirl.errors import InputError
from mbirl.experiments.imitation import ALGORITHMS, ImitationRunConfig, build_learner
from mbirl.nets import DEFAULT_DEVICE, DEVICES, check_device, module_device, resolve_device
from test_cli import _tree, assert_one_line_error, run_cli_in_process

PENDULUM = "data/demos/Pendulum-v1.npz"
META = torch.device("meta")
pytestmark = pytest.mark.filterwarnings("ignore:You are trying to run PPO on the GPU")  # SB3, of any non-CPU device


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_resolve_device(monkeypatch, no_gpu):
    assert DEFAULT_DEVICE == "cpu" and DEVICES == ("auto", "cpu", "cuda")
    assert resolve_device("auto") == resolve_device("cpu") == resolve_device() == torch.device("cpu")
    with pytest.raises(InputError, match="field 'device': cuda is not available") as exc:
        resolve_device("cuda")
    assert "\n" not in str(exc.value)
    with pytest.raises(InputError, match="is not available"):
        resolve_device(torch.device("cuda", 0))
    with pytest.raises(InputError, match="expected one of auto, cpu, cuda, got 'gpu'"):
        check_device("gpu")
    assert resolve_device(META) == META
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == resolve_device("cuda") == torch.device("cuda")
    assert resolve_device("cpu") == torch.device("cpu")
    assert module_device(torch.nn.Linear(2, 2).to(META)) == META and module_device(torch.nn.ReLU()).type == "cpu"


TRAINING_COMMANDS = ("mairl train", "mairl models", "il train", "expert train", "mbirl train", "mbirl compare",
                     "quickstart", "visual train-detector", "visual train-dynamics", "visual irl", "visual pipeline",
                     "transfer run", "bench run")


def test_every_training_command_has_the_device_option():
    """``--device`` on every command that trains, its default the run configuration's ``device`` field."""
    import typer.main

    from mbirl.cli import app

    group = typer.main.get_command(app)
    for name in TRAINING_COMMANDS:
        command: Any = group
        for part in name.split():
            command = command.commands[part]
        option = {p.name: p for p in command.params}.get("device")
        assert option is not None and "--device" in option.opts, name
        assert option.default in (DEFAULT_DEVICE, None), name  # None: bench run's default is its --config's


def _commands(tmp: Path) -> list[list[str]]:
    """One training command of each family with ``--device cuda`` and inputs that would fail later (files that do
    not exist): the device is refused first."""
    missing = str(tmp / "missing.npz")
    return [
        ["mairl", "train", "--demos", PENDULUM, "--run-dir", "r"],
        ["il", "train", "--algo", "bc", "--demos", PENDULUM, "--run-dir", "r"],
        ["expert", "train", "--env", "Pendulum-v1", "--out", "r"],
        ["mbirl", "train", "--demos", missing, "--run-dir", "r"],
        ["visual", "train-detector", "--data", missing, "--run-dir", "r"],
        ["visual", "pipeline", "--quick", "--run-dir", "r"],
        ["transfer", "run", "--task", "maze", "--demos", missing, "--out", "r"],
        ["bench", "run", "--algos", "bc", "--envs", "Pendulum-v1", "--seeds", "0", "--out", "r"],
    ]


def test_every_training_command_refuses_cuda_without_a_gpu_before_any_work(tmp_path, capsys, monkeypatch, no_gpu):
    import mbirl.experiments.imitation as imitation

    monkeypatch.setattr(imitation, "demo_stats", lambda *a, **k: pytest.fail("read the demonstrations"))
    for args in _commands(tmp_path):
        cwd = tmp_path / args[0] / args[1].lstrip("-")
        cwd.mkdir(parents=True)
        result = run_cli_in_process(cwd, capsys, monkeypatch, *args, "--device", "cuda")
        assert_one_line_error(result, "field 'device': cuda is not available", "--device cpu")
        assert _tree(cwd) == set(), (args, _tree(cwd))
    cwd = tmp_path / "choice"
    cwd.mkdir()
    result = run_cli_in_process(cwd, capsys, monkeypatch, "il", "train", "--demos", PENDULUM, "--device", "gpu")
    assert_one_line_error(result, "field 'device': expected one of auto, cpu, cuda")
    (cwd / "c.yaml").write_text("device: cuda\n")  # a configuration file's device is checked the same way
    result = run_cli_in_process(cwd, capsys, monkeypatch, "il", "train", "--demos", PENDULUM, "--config", "c.yaml")
    assert_one_line_error(result, "cuda is not available")
    assert _tree(cwd) == {"c.yaml"}


def test_bench_trials_on_a_gpu_must_reserve_one(tmp_path, capsys, monkeypatch):
    """Ray hides the GPUs from a trial that reserves none: a sweep whose runs would train on CUDA (``cuda``, or
    ``auto`` where there is a GPU) needs ``--gpus-per-trial``, and says so before Ray starts."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    result = run_cli_in_process(tmp_path, capsys, monkeypatch, "bench", "run", "--algos", "bc", "--envs",
                                "Pendulum-v1", "--seeds", "0", "--device", "auto", "--out", "r")
    assert_one_line_error(result, "Pendulum-v1/bc/s0 trains on cuda", "--gpus-per-trial")
    assert _tree(tmp_path) == set()


def _tensors_of(learner: Any) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of a learner's networks, and the parameters its optimisers update."""
    out: dict[str, torch.Tensor] = {}
    for attr in ("policy", "policy_ema", "best_policy", "model", "disc", "log_ent_coef"):
        part = getattr(learner, attr, None)
        if isinstance(part, torch.nn.Module):
            out |= {f"{attr}.{n}": t for n, t in (*part.named_parameters(), *part.named_buffers())}
        elif isinstance(part, torch.Tensor):
            out[attr] = part
        elif part is not None and hasattr(part, "policy"):  # SB3's PPO
            out |= {f"{attr}.{n}": t for n, t in part.policy.state_dict().items()}
    for name, value in vars(learner).items():
        if isinstance(value, torch.optim.Optimizer):
            out |= {f"{name}.param{i}": p for i, g in enumerate(value.param_groups) for p in g["params"]}
    return out


@pytest.mark.parametrize("algo", ["mairl", "mgail", "bc", "dac", "airl"])
def test_learners_train_on_the_device_their_configuration_names(algo, monkeypatch):
    """``build_learner`` resolves the configuration's device once and every network, optimiser and replay sample
    of the learner lands there."""
    import mbirl.experiments.imitation as imitation
    from mbirl.algorithms.bc import BC

    asked: list[object] = []

    def spy(device: object) -> torch.device:
        asked.append(device)
        return META

    monkeypatch.setattr(imitation, "resolve_device", spy)
    monkeypatch.setattr(BC, "heldout_nll", lambda self, policy=None: 0.0)  # a number: meta tensors have none
    cfg = ImitationRunConfig(demos=PENDULUM, algo=algo, device="auto")
    learner, demos = build_learner(cfg)
    assert asked == ["auto"]
    tensors = _tensors_of(learner)
    assert len(tensors) > 10
    assert {n for n, t in tensors.items() if t.device != META} == set()
    if hasattr(learner, "buffer"):
        assert learner.buffer.batch(np.zeros(3, int)).obs.device == META
    if algo in ("mairl", "mgail"):
        assert learner.expert_batch(4).log_pi.device == META
        learner.buffer.add(*(np.zeros((4, n), np.float32) for n in (learner.obs_dim, learner.act_dim, learner.obs_dim)),
                           np.zeros(4, np.float32))
        assert learner.start_states(4).device == META
    if algo == "bc":
        assert learner.obs.device == learner.acts.device == learner.heldout_obs.device == META
    if algo == "dac":
        assert learner.expert_batch(4).obs.device == META and learner.ent_coef().device == META
    assert set(ALGORITHMS.names) >= {algo}


@pytest.mark.filterwarnings("ignore:.*to a meta parameter")  # loading into meta tensors copies no values
def test_mairl_with_an_ensemble_samples_and_checkpoints_across_devices():
    """One MAIRL checkpoint written on the CPU loads into a trainer on another device (checkpoints hold CPU
    tensors); the sampling generator stays on the CPU, so its draws are the same on every device."""
    from mbirl.algorithms.mairl import MAIRLConfig, build_mairl
    from mbirl.experts.demos import demo_stats

    demos = demo_stats(PENDULUM)
    cfg = MAIRLConfig(n_rollouts=2, horizon=3, warmup_steps=20, model_pretrain_steps=1, batch_size=8,
                      ensemble_size=2, policy_utd=0.5, imagine_batch=4, imagine_horizon=2, ema_rate=0.9)
    cpu = build_mairl(cfg, demos, seed=0)
    cpu.iteration_step()
    state = cpu.state_dict()
    meta = build_mairl(cfg, demos, seed=0, device=META)
    assert meta.generator.device.type == "cpu" and meta.buffer.device == META
    meta.load_state_dict(state)
    assert meta.env_steps == cpu.env_steps and len(meta.buffer) == len(cpu.buffer)
    assert all(t.device == META for t in _tensors_of(meta).values())
    assert {v.device.type for s in meta.opt_model.state.values() for v in s.values() if v.dim() > 0} == {"meta"}
    s0 = meta.start_states(4)
    a, log_pi = meta.policy.sample(s0, meta.generator)
    next_obs, spread = meta.model.sample(s0, a, meta.generator)
    assert {a.device, log_pi.device, next_obs.device, spread.device} == {META}


def test_mbirl_learner_cost_dynamics_and_demos_on_the_configured_device(placing_demos, tmp_path, monkeypatch):
    import mbirl.experiments.kuka_irl as kuka_irl
    from mbirl.data import save_keypoint_demos
    from mbirl.experiments.kuka_irl import MBIRLRunConfig, prepare_run

    save_keypoint_demos(tmp_path / "d.npz", placing_demos, {})
    monkeypatch.setattr(kuka_irl, "resolve_device", lambda device: META)
    prep = prepare_run(MBIRLRunConfig(demos=str(tmp_path / "d.npz"), method="rbf", device="auto"))
    assert {prep.train.z.device, prep.test.q0.device} == {META}
    for module in (prep.learner.cost, prep.dynamics):
        assert {t.device for t in (*module.parameters(), *module.buffers())} == {META}
    assert prep.learner.optimizer is not None and prep.learner.optimizer.param_groups[0]["params"][0].device == META


def test_every_run_configuration_records_its_device_and_resume_may_change_it(tmp_path):
    """``device`` is a field of every run configuration (default :data:`DEFAULT_DEVICE`) that ``--resume`` may
    change; a run recorded before the field existed resumes (its device counts as the default)."""
    import json

    from mbirl.experiments.kuka_irl import MBIRLCompareConfig, MBIRLRunConfig
    from mbirl.experiments.mairl_run import MAIRLRunConfig, ModelComparisonConfig
    from mbirl.experiments.transfer import SACStageConfig, TransferRunConfig
    from mbirl.experiments.visual import DetectorStageConfig, DynamicsStageConfig, PipelineConfig, VisualIRLConfig
    from mbirl.experts.train import ExpertRunConfig
    from mbirl.reporting.runs import RunDir

    for cls in (ImitationRunConfig, MAIRLRunConfig, ExpertRunConfig, MBIRLRunConfig, DetectorStageConfig,
                DynamicsStageConfig, VisualIRLConfig, PipelineConfig, TransferRunConfig, SACStageConfig,
                ModelComparisonConfig):
        field = {f.name: f for f in dataclasses.fields(cls)}["device"]
        assert field.default == DEFAULT_DEVICE, cls
        assert cls is ModelComparisonConfig or "device" in getattr(cls, "RESUMABLE", ()), cls
    assert "run.device" in MBIRLCompareConfig.RESUMABLE
    with pytest.raises(InputError, match="field 'device'"):
        ImitationRunConfig(demos=PENDULUM, device="gpu")
    cfg = ImitationRunConfig(demos=PENDULUM)
    RunDir(tmp_path / "r", cfg).start()
    RunDir(tmp_path / "r", dataclasses.replace(cfg, device="auto"), resume=True).close()
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert saved["device"] == "cpu"
    del saved["device"]  # written before runs recorded their device
    (tmp_path / "r" / "config.json").write_text(json.dumps(saved))
    RunDir(tmp_path / "r", dataclasses.replace(cfg, device="auto"), resume=True).close()


class PlaceholderValues(TorchFunctionMode):
    """Lets training code run on the ``meta`` device: where it reads a number from a meta tensor (``float``,
    ``bool``, ``.item()``, ``.cpu()``, ``.numpy()``, ``nonzero``, a boolean mask) it gets a placeholder (1, True,
    zeros, everything), so the values are meaningless but every operation still checks the devices it mixes."""

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        t = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if t is not None and t.is_meta:
            targets = [a for a in (*args[1:], *kwargs.values()) if isinstance(a, (str, torch.device))]
            to_cpu = func is torch.Tensor.to and any(torch.device(a).type == "cpu" for a in targets)
            if func is torch.Tensor.cpu or to_cpu:
                return torch.zeros(t.shape, dtype=t.dtype)
            if func in (torch.Tensor.numpy, torch.Tensor.__array__):
                return torch.zeros(t.shape, dtype=t.dtype).numpy()
            if func is torch.Tensor.__bool__ or (func is torch.Tensor.item and t.dtype == torch.bool):
                return True
            if func is torch.Tensor.__float__ or (func is torch.Tensor.item and t.dtype.is_floating_point):
                return 1.0
            if func in (torch.Tensor.item, torch.Tensor.__int__, torch.Tensor.__index__):
                return 1
            if func is torch.Tensor.tolist:
                return torch.ones(t.shape).tolist()
            if func in (torch.nonzero, torch.Tensor.nonzero):
                return torch.arange(t.shape[0], device=META)[:, None]
            if func is torch.Tensor.__getitem__ and isinstance(args[1], torch.Tensor) and args[1].dtype == torch.bool:
                return t
        return func(*args, **kwargs)


def _iterate(learner: Any, obs: np.ndarray, iterations: int = 2) -> None:
    for _ in range(iterations):
        learner.iteration_step()
    learner.act_deterministic(obs)
    learner.state_dict()


@pytest.mark.parametrize("case", ["mairl", "mgail", "bc", "dac", "airl", "mbirl", "detector", "dynamics"])
def test_training_iterations_never_mix_a_cpu_tensor_into_the_devices_work(case, placing_demos, tmp_path,
                                                                           monkeypatch):
    """Whole training iterations of every trainer on the ``meta`` device: any tensor made on the CPU and mixed
    with the device's (what CUDA refuses) fails here."""
    from mbirl.experts.demos import demo_stats

    monkeypatch.setattr(torch.distributions.Distribution, "_validate_args", False)
    with PlaceholderValues():
        if case in ("mairl", "mgail"):
            from mbirl.algorithms.mairl import MAIRLConfig, build_mairl

            small = {"n_rollouts": 2, "horizon": 1, "warmup_steps": 4, "model_pretrain_steps": 1, "batch_size": 8,
                     "policy_utd": 0.5, "imagine_batch": 4, "imagine_horizon": 2}
            cfg = MAIRLConfig(ensemble_size=2, model_penalty=0.1, ema_rate=0.9, disc_grad_penalty=0.1, **small) \
                if case == "mairl" else MAIRLConfig(variant="mgail", dynamics="gru", demo_starts=0.5, **small)
            demos = demo_stats(PENDULUM if case == "mairl" else "data/demos/CartPole-v1.npz")
            _iterate(build_mairl(cfg, demos, seed=0, device=META), demos.obs[0])
        elif case == "bc":
            from mbirl.algorithms.bc import BCConfig, build_bc

            demos = demo_stats(PENDULUM)
            _iterate(build_bc(BCConfig(batch_size=4096, l2_weight=0.1), demos, seed=0, device=META), demos.obs[0])
        elif case == "dac":
            from mbirl.algorithms.dac import DACConfig, build_dac

            demos = demo_stats(PENDULUM)
            dac = build_dac(DACConfig(batch_size=8, learning_starts=4, iteration_steps=6, net_arch=(8,),
                                      disc_hidden=(8,)), demos, seed=0, device=META)
            dac.finished(12)
            _iterate(dac, demos.obs[0])
        elif case == "airl":
            from mbirl.algorithms.adversarial_ppo import AdversarialPPOConfig, build_adversarial_ppo

            demos = demo_stats(PENDULUM)
            _iterate(build_adversarial_ppo(AdversarialPPOConfig(n_envs=1, n_steps=8, batch_size=8, n_epochs=1,
                                                                disc_updates=1, demo_batch_size=8),
                                           demos, discriminator="airl", seed=0, device=META), demos.obs[0], 1)
        elif case == "mbirl":
            import mbirl.experiments.kuka_irl as kuka_irl
            from mbirl.data import save_keypoint_demos

            save_keypoint_demos(tmp_path / "d.npz", placing_demos, {})
            monkeypatch.setattr(kuka_irl, "resolve_device", lambda device: META)
            cfg = kuka_irl.MBIRLRunConfig(demos=str(tmp_path / "d.npz"), method="rbf", outer_iters=1)
            kuka_irl.run_mbirl(cfg, tmp_path / "r", progress=False, figures=False)
        elif case == "detector":
            from mbirl.perception import DetectorConfig, DetectorTrainConfig
            from mbirl.perception.detector import KeypointAutoencoder
            from mbirl.perception.train import fit_detector

            model = KeypointAutoencoder(DetectorConfig(n_keypoints=3, width=8), image_size=16).to(META)
            images = np.zeros((8, 16, 16, 3), np.uint8)
            fit_detector(model, images, DetectorTrainConfig(steps=2, batch_size=4), generator=torch.Generator())
            assert model.detect(images).device.type == "cpu"
        else:
            from mbirl.dynamics.keypoint_mlp import (
                DynamicsTrainConfig,
                KeypointMLPConfig,
                KeypointMLPDynamics,
                dynamics_errors,
                fit_keypoint_dynamics,
            )

            model = KeypointMLPDynamics(7, 2, KeypointMLPConfig(hidden=8, layers=1, ensemble=2),
                                        lower=-torch.ones(7), upper=torch.ones(7)).to(META)
            q, z, u = np.zeros((4, 3, 7), np.float32), np.zeros((4, 3, 2, 3), np.float32), np.zeros((4, 2, 7))
            fit_keypoint_dynamics(model, q, z, u, DynamicsTrainConfig(steps=2, batch_size=2),
                                  generator=torch.Generator())
            dynamics_errors(model, q, z, u, 2)
