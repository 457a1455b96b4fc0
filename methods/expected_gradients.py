"""Expected Gradients (GradientSHAP): integrated gradients averaged over drawn baselines."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from saliency.engine import Chunk, Engine, Points
from saliency.errors import InvalidOptionError
from saliency.methods.base import Method
from saliency.targets import Target
from saliency.validation import is_real, require_int

_ACCEPTED = (
    "a tensor of reference images (R, C, H, W) or one image (C, H, W) of the inputs' C, H, W, or "
    "a number (a constant image)"
)


@dataclass(frozen=True)
class ExpectedGradients(Method):
    r"""Integrated gradients in expectation over baselines x′ drawn from reference images.

    .. math:: a_i = \mathbb{E}_{x' \sim D,\ \alpha \sim U(0, 1)}
              \big[(x_i - x'_i)\, \partial_i f_t(x' + \alpha (x - x'))\big]
              \approx \frac{1}{n} \sum_{k=1}^{n} (x_i - x'_{k,i})\,
              \partial_i f_t(x'_k + \alpha_k (x - x'_k))

    with x′_k drawn uniformly from the references and α_k uniformly from [0, 1], one pair per
    gradient pass. Completeness holds in expectation: E[Σ_i a_i] = f_t(x) − E[f_t(x′)]. With a
    single reference it is a Monte Carlo estimate of integrated gradients; it is captum's
    ``GradientShap`` with ``stdevs=0``. Erion, Janizek, Sturmfels, Lundberg & Lee (2021),
    "Improving performance of deep learning models with axiomatic attribution priors and
    expected gradients", Nature Machine Intelligence 3, arXiv:1906.10670.

    Give reference images that stand for the data (e.g. a few hundred training images): the
    default, one black (zero) image, makes it a Monte Carlo estimate of integrated gradients.

    Options:
        baselines: the reference images (R, C, H, W) or one image (C, H, W), or a number (a
            constant image).
        samples: draws n per input.
        seed: seed of the draws (the same whatever ``batch_size``); ``None`` uses torch's global
            generator.
    """

    baselines: Tensor | float = 0.0
    samples: int = 50
    seed: int | None = None

    paper = "Erion et al. 2021, arXiv:1906.10670"

    def __post_init__(self) -> None:
        require_int("samples", self.samples, 1)
        if self.seed is not None:
            require_int("seed", self.seed, 0)
        references = self.baselines
        if not (is_real(references) or isinstance(references, Tensor)):
            raise InvalidOptionError(f"baselines={references!r}; accepted: {_ACCEPTED}")

    def references(self, inputs: Tensor) -> Tensor:
        """The reference images ``(R, C, H, W)`` on the inputs' device and dtype."""
        if not isinstance(self.baselines, Tensor):
            return torch.full_like(inputs[:1], float(self.baselines))
        references = self.baselines.to(device=inputs.device, dtype=inputs.dtype)
        if references.ndim == inputs.ndim - 1:
            references = references[None]
        if references.shape[1:] != inputs.shape[1:] or len(references) == 0:
            raise InvalidOptionError(
                f"baselines of shape {tuple(self.baselines.shape)} for inputs of shape "
                f"{tuple(inputs.shape)}; accepted: {_ACCEPTED}"
            )
        return references

    def draw(self, count: int, references: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """``(count, samples)`` reference indices and α ∈ [0, 1), drawn on the CPU."""
        generator = None if self.seed is None else torch.Generator().manual_seed(self.seed)
        shape = (count, self.samples)
        indices = torch.randint(references, shape, generator=generator)
        alphas = torch.rand(shape, generator=generator, dtype=torch.float64)
        return indices.to(device), alphas.to(device)

    def attribute(self, engine: Engine, inputs: Tensor, target: Target) -> Tensor:
        references = self.references(inputs)
        indices, alphas = self.draw(len(inputs), len(references), inputs.device)
        n = self.samples
        shape = (-1,) + (1,) * (inputs.ndim - 1)

        def start_and_alpha(index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            sample, draw = index // n, index % n
            start = references[indices[sample, draw]]
            return inputs[sample] - start, start, alphas[sample, draw].to(inputs.dtype).view(shape)

        def make(index: Tensor) -> Tensor:
            delta, start, alpha = start_and_alpha(index)
            return start + alpha * delta

        def contribution(chunk: Chunk) -> Tensor:
            delta, _, _ = start_and_alpha(chunk.index)
            return delta * chunk.grads / n

        points = Points(len(inputs), n, inputs.shape[1:], inputs.device, make)
        return engine.accumulate(points, target, contribution).to(inputs.dtype)
