"""The one exception type for bad user input (files, shapes, options)."""

from __future__ import annotations

__all__ = ["InputError"]


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
