"""captum's attribution classes as the ``captum:*`` method family.

- discovery: introspected from ``captum.attr`` through one entry point, loaded lazily;
- options: captum's signatures, validated before any work;
- results: equal to calling captum directly (raw attributions, 1e-5 relative) on torchvision
  resnet18, vgg11 and mobilenet_v2 with random weights, for a dozen classes, and a contract
  test over every member on a tiny model;
- the lifecycle contract where captum changes the model (DeepLift's and LRP's module attributes,
  LRP's rules and weights), our targets, and batching from the engine.
"""

from __future__ import annotations

import pickle
import random
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import captum.attr as ca
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from captum.attr._utils.lrp_rules import EpsilonRule
from reference_models import GRADCAM_LAYERS, NAMES, reference_inputs, reference_model
from reference_models import relative_error as rel
from test_lifecycle import FAST_OPTIONS, assert_same_state, snapshot
from torch import Tensor, nn

import saliency
from saliency.errors import InvalidOptionError, InvalidTargetError, LayerNotFoundError
from saliency.layers import find_layer
from saliency.methods.captum_methods import CAPTUM, CaptumMethod

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.filterwarnings("ignore::UserWarning"),  # captum's notes on hooks and grads
]

CAPTUM_NAMES = [name for name in saliency.list_methods() if name.startswith("captum:")]
EXPECTED_MEMBERS = {
    "Deconvolution", "DeepLift", "DeepLiftShap", "FeatureAblation", "FeaturePermutation",
    "GradientShap", "GuidedBackprop", "GuidedGradCam", "InputXGradient", "IntegratedGradients",
    "KernelShap", "LRP", "Lime", "Occlusion", "Saliency", "ShapleyValueSampling", "ShapleyValues",
}  # fmt: skip
"""What the selection rule finds in captum 0.9 (a check of the rule, not the source of names)."""
NOT_MEMBERS = {
    "NoiseTunnel", "LimeBase", "DataLoaderAttribution", "LayerGradCam", "LayerIntegratedGradients",
    "NeuronGradient", "LLMAttribution", "Attribution", "GradientAttribution",
    "PerturbationAttribution",
}  # fmt: skip


CAPTUM_ATTRIBUTES = {"rule", "activations", "input", "output", "input_ref"}
"""What captum's DeepLift and LRP attach to modules."""


def without_captum_leftovers(model: nn.Module) -> None:
    """Clean a shared test model after a direct captum call (LRP leaves ``activations``)."""
    for module in model.modules():
        for name in CAPTUM_ATTRIBUTES:
            vars(module).pop(name, None)


