"""Every error graphc raises on purpose.

Each is a `GraphcError` subclass whose message says what failed, where, what
was expected and what was found, with a hint when one is likely.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Location:
    """Where in a spec something happened: file, section.key, line and column."""

    file: str | None = None
    key: str | None = None
    line: int | None = None
    col: int | None = None
    text: str | None = None    # the expression text, for a caret line
    offset: int | None = None  # 0-based column of the culprit inside `text`

    def __str__(self) -> str:
        parts = [self.file or "<graph>"]
        if self.line is not None:
            parts.append(str(self.line))
            if self.col is not None:
                parts.append(str(self.col))
        return ":".join(parts)


class GraphcError(Exception):
    """Base of every error graphc raises deliberately."""

    def __init__(self, message: str, location: Location | None = None, hint: str | None = None):
        self.message = message
        self.location = location
        self.hint = hint
        super().__init__(self._render())

    def _render(self) -> str:
        kind = type(self).__name__
        loc = self.location
        if loc is None:
            head = f"{kind}: {self.message}"
        else:
            where = f" in {loc.key}" if loc.key else ""
            head = f"{loc}: {kind}{where}: {self.message}"
            if loc.text is not None:
                text, offset = _window(loc.text, loc.offset)
                head += f"\n    {text}"
                if offset is not None:
                    head += "\n    " + " " * offset + "^"
        if self.hint:
            head += f"\n  hint: {self.hint}"
        return head


def _window(text: str, offset: int | None, width: int = 72) -> tuple[str, int | None]:
    """At most `width` characters of a long expression, around the caret, with '...' where cut."""
    if len(text) <= width:
        return text, offset
    start = 0 if offset is None else max(0, min(offset - width // 2, len(text) - width))
    shown = text[start:start + width]
    prefix = "..." if start else ""
    suffix = "..." if start + width < len(text) else ""
    return prefix + shown + suffix, None if offset is None else offset - start + len(prefix)


class SpecError(GraphcError):
    """The spec file or expression is malformed."""


class ShapeError(GraphcError, ValueError):
    """Shapes do not agree (in a graph, or an argument at call time)."""


class DTypeError(GraphcError, TypeError):
    """A value or argument has the wrong dtype."""


class ArgumentError(GraphcError, TypeError):
    """Missing, extra or misnamed arguments at call time."""


class GradientError(GraphcError):
    """A gradient cannot be derived (unknown `of`/`wrt`, op without a VJP)."""


class CompileError(GraphcError):
    """The C compiler is missing or failed; names the source kept and the stderr."""


class ExecutionError(GraphcError):
    """Generated C returned a nonzero status code."""


class NonFiniteError(ExecutionError):
    """Training met a loss, gradient or parameter that is NaN or infinite (fit with
    stop_on_nonfinite=True). `epoch`, `step` (the optimizer step that would have been taken, 1-based
    over the state's life) and `tensor` (the loss, or the param whose update was not finite) say
    where; the state is left as it was before that step."""

    def __init__(self, message: str, epoch: int, step: int, tensor: str, hint: str | None = None):
        self.epoch, self.step, self.tensor = epoch, step, tensor
        super().__init__(message, hint=hint)


class CheckError(GraphcError):
    """`graphc.check` found a mismatch between C, the reference and finite differences."""
