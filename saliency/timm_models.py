"""The ``timm:`` model source: ``load_model("timm:NAME", weights=...)``.

Imported on first use (``pip install saliency-kit[timm]``). ``weights="DEFAULT"`` loads timm's
pretrained weights (through the Hugging Face hub cache: a download on first use), a path loads
a local state dict (``.pth``/``.pt``/``.bin`` with ``torch.load(weights_only=True)``, or
``.safetensors``; the class count is read from the file) and ``None`` gives random weights. The
input pipeline comes from timm's data config (input size, ``crop_pct``, interpolation, mean and
std) and the class names from timm's ImageNet metadata when the model has those classes.
"""

from __future__ import annotations

import contextlib
import difflib
import math
import os
import sys
from pathlib import Path
from typing import Any

from torch import nn
from torchvision.transforms import InterpolationMode

from saliency.errors import ModelLoadError
from saliency.images import ImageTransform, Preprocess
from saliency.models import (
    LoadedModel,
    WeightsArg,
    built_for_loading,
    infer_num_classes,
    load_strict,
    read_state_dict,
)

__all__ = ["load", "timm_preprocess"]

_INTERPOLATIONS = {
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "nearest": InterpolationMode.NEAREST,
}


def _timm() -> Any:
    try:
        import timm
    except ImportError as exc:
        raise ModelLoadError(
            "timm: models need the timm package: pip install 'saliency-kit[timm]'"
        ) from exc
    return timm


def load(name: str, weights: WeightsArg = "DEFAULT") -> LoadedModel:
    """Loader of the ``timm:`` source (see the module docstring).

    Raises:
        ModelLoadError: an unknown name, weights that cannot be fetched or do not fit.
    """
    timm = _timm()
    architecture, _ = timm.models.split_model_name_tag(name)
    if not timm.is_model(architecture):
        close = difflib.get_close_matches(architecture, timm.list_models(), n=5, cutoff=0.6)
        hint = f"; close names: {', '.join(close)}" if close else ""
        raise ModelLoadError(
            f"unknown timm model {name!r}{hint}; see timm.list_models() (a pretrained tag may "
            "follow the name after a dot, e.g. vit_base_patch16_224.augreg_in21k_ft_in1k)"
        )
    if weights is None:
        model = timm.create_model(name, pretrained=False)
    elif isinstance(weights, str) and weights.upper() == "DEFAULT":
        model = _pretrained(timm, name)
    elif isinstance(weights, str | os.PathLike):
        model = _from_file(timm, name, Path(weights))
    else:
        raise ModelLoadError(
            f"weights must be 'DEFAULT', a path or None, got {type(weights).__name__}"
        )
    config = timm.data.resolve_model_data_config(model)
    return LoadedModel(model, timm_preprocess(config), _class_names(timm, model))


def _pretrained(timm: Any, name: str) -> nn.Module:
    try:
        return timm.create_model(name, pretrained=True)
    except Exception as exc:  # hub errors come in many types; all mean "not available here"
        raise ModelLoadError(
            f"cannot load timm's pretrained weights of {name} ({type(exc).__name__}: {exc}). "
            f"Offline, pass a local state-dict file (weights='{name}.safetensors' or .pth; "
            "--weights FILE), or weights=None (--weights none) for random weights"
        ) from exc


def _from_file(timm: Any, name: str, path: Path) -> nn.Module:
    state = read_state_dict(path, trust_pickle=False)
    options: dict[str, Any] = {}
    model = built_for_loading(lambda: timm.create_model(name, pretrained=False))
    classes = infer_num_classes(model.state_dict(), state)
    if classes is not None:
        options["num_classes"] = classes
        model = built_for_loading(lambda: timm.create_model(name, pretrained=False, **options))
    if set(state) != set(model.state_dict()):
        # Checkpoints in an architecture's original format: timm converts them itself, and
        # a conversion may read the model's values, so it gets a model built for real.
        model = timm.create_model(name, pretrained=False, **options)
        convert = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
        if callable(convert):
            # not that format either: the strict load below says what differs
            with contextlib.suppress(Exception):
                state = dict(convert(state, model))
    load_strict(model, state, path)
    return model


def timm_preprocess(config: dict[str, Any]) -> Preprocess | ImageTransform:
    """A timm data config (``timm.data.resolve_model_data_config``) as an input pipeline.

    Square inputs with a centre crop give a :class:`Preprocess` (shorter side resized to
    ``⌊size / crop_pct⌋``, centre crop, mean/std), as timm's evaluation transform does; other
    configs give timm's own transform.
    """
    _, height, width = config["input_size"]
    interpolation = _INTERPOLATIONS.get(str(config.get("interpolation", "bicubic")))
    crop_pct = float(config.get("crop_pct") or 1.0)
    if (
        height == width
        and config.get("crop_mode", "center") == "center"
        and interpolation is not None
    ):
        return Preprocess(
            resize_size=math.floor(height / crop_pct),
            crop_size=int(height),
            mean=tuple(config["mean"]),
            std=tuple(config["std"]),
            interpolation=interpolation,
        )
    transform: ImageTransform = _timm().data.create_transform(**config, is_training=False)
    return transform


def _class_names(timm: Any, model: nn.Module) -> tuple[str, ...] | None:
    """ImageNet class names when the model has those classes (first synonym of each)."""
    try:
        subset = timm.data.infer_imagenet_subset(model)
        if subset is None:
            return None
        info = timm.data.ImageNetInfo(subset)
    except Exception:  # no metadata for this model: no names
        return None
    if info.num_classes() != getattr(model, "num_classes", None):
        return None
    return tuple(str(d).split(",")[0].strip() for d in info.label_descriptions())
