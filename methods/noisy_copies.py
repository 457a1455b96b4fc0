r"""Noisy copies of the inputs and a wrapped base method: the mechanism of SmoothGrad and VarGrad.

A wrapper method evaluates any input-space *base* method at n Gaussian copies of each input,

.. math:: x + \epsilon_k,\quad \epsilon_k \sim \mathcal N(0, \sigma^2),\quad
          \sigma = \text{noise}\cdot(\max x - \min x)\ \text{per sample},

and reduces the n maps (SmoothGrad: their mean, VarGrad: their variance). The copies are
materialised in memory-bounded blocks; the noise is one ``randn(inputs.shape)`` per copy, in copy
order, so it does not depend on the block size.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from saliency.engine import Engine
from saliency.errors import InvalidOptionError
from saliency.methods.base import Method
from saliency.methods.registry import get_method
from saliency.targets import Target
from saliency.validation import require_float, require_int


def split_base_options(wrapper: type[Method], options: dict[str, Any]) -> dict[str, Any]:
    """A wrapper's keyword options: its own fields, and the rest gathered into ``base_options``
    (e.g. ``steps`` for ``base="integrated_gradients"``)."""
    own = set(wrapper.option_names())
    base_options = dict(options.pop("base_options", {}))
    base_options.update({k: v for k, v in options.items() if k not in own})
    mine = {k: v for k, v in options.items() if k in own}
    return {**mine, "base_options": base_options}


def base_method(wrapper: str, base: str, base_options: Mapping[str, Any]) -> Method:
    """The wrapped input-space method, built (and so validated) from its name and options."""
    if get_method(base).output != "input":
        raise InvalidOptionError(
            f"base={base!r} is a layer method; {wrapper} needs an input-space method"
        )
    return get_method(base).create(**base_options)


@dataclass(frozen=True)
class NoisyCopies:
    """``samples`` Gaussian copies per input with σ = ``noise`` × its value range.

    Attributes:
        samples: copies n per input.
        noise: σ as a fraction of each sample's value range.
        seed: seed of the noise; ``None`` uses torch's global generator.
    """

    samples: int
    noise: float
    seed: int | None

    def __post_init__(self) -> None:
        require_int("samples", self.samples, 1)
        require_float("noise", self.noise, 0.0)
        if self.seed is not None:
            require_int("seed", self.seed, 0)

    def maps(
        self, engine: Engine, inputs: Tensor, target: Target, base: Method
    ) -> Iterator[Tensor]:
        """The base method's maps at the copies, block by block: ``(copies, N, ...)`` each."""
        shape = (-1,) + (1,) * (inputs.ndim - 1)
        flat = inputs.flatten(1)  # σ depends on x: second-order results differentiate it too
        sigma = (self.noise * (flat.amax(1) - flat.amin(1))).view(shape)
        generator = None
        if self.seed is not None:
            generator = torch.Generator(device=inputs.device).manual_seed(self.seed)
        # Copies per block: what memory allows, and no more than fill whole forward + backward
        # passes (lcm(pass, N) points), so the copies are made shortly before their passes (16
        # points of 224² on CPU, not all n × N copies at once) and every pass is full.
        per_pass = engine.points_per_pass(inputs.shape[1:], inputs.device)
        whole_passes = math.lcm(per_pass, max(1, len(inputs))) // max(1, len(inputs))
        block = min(engine.block_size(inputs, self.samples), whole_passes)
        for start in range(0, self.samples, block):
            copies = min(block, self.samples - start)
            # One draw per copy, in copy order: the noise does not depend on the block size.
            noise = torch.stack(
                [
                    torch.randn(
                        inputs.shape, generator=generator, device=inputs.device, dtype=inputs.dtype
                    )
                    for _ in range(copies)
                ]
            )
            noisy = (inputs + sigma * noise).flatten(0, 1)
            # Row k·N + i is sample i's copy k: so are its targets and extra model inputs.
            rows = engine.for_rows(torch.arange(len(inputs), device=inputs.device).repeat(copies))
            yield base.attribute(rows, noisy, target.repeat(copies)).unflatten(0, (copies, -1))
