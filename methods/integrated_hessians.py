"""Integrated Hessians: feature interactions with a query region, as IG of IG."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from saliency.baselines import BASELINE_NAMES, BaselineSpec, make_baseline
from saliency.engine import Chunk, Engine, Points
from saliency.errors import InvalidOptionError
from saliency.hvp import hessian_vector_product
from saliency.methods.base import Method
from saliency.methods.integrated_gradients import IntegratedGradients
from saliency.methods.path_integral import completeness_error, gauss_log
from saliency.targets import Target
from saliency.validation import is_int, require_bool, require_float, require_int

Box = tuple[int, int, int, int]
QuerySpec = Box | Tensor | None

_QUERY_ACCEPTED = (
    "None (the model's most-attributed pixels), a box (y0, x0, y1, x1) of 4 ints with "
    "0 ≤ y0 < y1 ≤ H and 0 ≤ x0 < x1 ≤ W (half-open, like slicing), or a boolean tensor "
    "broadcastable to the inputs' (N, C, H, W) shape, e.g. (H, W) or (C, H, W)"
)


@dataclass(frozen=True)
class IntegratedHessians(Method):
    r"""Interactions Γ_ij of a query region with every input feature, summed over the query.

    .. math:: a_j = \sum_{i \in Q} \Gamma_{ij},\qquad
              \Gamma_{ij} = (x_j - x'_j) \int_0^1
              \partial_j \mathrm{IG}_i\big(x' + \beta(x - x')\big)\,d\beta,

    .. math:: \mathrm{IG}_i(z) = (z_i - x'_i) \int_0^1
              \partial_i f_t\big(x' + \alpha(z - x')\big)\,d\alpha

    i.e. integrated gradients (outer path, β) of the query's summed integrated gradients (inner
    path, α). With u = 1_Q ⊙ (x − x′) and p = x′ + αβ(x − x′) this is

    .. math:: a_j = (x_j - x'_j) \int_0^1\!\!\int_0^1 \Big[ 1_Q(j)\,\partial_j f_t(p)
              + \alpha\beta\,\big(\nabla^2 f_t(p)\,u\big)_j \Big]\,d\alpha\,d\beta
              = (x_j - x'_j) \int_0^1 g_j(s)\,(-\ln s)\,ds

    since the bracket g_j depends on α and β only through s = αβ, whose density on [0, 1] is
    −ln s. The single integral is evaluated with the Gauss rule for that weight
    (:func:`~saliency.methods.path_integral.gauss_log`): one gradient and one Hessian-vector
    product (double backward) per node. ``steps`` nodes are exact for integrands of degree
    2·steps − 1 in s, as ``steps × steps`` Gauss–Legendre node pairs in α and β are; on the
    Softplus(β = 10) demo models 20 nodes are at least as accurate as 8 × 8 pairs (64 passes;
    ``python -m benchmarks.ih_rule``). Completeness: Σ_j a_j ≈ Σ_{i∈Q} IG_i(x);
    Γ_ij = Γ_ji for i ≠ j; an additive model has no off-query interactions. A query covering the
    whole input gives integrated gradients back. ReLU networks have a zero Hessian almost
    everywhere, so only the first term survives (the map is the query's own integrated
    gradients, and a ``RuntimeWarning`` says so): analyse them through
    :func:`saliency.smooth_relu`.

    The default query is the model's own evidence, never a fixed place nor ground truth: per
    sample, the ``query_fraction`` of pixels (all channels) with the largest
    :math:`\sum_c |\mathrm{IG}_c|` for the same target, IG with ``query_steps``
    Gauss–Legendre nodes and the same baseline: the map then answers "what does the region the
    model relies on most interact with?".
    Janizek, Sturmfels & Lee (2021), "Explaining Explanations: Axiomatic Feature Interactions
    for Deep Networks", JMLR 22(104), arXiv:2002.04138.

    Options:
        query: the features i. ``None`` = the most-attributed pixels (above); a box
            (y0, x0, y1, x1) of pixels of the model's input, all channels, half-open; or a
            boolean mask broadcastable to the inputs (``(H, W)``, ``(C, H, W)``,
            ``(N, 1, H, W)``, ...). A box in pixels of an original image becomes an input box
            with ``batch.framings[i].input_box(box)`` (``saliency.load_images``);
            ``saliency explain --query`` takes image pixels and converts them so.
        query_fraction: share of the pixels in the default query (at least one pixel).
        query_steps: Gauss–Legendre nodes of the integrated gradients that pick it.
        steps: nodes of the path integral in s = αβ (gradient and Hessian-vector product passes
            per sample).
        baseline: a number, a tensor broadcastable to the inputs, ``"blur"`` or
            ``"uniform noise"`` (as for integrated gradients).
        seed: seed of the ``"uniform noise"`` baseline.
        return_error: also report Σ_j a_j − Σ_{i∈Q} IG_i(x) per sample, IG computed with
            ``steps`` Gauss–Legendre nodes (``Explanation.extras["completeness_error"]``;
            ``steps`` more gradients).
    """

    derivative_order: ClassVar[int] = 2

    query: QuerySpec = None
    query_fraction: float = 0.01
    query_steps: int = 16
    steps: int = 20
    baseline: BaselineSpec = 0.0
    seed: int = 0
    return_error: bool = False

    paper = "Janizek et al. 2021, arXiv:2002.04138"

    def __post_init__(self) -> None:
        require_int("steps", self.steps, 1)
        require_int("query_steps", self.query_steps, 1)
        require_float("query_fraction", self.query_fraction, 0.0, exclusive=True, maximum=1.0)
        require_int("seed", self.seed, 0)
        require_bool("return_error", self.return_error)
        if isinstance(self.baseline, str) and self.baseline not in BASELINE_NAMES:
            raise InvalidOptionError(
                f"baseline={self.baseline!r}; accepted names: {', '.join(BASELINE_NAMES)}, or a "
                "number or tensor"
            )
        object.__setattr__(self, "query", _normalise_query(self.query))

    def query_mask(self, inputs: Tensor) -> Tensor:
        """An explicit query as a boolean mask of the inputs' shape ``(N, C, H, W)`` (the default
        query depends on the model: see :meth:`resolve_query`)."""
        if self.query is None:
            raise InvalidOptionError(
                "the default query is chosen from the model's attributions: use resolve_query"
            )
        return query_mask(self.query, inputs)

    def resolve_query(self, engine: Engine, inputs: Tensor, target: Target) -> Tensor:
        """The query as an ``(N, C, H, W)`` boolean mask; the default one from the model's
        integrated gradients (see the class docstring)."""
        if self.query is not None:
            return query_mask(self.query, inputs)
        ig = IntegratedGradients(steps=self.query_steps, baseline=self.baseline, seed=self.seed)
        # eager like the rest of a second-order method (its passes keep the graph)
        plain = engine.with_options(create_graph=False, compile=False)
        relevance = ig.attribute(plain, inputs.detach(), target).detach().abs().sum(dim=1)
        return top_pixels(relevance, self.query_fraction).unsqueeze(1).expand_as(inputs)

    def rule(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """Nodes s_k and weights w_k (float64) of ∫₀¹ g(s) (−ln s) ds along p = x′ + s(x − x′)."""
        return gauss_log(self.steps, device)

    def attribute(self, engine: Engine, inputs: Tensor, target: Target) -> Tensor:
        x = inputs if engine.create_graph else inputs.detach()
        baseline = make_baseline(self.baseline, x, self.seed)
        delta = x - baseline
        mask = self.resolve_query(engine, inputs, target)
        u = torch.where(mask, delta, torch.zeros_like(delta))
        scale, weight = self.rule(inputs.device)
        repeats = len(scale)
        shape = (-1,) + (1,) * (inputs.ndim - 1)

        def make(index: Tensor) -> Tensor:
            sample, node = index // repeats, index % repeats
            return baseline[sample] + scale[node].to(x.dtype).view(shape) * delta[sample]

        curved = [False]  # any non-zero Hessian-vector product (a ReLU network has none)

        def integrand(chunk: Chunk) -> Tensor:
            node = chunk.index % repeats
            product = hessian_vector_product(chunk, u[chunk.samples], engine.create_graph)
            if not curved[0]:
                curved[0] = bool(product.detach().ne(0).any())
            grads = chunk.grads if engine.create_graph else chunk.grads.detach()
            first = torch.where(mask[chunk.samples], grads, torch.zeros_like(grads))
            dtype = grads.dtype
            value = weight[node].to(dtype).view(shape) * (
                first + scale[node].to(dtype).view(shape) * product
            )
            return value

        # The first backward keeps its graph for the second one, whatever the caller asked.
        inner = engine.with_options(create_graph=True)
        points = Points(len(inputs), repeats, inputs.shape[1:], inputs.device, make)
        total = inner.accumulate(points, target, integrand)
        if not curved[0] and not bool(mask.all()):
            warnings.warn(
                "integrated_hessians: the model's Hessian is zero along every path (a piecewise-"
                "linear ReLU network?), so the map is only the query's integrated gradients; "
                "explain the model inside saliency.smooth_relu(model) for its interactions",
                RuntimeWarning,
                stacklevel=2,
            )
        return (delta * total).to(inputs.dtype)

    def extras(
        self, engine: Engine, inputs: Tensor, target: Target, attributions: Tensor
    ) -> dict[str, Tensor]:
        if not self.return_error:
            return {}
        ig = IntegratedGradients(steps=self.steps, baseline=self.baseline, seed=self.seed)
        plain = engine.with_options(create_graph=False)
        gradients = ig.attribute(plain, inputs.detach(), target).detach()
        mask = self.resolve_query(engine, inputs, target)
        expected = torch.where(mask, gradients, torch.zeros_like(gradients)).flatten(1)
        return {"completeness_error": completeness_error(attributions, expected.double().sum(1))}


def _normalise_query(query: object) -> QuerySpec:
    """Validate a query's form (its fit to the inputs is checked by :func:`query_mask`)."""
    if query is None:
        return None
    if isinstance(query, np.ndarray):
        query = torch.from_numpy(query)
    if isinstance(query, Tensor):
        if query.dtype != torch.bool or query.ndim < 2 or query.ndim > 4:
            raise InvalidOptionError(
                f"query tensor of dtype {query.dtype} and shape {tuple(query.shape)}; "
                f"accepted: {_QUERY_ACCEPTED}"
            )
        if not bool(query.any()):
            raise InvalidOptionError("query mask selects no input feature")
        return query
    if (
        isinstance(query, Sequence)
        and not isinstance(query, str)
        and len(query) == 4
        and all(is_int(v) or isinstance(v, np.integer) for v in query)
    ):
        y0, x0, y1, x1 = (int(v) for v in query)
        if 0 <= y0 < y1 and 0 <= x0 < x1:
            return (y0, x0, y1, x1)
    raise InvalidOptionError(f"query={query!r}; accepted: {_QUERY_ACCEPTED}")


