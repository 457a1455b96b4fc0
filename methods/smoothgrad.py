"""SmoothGrad: any input-space method averaged over noisy copies of the input."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from saliency.engine import Engine
from saliency.errors import InvalidOptionError
from saliency.methods.base import Method
from saliency.methods.registry import get_method
from saliency.targets import Target
from saliency.validation import require_bool, require_float, require_int


@dataclass(frozen=True)
class SmoothGrad(Method):
    r"""Average of a base method over Gaussian-perturbed copies of the input.

    .. math:: \hat a(x) = \frac{1}{n} \sum_{k=1}^{n} a(x + \epsilon_k),\quad
              \epsilon_k \sim \mathcal N(0, \sigma^2),\ \sigma = \text{noise}\cdot(\max x - \min x)

    with σ per sample; ``squared`` averages a(x + ε_k)² instead (SmoothGrad²). Smilkov et al.
    (2017), "SmoothGrad: removing noise by adding noise", arXiv:1706.03825.

    Options:
        samples: noisy copies n.
        noise: σ as a fraction of each sample's value range.
        base: the name of any input-space method; options this class does not own (e.g.
            ``steps`` for ``base="integrated_gradients"``) are passed to it.
        squared: average squared attributions.
        seed: seed of the noise (same result whatever ``batch_size``); ``None`` uses torch's
            global generator.
    """

    samples: int = 25
    noise: float = 0.15
    base: str = "gradient"
    squared: bool = False
    seed: int | None = None
    base_options: Mapping[str, Any] = field(default_factory=dict)

    paper = "Smilkov et al. 2017, arXiv:1706.03825"

    @classmethod
    def create(cls, **options: Any) -> SmoothGrad:
        own = set(cls.option_names())
        base_options = dict(options.pop("base_options", {}))
        base_options.update({k: v for k, v in options.items() if k not in own})
        mine = {k: v for k, v in options.items() if k in own}
        return cls(**mine, base_options=base_options)

    def __post_init__(self) -> None:
        require_int("samples", self.samples, 1)
        require_float("noise", self.noise, 0.0)
        require_bool("squared", self.squared)
        if self.seed is not None:
            require_int("seed", self.seed, 0)
        if get_method(self.base).output != "input":
            raise InvalidOptionError(
                f"base={self.base!r} is a layer method; SmoothGrad needs an input-space method"
            )
        self.base_method()  # validates the base options now, before any work

    def base_method(self) -> Method:
        """The wrapped method, built from ``base`` and ``base_options``."""
        return get_method(self.base).create(**self.base_options)

    def attribute(self, engine: Engine, inputs: Tensor, target: Target) -> Tensor:
        base = self.base_method()
        shape = (-1,) + (1,) * (inputs.ndim - 1)
        flat = inputs.flatten(1)  # σ depends on x: second-order results differentiate it too
        sigma = (self.noise * (flat.amax(1) - flat.amin(1))).view(shape)
        generator = None
        if self.seed is not None:
            generator = torch.Generator(device=inputs.device).manual_seed(self.seed)
        block = engine.block_size(inputs, self.samples)
        total = torch.zeros_like(inputs, dtype=torch.promote_types(inputs.dtype, torch.float32))
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
            maps = base.attribute(engine, noisy, target.repeat(copies)).unflatten(0, (copies, -1))
            total = total + (maps.square() if self.squared else maps).sum(0)
        return (total / self.samples).to(inputs.dtype)
