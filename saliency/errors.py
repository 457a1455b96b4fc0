"""Exceptions raised by saliency.

Every error is a :class:`SaliencyError` and also a ``ValueError`` or ``TypeError`` subclass, so
callers that already catch those keep working. Messages say what was given and what is accepted.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path


class SaliencyError(Exception):
    """Base class of every error raised by saliency."""


class UnknownMethodError(SaliencyError, ValueError):
    """A method name that is not registered."""


class DuplicateMethodError(SaliencyError, ValueError):
    """A method registered under a name that is already taken."""


class InvalidOptionError(SaliencyError, ValueError):
    """An option name that a method does not accept, or a value outside its range."""


class InvalidTargetError(SaliencyError, ValueError):
    """A target that does not fit the model's outputs."""


class ModelOutputError(SaliencyError, ValueError):
    """A model whose output is not an ``(N, K)`` tensor of scores."""


class LayerNotFoundError(SaliencyError, ValueError):
    """A layer name or module that is not part of the model, or no usable layer at all."""


class ModelLoadError(SaliencyError, ValueError):
    """A model or weights file that cannot be loaded."""


class ImageLoadError(SaliencyError, ValueError):
    """An image file that cannot be decoded; ``path`` names it and ``reason`` says why."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")

    def __reduce__(self) -> tuple[type[ImageLoadError], tuple[Path, str]]:
        # Raised in worker processes: it must unpickle with both arguments.
        return type(self), (self.path, self.reason)


def accepted(values: Iterable[object]) -> str:
    """Format a list of accepted values for an error message."""
    return ", ".join(repr(v) for v in values)