def seeded(seed: int) -> None:
    """What ``seed=`` does inside the wrapper, for the direct captum calls."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


# ---------------------------------------------------------------------------------- discovery


def test_family_members_come_from_captum() -> None:
    members = set(CAPTUM.members())
    assert members >= EXPECTED_MEMBERS
    assert not members & NOT_MEMBERS
    assert {f"captum:{m}" for m in members} == set(CAPTUM_NAMES)
    for member in members:
        cls = saliency.get_method(f"captum:{member}")
        assert issubclass(cls, CaptumMethod) and cls is saliency.get_method(f"captum:{member}")
        assert cls.captum_class is getattr(ca, member)
        assert cls.output == "input" and not cls.supports_create_graph


def _run(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    )
    return result.stdout.strip()


def test_captum_is_imported_only_when_a_family_name_is_needed() -> None:
    out = _run(
        "import sys, torch, saliency\n"
        "x = torch.rand(1, 3, 4, 4)\n"
        "m = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 2))\n"
        "saliency.explain(m, x, 'gradient')\n"
        "names = saliency.list_methods(families=False)\n"
        "print('captum' in sys.modules, 'gradient' in names, any(':' in n for n in names))\n"
        "saliency.get_method('captum:Saliency')\n"
        "print('captum' in sys.modules)\n"
    )
    assert out.splitlines() == ["False True False", "True"]


def test_unknown_member_and_unregistering_a_member() -> None:
    with pytest.raises(saliency.errors.UnknownMethodError, match=r"captum:Saliency"):
        saliency.get_method("captum:Salience")
    saliency.unregister_method("captum:Occlusion")
    try:
        assert "captum:Occlusion" not in saliency.list_methods()
        with pytest.raises(saliency.errors.UnknownMethodError):
            saliency.get_method("captum:Occlusion")
    finally:
        from saliency.methods import registry

        registry._hidden.discard("captum:Occlusion")
    assert "captum:Occlusion" in saliency.list_methods()
    with pytest.raises(saliency.errors.DuplicateMethodError, match="captum:Saliency"):
        saliency.register_method(saliency.get_method("gradient"), name="captum:Saliency")


def test_method_instances_pickle() -> None:
    method = saliency.get_method("captum:IntegratedGradients").create(n_steps=4)
    assert pickle.loads(pickle.dumps(method)) == method


# ------------------------------------------------------------------------------------ options


@pytest.mark.parametrize("name", CAPTUM_NAMES)
def test_options_are_captums_keyword_arguments(name: str) -> None:
    import inspect

    cls = saliency.get_method(name)
    captum_class = cls.captum_class
    constructor = list(inspect.signature(captum_class.__init__).parameters)[2:]
    attribute = list(inspect.signature(captum_class.attribute).parameters)[2:]
    left_out = {"target", "additional_forward_args", "return_convergence_delta", "kwargs"}
    # an argument named like a parameter of saliency.explain is prefixed: captum_method
    clashing = set(inspect.signature(saliency.explain).parameters)
    expected = [
        f"captum_{p}" if p in clashing else p for p in constructor + attribute if p not in left_out
    ]
    assert list(cls.option_names()) == [*expected, "seed"]
    assert list(cls.constructor_options) + list(cls.attribute_options) == expected
    renamed = (clashing & {*constructor, *attribute}) - left_out
    assert cls.renamed == {f"captum_{p}": p for p in renamed}


def test_unknown_and_missing_options_are_refused_with_the_accepted_names() -> None:
    x = torch.rand(1, 3, 8, 8)
    model = nn.Sequential(nn.Flatten(), nn.Linear(192, 3))
    with pytest.raises(InvalidOptionError, match=r"no option 'steps'.*'n_steps'.*'captum_method'"):
        saliency.explain(model, x, "captum:IntegratedGradients", steps=4)
    with pytest.raises(InvalidOptionError, match=r"needs the option 'sliding_window_shapes'"):
        saliency.explain(model, x, "captum:Occlusion")
    with pytest.raises(InvalidOptionError, match=r"n_steps='4'; accepted: int"):
        saliency.explain(model, x, "captum:IntegratedGradients", n_steps="4")
    with pytest.raises(InvalidOptionError, match=r"abs=1; accepted: bool"):
        saliency.explain(model, x, "captum:Saliency", abs=1)
    with pytest.raises(InvalidOptionError, match=r"internal_batch_size=0"):
        saliency.explain(model, x, "captum:IntegratedGradients", internal_batch_size=0)
    with pytest.raises(InvalidOptionError, match=r"create_graph=True is not supported"):
        saliency.explain(model, x, "captum:Saliency", create_graph=True)


def test_defaults_and_recorded_options() -> None:
    method = saliency.get_method("captum:IntegratedGradients").create()
    assert method.options() == {
        "multiply_by_inputs": True,
        "baselines": None,
        "n_steps": 50,
        "captum_method": "gausslegendre",  # IG's `method`: explain() has a `method` parameter
        "internal_batch_size": None,  # None: from the engine's batch size
        "seed": None,
    }
    # A captum default that is not a plain value is None here (captum's default is used).
    assert saliency.get_method("captum:FeaturePermutation").create().options()["perm_func"] is None
    assert saliency.get_method("captum:Saliency").create().options() == {"abs": True, "seed": None}


# --------------------------------------------------------------- agreement on torchvision

AGREEMENT: dict[tuple[str, str], float] = {}


@pytest.fixture(scope="module", autouse=True)
def _print_agreement() -> Iterator[None]:
    yield
    if AGREEMENT:
        print("\nmax |ours − captum| / max |captum| per method and model:")
        for (method, model), value in sorted(AGREEMENT.items()):
            print(f"  {method:<28s} {model:<14s} {value:.2e}")


# 4 feature groups (the 32×32 quadrants, all channels) for the perturbation methods at 64×64.
BLOCKS = ((torch.arange(64) // 32)[:, None] * 2 + (torch.arange(64) // 32)[None, :]).view(
    1, 1, 64, 64
)
# captum's default batching: here the perturbation methods' batched evaluation (our default) is
# compared with it separately, since batched convolutions round differently.
ONE = {"perturbations_per_eval": 1}
Case = tuple[dict[str, Any], Callable[[nn.Module], Any], dict[str, Any]]
"""Our options; the captum object from the model; captum's attribute() keyword arguments."""
CASES: dict[str, Case] = {
    "captum:Saliency": ({}, ca.Saliency, {}),
    "captum:InputXGradient": ({}, ca.InputXGradient, {}),
    "captum:IntegratedGradients": ({"n_steps": 8}, ca.IntegratedGradients, {"n_steps": 8}),
    "captum:GuidedBackprop": ({}, ca.GuidedBackprop, {}),
    "captum:Deconvolution": ({}, ca.Deconvolution, {}),
    "captum:DeepLift": ({}, ca.DeepLift, {}),
    "captum:LRP": ({}, ca.LRP, {}),
    "captum:GradientShap": (
        {"baselines": 0.0, "n_samples": 3, "stdevs": 0.1, "seed": 3},
        ca.GradientShap,
        {"baselines": torch.zeros(1, 3, 64, 64), "n_samples": 3, "stdevs": 0.1},
    ),
    "captum:Occlusion": (
        {"sliding_window_shapes": (3, 32, 32), "strides": (3, 32, 32), **ONE},
        ca.Occlusion,
        {"sliding_window_shapes": (3, 32, 32), "strides": (3, 32, 32)},
    ),
    "captum:FeatureAblation": (
        {"feature_mask": BLOCKS, **ONE},
        ca.FeatureAblation,
        {"feature_mask": BLOCKS},
    ),
    "captum:ShapleyValueSampling": (
        {"feature_mask": BLOCKS, "n_samples": 2, "seed": 4, **ONE},
        ca.ShapleyValueSampling,
        {"feature_mask": BLOCKS, "n_samples": 2},
    ),
    "captum:KernelShap": (
        {"feature_mask": BLOCKS, "n_samples": 8, "seed": 5, **ONE},
        ca.KernelShap,
        {"feature_mask": BLOCKS, "n_samples": 8},
    ),
}
# What captum itself refuses on a model: ours must refuse the same way (and restore the model).
CAPTUM_REFUSES = {
    ("captum:DeepLift", "resnet18"): (RuntimeError, "does not contain some of the input/output"),
    ("captum:LRP", "mobilenet_v2"): (TypeError, "ReLU6'> has no rule"),
}


