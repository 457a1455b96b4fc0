"""Integrated gradients: Gauss–Legendre quadrature, or adaptive to a completeness tolerance."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import Tensor

from saliency.baselines import BASELINE_NAMES, BaselineSpec, make_baseline
from saliency.engine import Engine
from saliency.errors import InvalidOptionError
from saliency.methods.adaptive_quadrature import integrate_adaptive
from saliency.methods.base import Method, attach_extras, attached_extras
from saliency.methods.path_integral import Path, completeness_error, gauss_legendre, integrate
from saliency.targets import Target
from saliency.validation import require_bool, require_float, require_int

__all__ = ["IntegratedGradients", "Steps", "check_steps", "gauss_legendre"]

Steps = int | Literal["auto"]


@dataclass(frozen=True)
class IntegratedGradients(Method):
    r"""Path integral of gradients from a baseline x′ to the input x.

    .. math:: a_i = (x_i - x'_i) \int_0^1 \partial_i f_t(x' + \alpha (x - x'))\,d\alpha
              \approx (x_i - x'_i) \sum_{k=1}^{m} w_k\, \partial_i f_t(x' + \alpha_k (x - x'))

    with Gauss–Legendre nodes α_k and weights w_k on [0, 1] (exact for polynomial integrands of
    degree 2m − 1; far less biased than the trapezoid rule). Completeness:
    Σ_i a_i ≈ f_t(x) − f_t(x′). Sundararajan, Taly & Yan (2017), "Axiomatic Attribution for Deep
    Networks", ICML, arXiv:1703.01365.

    ``steps="auto"`` places the nodes per sample instead, until the relative completeness error
    |Σa − (f(x) − f(x′))| / |f(x) − f(x′)| is within ``tolerance``
    (:mod:`saliency.methods.adaptive_quadrature`); ``Explanation.extras`` then holds ``passes``,
    ``completeness_error``, ``relative_error``, ``error_bound``, ``attribution_error`` (an
    estimate) and ``converged`` per sample.

    Options:
        steps: quadrature nodes m, or ``"auto"``.
        baseline: a number, a tensor broadcastable to the inputs, ``"blur"`` or ``"uniform noise"``.
        seed: seed of the ``"uniform noise"`` baseline.
        return_error: also compute the completeness error Σa − (f(x) − f(x′)) per sample
            (``Explanation.extras["completeness_error"]``; two more forward passes with fixed
            steps, none with ``"auto"``).
        tolerance: the relative completeness error ``steps="auto"`` stops at.
        max_steps: at most this many gradient passes per sample with ``steps="auto"``.
        attribution_tolerance: with ``steps="auto"``, also refine until the estimated relative
            attribution error ‖a − a_exact‖₂ / ‖a‖₂ (``extras["attribution_error"]``) is
            within it; ``None``: completeness only.
    """

    steps: Steps = 50
    baseline: BaselineSpec = 0.0
    seed: int = 0
    return_error: bool = False
    tolerance: float = 1e-2
    max_steps: int = 256
    attribution_tolerance: float | None = None

    paper = "Sundararajan et al. 2017, arXiv:1703.01365"

    def __post_init__(self) -> None:
        check_steps(self.steps, self.tolerance, self.max_steps, self.attribution_tolerance)
        require_int("seed", self.seed, 0)
        require_bool("return_error", self.return_error)
        if isinstance(self.baseline, str) and self.baseline not in BASELINE_NAMES:
            raise InvalidOptionError(
                f"baseline={self.baseline!r}; accepted names: {', '.join(BASELINE_NAMES)}, or a "
                "number or tensor"
            )

    def path(self, inputs: Tensor) -> Path:
        """The straight line from the baseline to the inputs."""
        return Path(make_baseline(self.baseline, inputs, self.seed), inputs)

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
        baseline = make_baseline(self.baseline, inputs, self.seed)
        gap = engine.target_scores(inputs, target) - engine.target_scores(baseline, target)
        return {"completeness_error": completeness_error(attributions, gap)}


def check_steps(
    steps: object, tolerance: object, max_steps: object, attribution_tolerance: object = None
) -> None:
    """Validate a path method's ``steps`` (an int ≥ 1 or ``"auto"``), ``tolerance`` (> 0),
    ``max_steps`` (an int ≥ 5: ``"auto"`` starts with 5 nodes) and ``attribution_tolerance``
    (None or > 0)."""
    if steps != "auto":
        try:
            require_int("steps", steps, 1)
        except InvalidOptionError as error:
            raise InvalidOptionError(f"{error} or 'auto'") from None
    require_float("tolerance", tolerance, 0.0, exclusive=True)
    require_int("max_steps", max_steps, 5)
    if attribution_tolerance is not None:
        require_float("attribution_tolerance", attribution_tolerance, 0.0, exclusive=True)