def top_pixels(relevance: Tensor, fraction: float) -> Tensor:
    """``(N, H, W)`` boolean mask of each sample's ⌈fraction·H·W⌉ most relevant pixels (ties
    broken by position, deterministically)."""
    flat = relevance.flatten(1)
    count = max(1, math.ceil(fraction * flat.shape[1]))
    picked = torch.topk(flat, count, dim=1, sorted=False).indices
    mask = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, picked, True)
    return mask.view_as(relevance)


def query_mask(query: QuerySpec | Any, inputs: Tensor) -> Tensor:
    """An explicit query (see :class:`IntegratedHessians`) as a boolean mask of the inputs' shape.

    Raises:
        InvalidOptionError: a box outside the image, a mask that does not broadcast, or None
            (the default query depends on the model).
    """
    n, c, h, w = inputs.shape
    if query is None:
        raise InvalidOptionError(
            "query=None is chosen from the model's attributions; accepted here: a box or a mask"
        )
    if isinstance(query, Tensor):
        try:
            shape = torch.broadcast_shapes(query.shape, inputs.shape)
        except RuntimeError:
            shape = None
        if shape != inputs.shape:
            raise InvalidOptionError(
                f"query mask of shape {tuple(query.shape)} does not broadcast to the inputs' "
                f"shape {tuple(inputs.shape)}; accepted: {_QUERY_ACCEPTED}"
            )
        mask = query.to(inputs.device)
    else:
        y0, x0, y1, x1 = query
        if y1 > h or x1 > w:
            raise InvalidOptionError(
                f"query box {query} does not fit an image of {h}×{w} pixels; accepted: "
                f"{_QUERY_ACCEPTED}"
            )
        mask = torch.zeros(h, w, dtype=torch.bool, device=inputs.device)
        mask[y0:y1, x0:x1] = True
    return mask.expand(n, c, h, w)
