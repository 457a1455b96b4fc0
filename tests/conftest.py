"""Fixtures shared by several test modules.

``method`` runs a test once per registered method (``saliency.list_methods()``); a test that
takes ``method_options`` gets that method's fast options from :data:`FAST_OPTIONS`. A test
parametrised over its own ``method`` values (``@pytest.mark.parametrize("method", [...])``) gets
the options of those. A method added to the registry is tested by every such test with its
defaults until it has a row here.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch

import saliency

# Feature groups for captum's perturbation methods on the 8×8 test inputs: the four quadrants.
QUADRANTS = ((torch.arange(8) // 4)[:, None] * 2 + (torch.arange(8) // 4)[None, :]).view(1, 1, 8, 8)
_CAPTUM_OPTIONS: dict[str, dict[str, Any]] = {
    "captum:DeepLiftShap": {
        "baselines": torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(7))
    },
    "captum:FeatureAblation": {"feature_mask": QUADRANTS},
    "captum:FeaturePermutation": {"feature_mask": QUADRANTS},
    "captum:GradientShap": {"baselines": 0.0, "n_samples": 2},
    "captum:IntegratedGradients": {"n_steps": 3},
    "captum:KernelShap": {"feature_mask": QUADRANTS, "n_samples": 8},
    "captum:Lime": {"feature_mask": QUADRANTS, "n_samples": 8},
    "captum:Occlusion": {"sliding_window_shapes": (3, 4, 4), "strides": (3, 4, 4)},
    "captum:ShapleyValueSampling": {"feature_mask": QUADRANTS, "n_samples": 2},
    "captum:ShapleyValues": {"feature_mask": QUADRANTS},
}
FAST_OPTIONS: dict[str, dict[str, Any]] = {
    "integrated_gradients": {"steps": 3},
    # a fixed seed: the same noise in every call (finite differences, compiled vs eager)
    "smoothgrad": {"samples": 2, "seed": 0},
    "vargrad": {"samples": 2, "seed": 0},
    "expected_gradients": {"samples": 2, "seed": 0},
    "blur_ig": {"steps": 3, "max_sigma": 2.0},
    "guided_ig": {"steps": 3},
    "integrated_hessians": {"steps": 2},
    # Grad-CAM++'s exact derivatives (2 backward passes per activation element, with an engine
    # of its own) cover more of its code than the closed form, which is Grad-CAM's.
    "gradcam_pp": {"exact": True},
    # Every captum method also gets seed=0: the same call twice must give the same result.
    **{
        name: {**_CAPTUM_OPTIONS.get(name, {}), "seed": 0}
        for name in saliency.list_methods()
        if name.startswith("captum:")
    },
}
"""Small option values that keep a call fast, per method (others run with their defaults)."""


def fast_options(name: str) -> dict[str, Any]:
    """A copy of the fast options of the method ``name``."""
    return dict(FAST_OPTIONS.get(name, {}))


def _applies_to_a_cnn(name: str) -> bool:
    from saliency.testing import checked_model

    return saliency.get_method(name).applies_to(checked_model())


# Attention methods need a vision transformer: tests/test_token_models.py covers them.
CNN_METHODS = [name for name in saliency.list_methods() if _applies_to_a_cnn(name)]
DIFFERENTIABLE_METHODS = [
    name
    for name in CNN_METHODS
    if ":" not in name and saliency.get_method(name).supports_create_graph
]
"""The methods of the ``method`` fixture whose attributions can be differentiated."""


@pytest.fixture(params=[name for name in CNN_METHODS if ":" not in name])
def method(request: pytest.FixtureRequest) -> str:
    """Each method registered one by one (not the members of method families such as
    ``captum:NAME``, which wrap another library: their own tests and the lifecycle contract
    cover them), in turn."""
    name: str = request.param
    return name


@pytest.fixture(params=CNN_METHODS)
def any_method(request: pytest.FixtureRequest) -> str:
    """Each registered method name in turn, method families included."""
    name: str = request.param
    return name


@pytest.fixture
def method_options(method: str) -> dict[str, Any]:
    """The fast options of ``method``."""
    return fast_options(method)


@pytest.fixture
def any_method_options(any_method: str) -> dict[str, Any]:
    """The fast options of ``any_method``."""
    return fast_options(any_method)


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread for a module of tiny models: on shared cores a thread team spins and
    stalls, which makes tiny (float64) convolutions ~20× slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
