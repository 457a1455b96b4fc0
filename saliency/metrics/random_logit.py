"""Random-logit test (Sixt et al. 2020, "When Explanations Lie: Why Many Modified BP
Attributions Fail", ICML, arXiv:1912.09818).

An explanation of class :math:`t` should differ from one of another class. For each sample a
class :math:`r \\ne t` is drawn uniformly (seeded) and the map of :math:`r` is compared with the
map of :math:`t`,

.. math:: \\text{score} = \\operatorname{sim}\\big(R(x; t),\\ R(x; r)\\big),

SSIM by default (as in the paper and Quantus), or Spearman correlation. Lower is better: a
method whose maps barely depend on the class (an edge detector, many modified-backprop rules
whose relevance converges to one class-insensitive map) scores near 1.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from saliency.engine import Engine, EngineOptions
from saliency.errors import InvalidOptionError, InvalidTargetError
from saliency.explain import check_inputs, explain
from saliency.methods.base import Method
from saliency.metrics.relevance import Reduction, relevance_map
from saliency.metrics.similarity import Similarity, map_similarity
from saliency.model_state import evaluation_state
from saliency.targets import ClassTarget, TargetSpec, resolve_target
from saliency.validation import check_choice, require_int

__all__ = ["off_target_classes", "random_logit"]


def off_target_classes(targets: Tensor, classes: int, seed: int = 0) -> Tensor:
    """``(N,)`` classes drawn uniformly from the ``classes − 1`` classes other than each target.

    The draw uses a CPU generator seeded with ``seed``, so it is the same on every device.
    """
    require_int("classes", classes, 2)
    require_int("seed", seed, 0)
    generator = torch.Generator().manual_seed(seed)
    draws = torch.randint(classes - 1, (len(targets),), generator=generator).to(targets.device)
    return draws + (draws >= targets).long()  # skip the target class itself


def random_logit(
    model: Callable[[Tensor], Any],
    inputs: Tensor,
    method: str | Method = "gradient",
    *,
    target: TargetSpec = None,
    seed: int = 0,
    similarity: Similarity = "ssim",
    reduction: Reduction = "abs",
    batch_size: int | None = None,
    **options: Any,
) -> Tensor:
    """``(N,)`` similarity of the maps of the target class and of a random other class.

    Args:
        model: Maps ``(N, C, H, W)`` inputs to ``(N, K)`` class scores, K ≥ 2.
        inputs: ``(N, C, H, W)`` inputs on the model's device.
        method: A registered method name or a Method instance.
        target: The explained classes (None: the predictions).
        seed: Seeds the draw of the other classes (:func:`off_target_classes`).
        similarity: ``"ssim"`` or ``"spearman"`` (:mod:`saliency.metrics.similarity`).
        reduction: Pixel relevance compared (see :func:`~saliency.metrics.relevance_map`).
        batch_size: Passed to :func:`saliency.explain`.
        **options: The method's options.

    Returns:
        ``(N,)`` float32 similarities; lower means the map depends more on the class.
    """
    check_choice("similarity", similarity, Similarity)
    require_int("seed", seed, 0)
    check_inputs(inputs)
    with evaluation_state(model, keep_parameter_grads=True), torch.no_grad():
        outputs = Engine(model, EngineOptions(batch_size=batch_size)).predict(inputs)
    resolved = resolve_target(target, outputs, len(inputs))
    if not isinstance(resolved, ClassTarget):
        raise InvalidTargetError("the random-logit test needs class targets, not a function")
    if outputs.shape[1] < 2:
        raise InvalidOptionError(
            f"the random-logit test needs a model with at least 2 classes, got {outputs.shape[1]}"
        )
    targets = resolved.indices
    others = off_target_classes(targets, outputs.shape[1], seed)
    original = explain(model, inputs, method, targets, batch_size=batch_size, **options)
    other = explain(model, inputs, method, others, batch_size=batch_size, **options)
    return map_similarity(
        relevance_map(original.attributions, reduction),
        relevance_map(other.attributions, reduction),
        similarity,
    )
