"""Per-sample extra model inputs (``forward_args=``), sliced and repeated along with the points.

A model ``f(x, *args, **kwargs)`` that takes more than the image (a per-sample scale, a text
embedding, a mask) cannot be explained through a closure over those extras: a method evaluates
*points*, not the samples themselves (``N × steps`` path points for integrated gradients, noisy
copies for SmoothGrad), so a closure would pair point ``p`` with the wrong sample's extras. With
``forward_args`` the engine gives the model, for every chunk of points, the rows of each tensor
that belong to the points' samples: ``f(points, *args[rows], **kwargs[rows])``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from saliency.errors import InvalidOptionError

ForwardArgsSpec = Tensor | tuple[Any, ...] | list[Any] | Mapping[str, Any] | None
"""What ``forward_args=`` accepts: ``None``, a tensor (one extra positional argument), a
tuple/list (extra positional arguments) or a mapping (keyword arguments)."""


@dataclass(frozen=True)
class ForwardArgs:
    """Extra model arguments: the model is called ``model(points, *args, **kwargs)``.

    Tensors (of ``rows`` rows, one per sample) are indexed by each point's sample; anything
    else is passed as it is.

    Attributes:
        args: extra positional arguments.
        kwargs: extra keyword arguments.
        rows: the number of samples the tensors' rows belong to.
    """

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    rows: int

    @classmethod
    def of(cls, value: ForwardArgsSpec, samples: int) -> ForwardArgs | None:
        """Check ``forward_args=`` for ``samples`` inputs (``None`` gives ``None``).

        Raises:
            InvalidOptionError: not one of the accepted forms, or a tensor whose first dimension
                is not ``samples``.
        """
        if value is None:
            return None
        if isinstance(value, Tensor):
            args: tuple[Any, ...] = (value,)
            kwargs: dict[str, Any] = {}
        elif isinstance(value, tuple | list):
            args, kwargs = tuple(value), {}
        elif isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
            args, kwargs = (), dict(value)
        else:
            raise InvalidOptionError(
                f"forward_args={type(value).__name__}; accepted: a tensor, a tuple of extra "
                "positional arguments or a dict of keyword arguments of the model (tensors with "
                "one row per input sample; other values are passed as they are)"
            )
        named = [(f"forward_args[{i}]", v) for i, v in enumerate(args)]
        named += [(f"forward_args[{k!r}]", v) for k, v in kwargs.items()]
        for name, item in named:
            if isinstance(item, Tensor) and (item.ndim == 0 or len(item) != samples):
                shape = tuple(item.shape)
                raise InvalidOptionError(
                    f"{name} is a tensor of shape {shape}; accepted: tensors with one row per "
                    f"input sample (first dimension {samples}), sliced with the points; pass "
                    "values shared by every sample as non-tensors or through the model"
                )
        return cls(args, kwargs, samples)

    def select(self, index: Tensor) -> ForwardArgs:
        """The arguments of the samples ``index`` (row ``j`` of the result is row ``index[j]``)."""

        def take(item: Any) -> Any:
            return item.index_select(0, index.to(item.device)) if isinstance(item, Tensor) else item

        return ForwardArgs(
            tuple(take(item) for item in self.args),
            {key: take(item) for key, item in self.kwargs.items()},
            len(index),
        )

    def call(self, model: Callable[..., Any], points: Tensor, samples: Tensor) -> Any:
        """``model(points, ...)`` with the rows of the points' ``samples``."""
        chosen = self.select(samples)
        return model(points, *chosen.args, **chosen.kwargs)

    def first(self, count: int, device: torch.device) -> Tensor:
        """The sample indices of a pass over the first ``count`` inputs."""
        if count > self.rows:
            raise InvalidOptionError(
                f"a pass of {count} points outside the engine's chunks cannot be paired with the "
                f"{self.rows} rows of forward_args"
            )
        return torch.arange(count, device=device)