@pytest.mark.parametrize("model_name", NAMES)
@pytest.mark.parametrize("name", list(CASES))
def test_matches_captum_called_directly(name: str, model_name: str) -> None:
    ours_options, make, theirs_options = CASES[name]
    model = reference_model(model_name)
    x = reference_inputs()
    target = torch.tensor([1, 7])
    before = snapshot(model, x)
    refused = CAPTUM_REFUSES.get((name, model_name))
    if refused is not None:
        error, message = refused
        with pytest.raises(error, match=message):
            make(model).attribute(x.clone(), target=target, **theirs_options)
        without_captum_leftovers(model)
        with pytest.raises(error, match=message):
            saliency.explain(model, x, name, target=target, **ours_options)
        assert_same_state(before, snapshot(model, x))
        return
    ours = saliency.explain(model, x, name, target=target, **ours_options).attributions
    assert_same_state(before, snapshot(model, x))
    seeded(ours_options.get("seed", 0))
    try:
        theirs = make(model).attribute(x.clone(), target=target, **theirs_options)
    finally:
        without_captum_leftovers(model)
    AGREEMENT[(name, model_name)] = rel(ours, theirs)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5 * theirs.abs().max().item())


@pytest.mark.parametrize("model_name", NAMES)
@pytest.mark.parametrize("name", ["captum:Occlusion", "captum:FeatureAblation"])
def test_automatic_perturbations_per_eval_changes_only_rounding(name: str, model_name: str) -> None:
    """Our default evaluates many perturbations per pass (captum's default: one). The sums are
    the same up to the rounding of batched convolutions, amplified where f(x) − f(x′) cancels:
    within 1e-4 of the largest attribution."""
    ours_options, make, theirs_options = CASES[name]
    model = reference_model(model_name)
    x = reference_inputs()
    target = torch.tensor([1, 7])
    automatic = {k: v for k, v in ours_options.items() if k != "perturbations_per_eval"}
    ours = saliency.explain(model, x, name, target=target, **automatic).attributions
    theirs = make(model).attribute(x.clone(), target=target, **theirs_options)
    AGREEMENT[(f"{name} (batched)", model_name)] = rel(ours, theirs)
    assert rel(ours, theirs) < 1e-4


