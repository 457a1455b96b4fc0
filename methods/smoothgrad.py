"""SmoothGrad: any input-space method averaged over noisy copies of the input."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from saliency.engine import Engine
from saliency.methods.base import Method
from saliency.methods.noisy_copies import NoisyCopies, base_method, split_base_options
from saliency.targets import Target
from saliency.validation import require_bool


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
        return cls(**split_base_options(cls, options))

    def __post_init__(self) -> None:
        self.copies()  # validates samples, noise and seed
        require_bool("squared", self.squared)
        self.base_method()  # validates the base and its options now, before any work

    def copies(self) -> NoisyCopies:
        """The noisy copies this method averages over."""
        return NoisyCopies(self.samples, self.noise, self.seed)

    def base_method(self) -> Method:
        """The wrapped method, built from ``base`` and ``base_options``."""
        return base_method("SmoothGrad", self.base, self.base_options)

    def attribute(self, engine: Engine, inputs: Tensor, target: Target) -> Tensor:
        base = self.base_method()
        total = torch.zeros_like(inputs, dtype=torch.promote_types(inputs.dtype, torch.float32))
        for maps in self.copies().maps(engine, inputs, target, base):
            total = total + (maps.square() if self.squared else maps).sum(0)
        return (total / self.samples).to(inputs.dtype)
