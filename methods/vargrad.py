"""VarGrad: the variance of any input-space method over noisy copies of the input."""

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


@dataclass(frozen=True)
class VarGrad(Method):
    r"""Variance of a base method over Gaussian-perturbed copies of the input.

    .. math:: \tilde a(x) = \frac{1}{n} \sum_{k=1}^{n} \big(a(x + \epsilon_k) - \hat a(x)\big)^2,
              \quad \hat a(x) = \frac{1}{n} \sum_{k=1}^{n} a(x + \epsilon_k),

    with the noise of SmoothGrad (ε_k ~ N(0, σ²), σ = noise · (max x − min x) per sample) and the
    population variance (1/n, as captum's ``NoiseTunnel(nt_type="vargrad")``), accumulated
    block by block with Chan et al.'s pairwise update (no cancellation of E[a²] − E[a]²).
    Non-negative by construction; ``samples=1`` gives zeros. Adebayo et al. (2018), "Local
    Explanation Methods for Deep Neural Networks Lack Sensitivity to Parameter Values", ICLR
    workshop, arXiv:1810.03307.

    Options:
        samples: noisy copies n.
        noise: σ as a fraction of each sample's value range.
        base: the name of any input-space method; options this class does not own are passed
            to it.
        seed: seed of the noise (same result whatever ``batch_size``); ``None`` uses torch's
            global generator.
    """

    samples: int = 25
    noise: float = 0.15
    base: str = "gradient"
    seed: int | None = None
    base_options: Mapping[str, Any] = field(default_factory=dict)

    paper = "Adebayo et al. 2018, arXiv:1810.03307"

    @classmethod
    def create(cls, **options: Any) -> VarGrad:
        return cls(**split_base_options(cls, options))

    def __post_init__(self) -> None:
        NoisyCopies(self.samples, self.noise, self.seed)  # validates them
        base_method("VarGrad", self.base, self.base_options)  # validates the base and options

    def attribute(self, engine: Engine, inputs: Tensor, target: Target) -> Tensor:
        base = base_method("VarGrad", self.base, self.base_options)
        copies = NoisyCopies(self.samples, self.noise, self.seed)
        dtype = torch.promote_types(inputs.dtype, torch.float32)
        count, mean, squares = 0, torch.zeros((), dtype=dtype), torch.zeros((), dtype=dtype)
        for maps in copies.maps(engine, inputs, target, base):
            maps = maps.to(dtype)
            block_mean = maps.mean(0)
            block_squares = (maps - block_mean).square().sum(0)
            total = count + len(maps)
            delta = block_mean - mean
            mean = mean + delta * (len(maps) / total)
            squares = squares + block_squares + delta.square() * (count * len(maps) / total)
            count = total
        return (squares / self.samples).to(inputs.dtype)
