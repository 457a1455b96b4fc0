"""Sanity check: cascading model-parameter randomisation (Adebayo et al. 2018, "Sanity Checks
for Saliency Maps", NeurIPS, arXiv:1810.03292).

Starting from the output, the layers of a copy of the model are re-initialised one after another
(cascading: a layer stays random once randomised), and after each the explanation is recomputed
for the original targets. A method that depends on what the model learned gives maps whose
Spearman rank correlation with the original map falls towards 0 as more layers are random; a
map that stays correlated mostly reflects the input (an edge detector), not the model.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from saliency.errors import InvalidOptionError, LayerNotFoundError, accepted
from saliency.explain import explain
from saliency.methods.base import Method
from saliency.metrics.relevance import Reduction, relevance_map
from saliency.targets import TargetSpec

__all__ = [
    "average_ranks",
    "cascade_layers",
    "cascading_randomisation",
    "parameter_randomisation",
    "spearman_correlation",
]

_NORMALISATION = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def average_ranks(values: Tensor) -> Tensor:
    """Ranks (0-based) of each row of ``(N, P)`` values; tied values share their mean rank.

    With ``lo``/``hi`` the numbers of values strictly below / at most ``v`` in the row, the rank
    of ``v`` is :math:`(lo + hi - 1) / 2`.
    """
    ordered = values.sort(dim=1).values
    below = torch.searchsorted(ordered, values, right=False)
    at_most = torch.searchsorted(ordered, values, right=True)
    return (below + at_most - 1).to(torch.float64) / 2


def spearman_correlation(first: Tensor, second: Tensor) -> Tensor:
    """Spearman's rank correlation per sample of two ``(N, ...)`` tensors.

    .. math:: \\rho = \\frac{\\operatorname{cov}(r_x, r_y)}{\\sigma_{r_x}\\,\\sigma_{r_y}}

    on average ranks (ties share their mean rank). A sample whose values are all equal in either
    tensor has no ranking: its correlation is 0.

    Returns:
        ``(N,)`` float32 correlations in [-1, 1].
    """
    if first.shape != second.shape or first.ndim < 2:
        raise InvalidOptionError(
            f"spearman_correlation needs two (N, ...) tensors of one shape, got "
            f"{tuple(first.shape)} and {tuple(second.shape)}"
        )
    ranks_x = average_ranks(first.detach().flatten(1).double())
    ranks_y = average_ranks(second.detach().flatten(1).double())
    ranks_x = ranks_x - ranks_x.mean(dim=1, keepdim=True)
    ranks_y = ranks_y - ranks_y.mean(dim=1, keepdim=True)
    scale = ranks_x.norm(dim=1) * ranks_y.norm(dim=1)
    covariance = (ranks_x * ranks_y).sum(dim=1)
    rho = torch.where(scale > 0, covariance / scale.clamp_min(1e-300), 0.0)
    return rho.clamp(-1.0, 1.0).float()


def cascade_layers(model: nn.Module) -> list[str]:
    """Default cascade: modules that own parameters (normalisation layers excepted), output first.

    The order is the reverse of registration order, which for sequential CNNs is from the
    classifier back to the first convolution.
    """
    names = [
        name
        for name, module in model.named_modules()
        if name
        and not isinstance(module, _NORMALISATION)
        and any(True for _ in module.parameters(recurse=False))
    ]
    return names[::-1]


def _derived_seed(seed: int, index: int) -> int:
    """A 63-bit seed for layer ``index`` that does not collide with small user seeds.

    (Re-initialising with ``manual_seed(seed)`` could reproduce the very weights a model was
    initialised with under the same seed.)
    """
    digest = hashlib.sha256(f"saliency.metrics.sanity:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _reinitialise(module: nn.Module, seed: int) -> None:
    """Re-initialise ``module`` and its submodules with their own ``reset_parameters``.

    Runs on a CPU copy under a seeded RNG, so the new values do not depend on the device.
    """
    clone = copy.deepcopy(module).to("cpu")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for part in clone.modules():
            reset = getattr(part, "reset_parameters", None)
            if callable(reset):
                reset()
    with torch.no_grad():
        for (_, mine), (_, fresh) in zip(
            module.state_dict(keep_vars=True).items(),
            clone.state_dict(keep_vars=True).items(),
            strict=True,
        ):
            mine.copy_(fresh)


def cascading_randomisation(
    model: nn.Module, layers: Sequence[str] | None = None, seed: int = 0
) -> Iterator[tuple[str, nn.Module]]:
    """Yield ``(layer, model copy)`` with that layer and all before it in ``layers`` randomised.

    The same copy is modified in place and yielded again; ``model`` itself is never changed.

    Args:
        model: The trained model.
        layers: Module names, in cascade order (default :func:`cascade_layers`: output first).
        seed: Seeds the re-initialisation (layer ``i`` gets a seed derived from ``(seed, i)``).
    """
    names = list(cascade_layers(model) if layers is None else layers)
    modules = dict(model.named_modules())
    unknown = [n for n in names if n not in modules or not n]
    if unknown:
        raise LayerNotFoundError(
            f"unknown layers {accepted(unknown)}; accepted: {accepted(n for n in modules if n)}"
        )
    randomised = copy.deepcopy(model)
    copies = dict(randomised.named_modules())
    for index, name in enumerate(names):
        _reinitialise(copies[name], _derived_seed(seed, index))
        yield name, randomised


def _layer_name(model: nn.Module, layer: Any) -> Any:
    """A module given as a Grad-CAM ``layer`` option, as its name (so it exists in copies)."""
    if isinstance(layer, nn.Module):
        for name, module in model.named_modules():
            if module is layer:
                return name
    return layer


def parameter_randomisation(
    model: nn.Module,
    inputs: Tensor,
    method: str | Method = "gradient",
    *,
    target: TargetSpec = None,
    layers: Sequence[str] | None = None,
    seed: int = 0,
    reduction: Reduction = "abs",
    batch_size: int | None = None,
    **options: Any,
) -> dict[str, Tensor]:
    """Spearman correlation of the maps of the original and each cascading-randomised model.

    Args:
        model: The trained model (left unchanged).
        inputs: ``(N, C, H, W)`` inputs on the model's device.
        method: A registered method name or a Method instance.
        target: Classes to explain (None: the original model's predictions); the randomised
            models explain the same classes.
        layers: Cascade order (default :func:`cascade_layers`).
        seed: Seeds the re-initialisation.
        reduction: Pixel relevance compared (``"abs"``: :math:`\\sum_c |a_c|`, as in the paper).
        batch_size: Passed to :func:`saliency.explain`.
        **options: The method's options.

    Returns:
        ``{layer: (N,) correlations}`` in cascade order; the value at the last layer is the
        fully randomised model's.
    """
    if "layer" in options:
        options = {**options, "layer": _layer_name(model, options["layer"])}
    original = explain(model, inputs, method, target, batch_size=batch_size, **options)
    reference = relevance_map(original.attributions, reduction)
    targets = original.targets if original.targets is not None else target
    correlations = {}
    for name, randomised in cascading_randomisation(model, layers, seed):
        attributions = explain(
            randomised, inputs, method, targets, batch_size=batch_size, **options
        ).attributions
        correlations[name] = spearman_correlation(reference, relevance_map(attributions, reduction))
    return correlations
