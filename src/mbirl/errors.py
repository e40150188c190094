"""The one exception type for bad user input (files, shapes, options)."""

from __future__ import annotations

__all__ = ["InputError", "NonFiniteError", "check_finite"]


class InputError(ValueError):
    """Invalid user input: a file, a field or an option that is not what was expected.

    The message names the source (file or option), the field and what was expected, so the
    CLI can print it as a one-line error without a traceback.
    """

    def __init__(self, message: str, *, source: str | None = None, field: str | None = None) -> None:
        self.source = source
        self.field = field
        parts = []
        if source:
            parts.append(str(source))
        if field:
            parts.append(f"field '{field}'")
        prefix = ": ".join(parts)
        super().__init__(f"{prefix}: {message}" if prefix else message)


class NonFiniteError(RuntimeError):
    """A loss, gradient or parameter became NaN/Inf during training.

    The message names the quantity and the iteration; runs stop without writing a checkpoint, so the
    last good one stays on disk, and the CLI exits with code 3.
    """


def check_finite(value: object, what: str, iteration: int) -> None:
    """Raise :class:`NonFiniteError` unless ``value`` (a number or tensor) is finite everywhere."""
    import math

    import torch

    if isinstance(value, torch.Tensor):
        ok = bool(torch.isfinite(value).all())
    else:
        ok = math.isfinite(float(value))  # type: ignore[arg-type]
    if not ok:
        raise NonFiniteError(f"{what} is not finite at iteration {iteration}")
