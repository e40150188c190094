"""The one exception type for bad user input (files, shapes, options)."""

from __future__ import annotations

__all__ = ["MAX_MESSAGE_CHARS", "InputError", "NonFiniteError", "check_finite", "one_line"]

MAX_MESSAGE_CHARS = 600
"""One-line errors are cut to this length: a message quoting a hostile file must stay a line, not megabytes."""


def one_line(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``text`` on one line (newlines and other control characters become spaces), cut to ``limit`` characters."""
    flat = "".join(" " if (ord(c) < 32 or ord(c) == 127) else c for c in text[: 4 * limit])
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


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
            parts.append(one_line(str(source), 200))
        if field:
            parts.append(f"field '{one_line(str(field), 100)}'")
        prefix = ": ".join(parts)
        super().__init__(one_line(f"{prefix}: {message}" if prefix else message))


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
