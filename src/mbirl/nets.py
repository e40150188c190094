"""Small network building blocks shared by the models, policies and discriminators, and the device they train on.

Every training command takes ``--device auto|cpu|cuda`` (the ``device`` field of its run configuration, default
:data:`DEFAULT_DEVICE`); :func:`resolve_device` turns it into a :class:`torch.device`, once, before any work is
done. Networks are initialised on the CPU (from torch's seeded CPU generator) and then moved, the sampling
generators stay on the CPU (their draws are moved to the device), and checkpoints hold CPU tensors: the same seed
gives the same initial weights and noise on every device, and a run trained on one device resumes on another.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mbirl.errors import InputError

__all__ = ["DEFAULT_DEVICE", "DEVICES", "check_device", "mlp", "module_device", "resolve_device"]

DEVICES = ("auto", "cpu", "cuda")
"""The choices of ``--device``: ``auto`` (CUDA when torch sees a GPU, else the CPU), ``cpu`` or ``cuda``."""

DEFAULT_DEVICE = "cpu"
"""The ``device`` every run configuration defaults to. The CPU: the tests run there, runs are bit-reproducible
there (CUDA kernels are not, and these networks are small enough that a GPU mostly pays off for the image
models), and a configuration means the same run on every machine; ``--device auto`` opts into a GPU."""


def mlp(sizes: Sequence[int], *, last_activation: bool = False) -> nn.Sequential:
    """Linear layers of the given widths with ReLU between them (and after the last with ``last_activation``)."""
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2 or last_activation:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def check_device(device: object, field: str = "device") -> str:
    """``device`` if it is one of :data:`DEVICES`, else an :class:`~mbirl.errors.InputError` (what a run
    configuration checks on construction; whether CUDA is there is :func:`resolve_device`'s question)."""
    if not isinstance(device, str) or device not in DEVICES:
        raise InputError(f"expected one of {', '.join(DEVICES)}, got {str(device)[:40]!r}", field=field)
    return device


def resolve_device(device: str | torch.device = DEFAULT_DEVICE) -> torch.device:
    """The :class:`torch.device` of a ``--device`` choice (:data:`DEVICES`) or of a device given as such.

    ``auto`` is CUDA when ``torch.cuda.is_available()``, else the CPU; ``cuda`` where torch sees no GPU is an
    :class:`~mbirl.errors.InputError` (the command line's one-line error, exit code 2)."""
    if isinstance(device, torch.device):
        if device.type == "cuda" and not torch.cuda.is_available():
            raise InputError(f"{device} is not available: {_no_cuda()}", field="device")
        return device
    check_device(device)
    if device == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if device == "auto":
        return torch.device("cpu")
    raise InputError(f"cuda is not available: {_no_cuda()}; use --device cpu (or auto: CUDA where there is one)",
                     field="device")


def _no_cuda() -> str:
    built = torch.version.cuda
    return (f"torch {torch.__version__} was built without CUDA" if built is None else
            f"torch {torch.__version__} (CUDA {built}) finds no GPU")


def module_device(module: nn.Module) -> torch.device:
    """The device of a module's first parameter or buffer (the CPU for a module that has neither)."""
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device("cpu")
