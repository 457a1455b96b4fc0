r"""Hessian-vector products of the target score with respect to the inputs.

.. math:: (H v)_n = \nabla_x \big( \nabla_x f_{t_n}(x_n) \cdot v_n \big)
          = \frac{\partial^2 f_{t_n}}{\partial x\,\partial x^\top}(x_n)\, v_n

computed by double backward (Pearlmutter 1994, "Fast Exact Multiplication by the Hessian",
Neural Computation 6(1)): one forward, one backward with ``create_graph`` and one more backward
per point — about 3–4× the cost of a plain gradient, never the full Hessian. The points go
through the same chunked :class:`~saliency.engine.Engine` as every method, so memory is bounded
whatever the batch size.

ReLU networks are piecewise linear: their input Hessian is zero almost everywhere. Run them
through :func:`saliency.smooth_relu` for a smooth surrogate.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from saliency.engine import Chunk, Engine, EngineOptions, Points, Precision
from saliency.errors import InvalidOptionError
from saliency.explain import check_inputs
from saliency.model_state import evaluation_state
from saliency.targets import TargetSpec, pending_target


def hvp(
    model: Callable[[Tensor], Any],
    inputs: Tensor,
    vectors: Tensor,
    target: TargetSpec = None,
    *,
    batch_size: int | None = None,
    create_graph: bool = False,
    precision: Precision = "fp32",
) -> Tensor:
    """Hessian-vector products ``H_n v_n`` of each sample's target score, by double backward.

    The model is handled like :func:`saliency.explain`: eval mode during the call, and its
    ``training`` flags, parameters' ``requires_grad`` and ``.grad`` and hooks as before
    afterwards (also when it raises).

    Args:
        model: maps an ``(N, C, H, W)`` float tensor to ``(N, K)`` scores (or anything a
            callable ``target`` understands).
        inputs: ``(N, C, H, W)`` points x_n; never modified.
        vectors: the directions v_n, a tensor broadcastable to the inputs' shape.
        target: ``None`` (argmax per sample), an int, N ints, or a callable
            ``outputs -> (N,)`` scores.
        batch_size: maximum points per chunk; ``None`` = automatic.
        create_graph: keep the graph so that the products can be differentiated again (with
            respect to the inputs, the vectors and the parameters).
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` autocast of the forward pass.

    Returns:
        ``(N, C, H, W)`` products in the inputs' dtype and device.

    Raises:
        InvalidOptionError: bad inputs, vectors or options.
    """
    check_inputs(inputs)
    vectors = _check_vectors(vectors, inputs)
    options = EngineOptions(batch_size=batch_size, create_graph=create_graph, precision=precision)
    # The first backward always keeps its graph: the second one differentiates it.
    engine = Engine(model, options).with_options(create_graph=True)
    with evaluation_state(model, keep_parameter_grads=create_graph):
        points = inputs if create_graph else inputs.detach()
        resolved = pending_target(target, points)
        directions = vectors if create_graph else vectors.detach()

        def product(chunk: Chunk) -> Tensor:
            return hessian_vector_product(chunk, directions[chunk.samples], create_graph)

        result = engine.accumulate(Points.of(points), resolved, product)
    return result.to(inputs.dtype)


def hessian_vector_product(chunk: Chunk, vectors: Tensor, create_graph: bool) -> Tensor:
    """``∇_p (∇_p f · v)`` for the points of a chunk evaluated with ``create_graph=True``.

    A building block for second-order methods: pass it inside an ``Engine.accumulate``
    contribution. Points whose gradient does not depend on the point (a piecewise linear model)
    give zeros.

    Args:
        chunk: an evaluated chunk whose ``grads`` carry their graph.
        vectors: ``(m, ...)`` directions, one per point of the chunk.
        create_graph: keep the graph of the product itself (third-order use).
    """
    (product,) = torch.autograd.grad(
        (chunk.grads * vectors.to(chunk.grads.dtype)).sum(),
        chunk.points,
        create_graph=create_graph,
        materialize_grads=True,
    )
    return product if create_graph else product.detach()


def _check_vectors(vectors: object, inputs: Tensor) -> Tensor:
    if not isinstance(vectors, Tensor) or not vectors.is_floating_point():
        given = (
            f"a {vectors.dtype} tensor" if isinstance(vectors, Tensor) else type(vectors).__name__
        )
        raise InvalidOptionError(
            f"vectors must be a floating-point tensor broadcastable to the inputs' shape "
            f"{tuple(inputs.shape)}; got {given}"
        )
    try:
        shape = torch.broadcast_shapes(vectors.shape, inputs.shape)
    except RuntimeError:
        shape = None
    if shape != inputs.shape:
        raise InvalidOptionError(
            f"vectors of shape {tuple(vectors.shape)} do not broadcast to the inputs' shape "
            f"{tuple(inputs.shape)}"
        )
    return vectors.to(device=inputs.device).expand_as(inputs)
