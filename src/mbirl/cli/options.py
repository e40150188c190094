"""Command-line options as config dataclasses: the one place option values, YAML files and defaults meet.

Precedence: the config dataclass's defaults < the ``--config`` YAML file < options given explicitly on the
command line. Commands declare their options with the dataclass fields' defaults (``= MAIRLConfig.horizon``),
so a default is written once, in the dataclass.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from mbirl.nets import DEVICES, resolve_device
from mbirl.validation import check_overrides, config_from_dict, load_config

__all__ = ["DeviceOpt", "build_config", "explicit_options"]

T = TypeVar("T")

DeviceOpt = Annotated[str, typer.Option(
    help=f"where the networks train: {'|'.join(DEVICES)} (auto: CUDA when torch sees a GPU, else the CPU); the "
         "CPU is the tested, bit-reproducible default, and --resume may change it")]
"""``--device`` of every training command (its default: the command's config field, ``= SomeConfig.device``)."""


def explicit_options(ctx: typer.Context) -> set[str]:
    """Names of the options the user typed on the command line (not defaults)."""
    return {name for name in ctx.params if getattr(ctx.get_parameter_source(name), "name", None) == "COMMANDLINE"}


def _has(tree: dict[str, Any], dotted: str) -> bool:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


def build_config(ctx: typer.Context, cls: type[T], values: dict[str, Any], config: Path | None,
                 fields: dict[str, str] | None = None) -> T:
    """Build config dataclass ``cls`` from the command's option ``values`` and the optional YAML ``config``.

    ``values`` maps option names to their values; ``fields`` maps option names to (dotted) field names where
    they differ (``{"horizon": "trainer.horizon"}``). Values are type-checked through the dataclass, and a
    ``device`` field is resolved (:func:`mbirl.nets.resolve_device`), so that ``--device cuda`` on a machine
    without a GPU is refused before any work is done.
    """
    fields = fields or {}
    merged: dict[str, Any] = load_config(config, cls) if config is not None else {}
    explicit = explicit_options(ctx)
    for name, value in values.items():
        dotted = fields.get(name, name)
        if name in explicit or not _has(merged, dotted):
            _set(merged, dotted, str(value) if isinstance(value, Path) else value)
    source = "command line" if config is None else f"command line / {config}"
    cfg = config_from_dict(cls, check_overrides(merged, cls, source=source, legacy=False), source=source)
    device = getattr(cfg, "device", None)
    if isinstance(device, str):
        resolve_device(device)
    return cfg
