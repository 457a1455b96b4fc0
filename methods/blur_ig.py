"""Blur IG: integrated gradients along a path of decreasing Gaussian blur."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from saliency.engine import Engine
from saliency.methods.adaptive_quadrature import integrate_adaptive
from saliency.methods.base import Method, attach_extras, attached_extras
from saliency.methods.integrated_gradients import Steps, check_steps
from saliency.methods.path_integral import Path, completeness_error, integrate
from saliency.targets import Target
from saliency.validation import require_bool, require_float

# σ below this blurs nothing in floating point (exp(−1/(2σ²)) underflows): the path's end.
_SHARP = 1e-3


@dataclass(frozen=True)
class BlurIG(Method):
    r"""Integrated gradients from a fully blurred copy of the input to the input, along blur.

    .. math:: a_i = \int_0^1 \partial_i f_t(\gamma(\alpha))\, \gamma'_i(\alpha)\,d\alpha,
              \qquad \gamma(\alpha) = G_{(1 - \alpha)\sigma_{\max}} * x

    with G_σ a Gaussian kernel of width σ (separable, reflect padding, radius ⌈3σ_max⌉ cut to
    the image) and γ′ its exact derivative along the path, integrated with Gauss–Legendre
    nodes (or adaptively, ``steps="auto"``). Completeness:
    Σ_i a_i ≈ f_t(x) − f_t(G_{σ_max} * x). Xu, Venugopalan & Sundararajan (2020), "Attribution
    in Scale and Space", CVPR, arXiv:2004.03383 (PAIR saliency's ``BlurIG`` uses a left Riemann
    sum and a finite-difference derivative).

    Options:
        steps: quadrature nodes, or ``"auto"`` (see integrated gradients).
        max_sigma: σ_max in pixels (PAIR's default: 50).
        return_error: also compute the completeness error per sample
            (``Explanation.extras["completeness_error"]``).
        tolerance: the relative completeness error ``steps="auto"`` stops at.
        max_steps: at most this many gradient passes per sample with ``steps="auto"``.
        attribution_tolerance: with ``steps="auto"``, also refine until the estimated relative
            attribution error ‖a − a_exact‖₂ / ‖a‖₂ (``extras["attribution_error"]``) is
            within it; ``None``: completeness only.
    """

    steps: Steps = 50
    max_sigma: float = 50.0
    return_error: bool = False
    tolerance: float = 1e-2
    max_steps: int = 256
    attribution_tolerance: float | None = None

    paper = "Xu et al. 2020, arXiv:2004.03383"

    def __post_init__(self) -> None:
        check_steps(self.steps, self.tolerance, self.max_steps, self.attribution_tolerance)
        require_float("max_sigma", self.max_sigma, 0.0, exclusive=True)
        require_bool("return_error", self.return_error)

    def path(self, inputs: Tensor) -> Path:
        """γ(α) = G_{(1−α)σ_max} * x and γ′(α) = −σ_max ∂G_σ/∂σ * x."""
        radius = math.ceil(3 * self.max_sigma)

        def sigmas(alphas: Tensor) -> Tensor:
            return ((1 - alphas) * self.max_sigma).clamp_min(_SHARP)

        def point(samples: Tensor, alphas: Tensor) -> Tensor:
            return blur(inputs[samples], sigmas(alphas), radius)[0]

        def velocity(samples: Tensor, alphas: Tensor) -> Tensor:
            return -self.max_sigma * blur(inputs[samples], sigmas(alphas), radius)[1]

        start = blur(inputs, inputs.new_full((len(inputs),), self.max_sigma), radius)[0]
        return Path(start, inputs, point, velocity)

    def attribute(self, engine: Engine, inputs: Tensor, target: Target) -> Tensor:
        path = self.path(inputs)
        if self.steps == "auto":
            totals, extras = integrate_adaptive(
                engine, target, path, self.tolerance, self.max_steps, self.attribution_tolerance
            )
            return attach_extras(totals, extras)
        return integrate(engine, target, path, self.steps)

    def extras(
        self, engine: Engine, inputs: Tensor, target: Target, attributions: Tensor
    ) -> dict[str, Tensor]:
        if self.steps == "auto":
            return attached_extras(attributions)
        if not self.return_error:
            return {}
        start = self.path(inputs.detach()).start
        gap = engine.target_scores(inputs, target) - engine.target_scores(start, target)
        return {"completeness_error": completeness_error(attributions, gap)}


def blur(images: Tensor, sigmas: Tensor, radius: int) -> tuple[Tensor, Tensor]:
    """``(G_σ * x, ∂(G_σ * x)/∂σ)`` for ``(m, C, H, W)`` images, one σ per image.

    The kernel has taps −r..r (r = ``radius``, cut to size − 1 per axis: reflect padding needs
    fewer taps than pixels), renormalised: continuous in σ, so the blur path has no jumps.
    """
    rows_y, dy_rows = _kernel(sigmas, min(radius, images.shape[-2] - 1), images.dtype)
    rows_x, dx_rows = _kernel(sigmas, min(radius, images.shape[-1] - 1), images.dtype)
    across = _convolve(images, rows_x, dim=3)
    blurred = _convolve(across, rows_y, dim=2)
    derivative = _convolve(_convolve(images, dx_rows, dim=3), rows_y, dim=2) + _convolve(
        across, dy_rows, dim=2
    )
    return blurred, derivative


def _kernel(sigmas: Tensor, radius: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Normalised Gaussian taps ``(m, 2r + 1)`` and their derivatives with respect to σ."""
    offsets = torch.arange(-radius, radius + 1, device=sigmas.device, dtype=dtype)
    sigma = sigmas.to(dtype)[:, None]
    taps = torch.exp(-0.5 * (offsets / sigma) ** 2)
    taps = taps / taps.sum(1, keepdim=True)
    # d/dσ of exp(−j²/2σ²)/Z is k_j (j² − Σ_l k_l l²) / σ³.
    squares = offsets.square()
    derivative = taps * (squares - (taps * squares).sum(1, keepdim=True)) / sigma**3
    return taps, derivative


def _convolve(images: Tensor, taps: Tensor, dim: int) -> Tensor:
    """Each image convolved along ``dim`` (2: rows, 3: columns) with its own taps, reflected."""
    m, c, h, w = images.shape
    pad = (taps.shape[1] - 1) // 2
    if pad == 0:
        return images * taps[:, :1, None, None]
    # One group per (image, channel): a per-image kernel in a single grouped convolution.
    kernel = taps.repeat_interleave(c, 0)
    if dim == 2:
        padded = F.pad(images, (0, 0, pad, pad), mode="reflect")
        weight = kernel.view(m * c, 1, -1, 1)
    else:
        padded = F.pad(images, (pad, pad, 0, 0), mode="reflect")
        weight = kernel.view(m * c, 1, 1, -1)
    out = F.conv2d(padded.reshape(1, m * c, *padded.shape[2:]), weight, groups=m * c)
    return out.view(m, c, h, w)