@pytest.mark.parametrize("model_name", NAMES)
def test_guided_gradcam_matches_captum(model_name: str) -> None:
    model = reference_model(model_name)
    x = reference_inputs()
    target = torch.tensor([3, 4])
    layer = GRADCAM_LAYERS[model_name]
    ours = saliency.explain(model, x, "captum:GuidedGradCam", target=target, layer=layer)
    theirs = ca.GuidedGradCam(model, model.get_submodule(layer)).attribute(x.clone(), target=target)
    AGREEMENT[("captum:GuidedGradCam", model_name)] = rel(ours.attributions, theirs)
    torch.testing.assert_close(
        ours.attributions, theirs, rtol=1e-5, atol=1e-5 * theirs.abs().max().item()
    )
    # layer=None: the automatic layer of Grad-CAM (vgg11: its 7×7 avgpool at this size)
    automatic = saliency.explain(model, x, "captum:GuidedGradCam", target=target)
    found = find_layer(model, None, lambda: model(x[:1]))
    theirs = ca.GuidedGradCam(model, found).attribute(x.clone(), target=target)
    torch.testing.assert_close(automatic.attributions, theirs, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------- every member: the contract


class Tiny(nn.Module):
    """conv → ReLU → conv → ReLU → pool → linear, 5 classes, for 8×8 inputs."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU()
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(6, 5)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.pool(self.features(x)).flatten(1))


def contract_options(name: str) -> dict[str, Any]:
    return dict(FAST_OPTIONS[name])


def direct(name: str, model: nn.Module, x: Tensor, target: Any, options: dict[str, Any]) -> Tensor:
    """captum called by hand with the same options (the wrapper's additions resolved)."""
    cls = saliency.get_method(name)
    assert issubclass(cls, CaptumMethod)
    values = {k: v for k, v in options.items() if k != "seed"}
    if isinstance(values.get("baselines"), float) and "baselines" in cls.number_as_tensor:
        values["baselines"] = torch.zeros_like(x[:1])
    if "layer" in cls.constructor_options:
        values["layer"] = model.features[2]
    names = cls.renamed
    constructor = {names.get(k, k): values[k] for k in cls.constructor_options if k in values}
    attribute = {names.get(k, k): values[k] for k in cls.attribute_options if k in values}
    seeded(options["seed"])
    return cls.captum_class(model, **constructor).attribute(x.clone(), target=target, **attribute)


@pytest.mark.parametrize("name", CAPTUM_NAMES)
def test_every_member_runs_under_the_contract_and_equals_captum(name: str) -> None:
    model = Tiny().eval()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    options = contract_options(name)
    if "layer" in saliency.get_method(name).constructor_options:
        options["layer"] = "features.2"
    before = snapshot(model, x)
    ex = saliency.explain(model, x, name, target=[1, 3], **options)
    assert_same_state(before, snapshot(model, x))
    assert ex.attributions.shape == x.shape and ex.attributions.dtype == torch.float32
    assert torch.isfinite(ex.attributions).all() and not ex.attributions.requires_grad
    assert ex.targets is not None and ex.targets.tolist() == [1, 3]
    assert ex.method == name
    # no captum leftovers on the modules (captum's own LRP leaves `activations` behind)
    for module in model.modules():
        assert not CAPTUM_ATTRIBUTES & set(vars(module))
    theirs = direct(name, model, x, torch.tensor([1, 3]), options)
    torch.testing.assert_close(ex.attributions, theirs, rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------- targets


def _difference(outputs: Tensor) -> Tensor:
    return outputs[:, 2] - outputs[:, 0]


@pytest.mark.parametrize("name", ["captum:IntegratedGradients", "captum:DeepLift", "captum:Lime"])
@pytest.mark.parametrize("kind", ["None", "int", "list", "callable"])
def test_targets(name: str, kind: str) -> None:
    model = Tiny().eval()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    spec: Any = {"None": None, "int": 4, "list": [0, 2], "callable": _difference}[kind]
    options = contract_options(name)
    ex = saliency.explain(model, x, name, target=spec, **options)
    if kind == "callable":
        assert ex.targets is None

        class Scored(nn.Module):  # the forward a captum user would write for this target
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, points: Tensor) -> Tensor:
                return _difference(self.model(points))

        theirs = direct(name, Scored(), x, None, options)
    else:
        with torch.no_grad():
            expected = model(x).argmax(1) if spec is None else torch.tensor(spec).expand(2)
        assert ex.targets is not None and ex.targets.tolist() == expected.tolist()
        theirs = direct(name, model, x, expected, options)
    torch.testing.assert_close(ex.attributions, theirs, rtol=1e-5, atol=1e-7)


def test_bad_target_is_refused_before_captum_runs() -> None:
    model = Tiny().eval()
    with pytest.raises(InvalidTargetError, match="out of range"):
        saliency.explain(model, torch.rand(2, 3, 8, 8), "captum:Saliency", target=9)


def test_methods_that_hook_layers_need_a_module() -> None:
    model = Tiny().eval()

    def function(x: Tensor) -> Tensor:
        return model(x)

    x = torch.rand(2, 3, 8, 8)
    for name in ("captum:DeepLift", "captum:LRP", "captum:GuidedBackprop", "captum:GuidedGradCam"):
        with pytest.raises(LayerNotFoundError, match=r"nn\.Module"):
            saliency.explain(function, x, name)
    # a forward_func class takes any callable
    ours = saliency.explain(function, x, "captum:Saliency", target=1, abs=False).attributions
    gradient = saliency.explain(model, x, "gradient", target=1).attributions
    torch.testing.assert_close(ours, gradient)


# ------------------------------------------------------------ what captum does to the model


def test_lrp_keeps_the_users_rules_and_the_parameter_versions() -> None:
    """captum's LRP deletes every ``rule`` it finds, leaves ``activations`` on the layers and
    copies the weights back with load_state_dict (bumping every parameter's version, which
    breaks any autograd graph the caller holds). Through saliency none of that happens."""
    model = reference_model("vgg11")
    x = reference_inputs()
    layer = model.features[0]
    rule = EpsilonRule(epsilon=1e-3)
    layer.rule = rule
    try:
        kept = model(x).sum()  # a graph the caller holds across the call
        versions = [p._version for p in model.parameters()]
        ours = saliency.explain(model, x, "captum:LRP", target=[2, 3]).attributions
        assert layer.rule is rule
        assert [p._version for p in model.parameters()] == versions
        assert not any("activations" in vars(m) for m in model.modules())
        assert not any("rule" in vars(m) for m in model.modules() if m is not layer)
        kept.backward()  # still valid
        # the same call straight to captum: the result agrees, and the side effects are real
        theirs = ca.LRP(model).attribute(x.clone(), target=torch.tensor([2, 3]))
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-12)
        assert not hasattr(layer, "rule")
        assert [p._version for p in model.parameters()] != versions
    finally:
        model.zero_grad(set_to_none=True)
        for module in model.modules():
            vars(module).pop("rule", None)
            vars(module).pop("activations", None)


def test_deeplift_attributes_are_removed_even_when_the_model_raises() -> None:
    model = Tiny().eval()
    x = torch.rand(2, 3, 8, 8)
    calls = {"n": 0}

    def fail_on_second_call(module: nn.Module, args: Any, output: Tensor) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("model failed")

    handle = model.head.register_forward_hook(fail_on_second_call)
    before = snapshot(model, x)
    try:
        with pytest.raises(RuntimeError, match="model failed"):
            saliency.explain(model, x, "captum:DeepLift", target=1)
    finally:
        handle.remove()
    after = snapshot(model, x)
    before["modules"]["head"]["_forward_hooks"] = after["modules"]["head"]["_forward_hooks"]
    assert_same_state(before, after)
    for module in model.modules():
        assert not {"input", "output", "input_ref"} & set(vars(module))


# ------------------------------------------------------------------- batching from the engine


class Counting(nn.Module):
    """Records the batch size of every forward pass of ``model``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.sizes: list[int] = []

    def forward(self, x: Tensor) -> Tensor:
        self.sizes.append(len(x))
        return self.model(x)


def test_batch_size_sets_internal_batch_size_and_perturbations_per_eval() -> None:
    model = Counting(Tiny().eval())
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    ig = saliency.explain(model, x, "captum:IntegratedGradients", target=1, n_steps=5, batch_size=4)
    assert max(model.sizes[1:]) <= 4  # the first pass is the prediction
    model.sizes.clear()
    ig_direct = ca.IntegratedGradients(model).attribute(x, target=1, n_steps=5)
    assert model.sizes == [10]  # captum's default: every step in one batch
    torch.testing.assert_close(ig.attributions, ig_direct, rtol=1e-5, atol=1e-7)
    model.sizes.clear()
    saliency.explain(
        model, x, "captum:Occlusion", target=1, sliding_window_shapes=(3, 2, 2), batch_size=8
    )
    assert max(model.sizes) == 8  # 4 perturbations of the 2 inputs per pass
    model.sizes.clear()
    saliency.explain(
        model, x, "captum:Occlusion", target=1, sliding_window_shapes=(3, 2, 2), batch_size=8,
        perturbations_per_eval=1,
    )  # fmt: skip
    assert max(model.sizes) == 2  # given: captum's meaning


def test_classes_without_a_batching_option_are_called_per_chunk() -> None:
    model = Counting(Tiny().eval())
    x = torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    chunked = saliency.explain(model, x, "captum:InputXGradient", target=2, batch_size=2)
    assert model.sizes == [2, 2, 1, 2, 2, 1]  # the prediction, then captum per chunk
    whole = ca.InputXGradient(model).attribute(x.clone(), target=2)
    torch.testing.assert_close(chunked.attributions, whole, rtol=1e-6, atol=1e-8)


# ----------------------------------------------------------------------------- composition


def test_smoothgrad_and_vargrad_wrap_a_captum_method() -> None:
    model = Tiny().eval()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    for wrapper in ("smoothgrad", "vargrad"):
        options = {"samples": 3, "seed": 1}
        ours = saliency.explain(model, x, wrapper, base="captum:Saliency", abs=False, **options)
        plain = saliency.explain(model, x, wrapper, base="gradient", **options)
        torch.testing.assert_close(ours.attributions, plain.attributions, rtol=1e-6, atol=1e-8)


def test_bf16_precision_reaches_captum() -> None:
    model = reference_model("resnet18")
    x = reference_inputs()
    fp32 = saliency.explain(model, x, "captum:InputXGradient", target=1).attributions
    bf16 = saliency.explain(model, x, "captum:InputXGradient", target=1, precision="bf16")
    assert bf16.attributions.dtype == torch.float32
    assert not torch.equal(bf16.attributions, fp32)  # autocast was on
    cosine = F.cosine_similarity(bf16.attributions.flatten(), fp32.flatten(), dim=0)
    assert cosine > 0.95


def test_integrated_gradients_rule_is_captum_method() -> None:
    model = Tiny().eval()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    ours = saliency.explain(
        model, x, "captum:IntegratedGradients", target=1, n_steps=4, captum_method="riemann_left"
    ).attributions
    theirs = ca.IntegratedGradients(model).attribute(x, target=1, n_steps=4, method="riemann_left")
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-8)
