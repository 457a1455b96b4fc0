"""The ``hf:`` model source: ``load_model("hf:PATH")`` for Hugging Face image classifiers.

Imported on first use (``pip install saliency-kit[hf]``). ``PATH`` is a folder written by
``save_pretrained`` (read offline), or a hub id such as ``google/vit-base-patch16-224``
(downloaded through the Hugging Face cache on first use). ``weights="DEFAULT"`` uses the
model's own weights, a path loads a state-dict file into the configured architecture, and
``None`` gives random weights for the configuration. The input pipeline comes from the image
processor config (``preprocessor_config.json``: size, crop, mean, std, resampling) and the class
names from ``config.id2label``. The model returns an ``ImageClassifierOutput``; class targets
read its ``logits``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn
from torchvision.transforms import InterpolationMode

from saliency.errors import ModelLoadError
from saliency.images import Preprocess
from saliency.models import LoadedModel, WeightsArg, load_strict, read_state_dict

__all__ = ["hf_preprocess", "load"]

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")
# PIL resampling filters (what image processors store) as torchvision interpolation modes.
_RESAMPLING = {
    0: InterpolationMode.NEAREST,
    1: InterpolationMode.LANCZOS,
    2: InterpolationMode.BILINEAR,
    3: InterpolationMode.BICUBIC,
    4: InterpolationMode.BOX,
    5: InterpolationMode.HAMMING,
}
_DEFAULT_LABEL = re.compile(r"LABEL_\d+")


def _transformers() -> Any:
    try:
        import transformers
    except ImportError as exc:
        raise ModelLoadError(
            "hf: models need the transformers package: pip install 'saliency-kit[hf]'"
        ) from exc
    return transformers


def load(path: str, weights: WeightsArg = "DEFAULT") -> LoadedModel:
    """Loader of the ``hf:`` source (see the module docstring).

    Raises:
        ModelLoadError: no such folder or hub id, or weights that do not fit.
    """
    transformers = _transformers()
    folder = Path(path).expanduser()
    local = folder.is_dir()
    if not local and not _HUB_ID.fullmatch(path):
        raise ModelLoadError(
            f"hf:{path}: no such folder, and not a hub id (ORG/NAME); accepted: a folder written "
            "by save_pretrained, or a Hugging Face hub id"
        )
    source = str(folder) if local else path
    if weights is not None and not isinstance(weights, str | os.PathLike):
        raise ModelLoadError(
            f"weights must be 'DEFAULT', a path or None, got {type(weights).__name__}"
        )
    try:
        if weights is None or not _is_default(weights):
            config = transformers.AutoConfig.from_pretrained(source, local_files_only=local)
            model = transformers.AutoModelForImageClassification.from_config(config)
            if weights is not None:
                state = read_state_dict(Path(weights), trust_pickle=False)
                load_strict(model, state, Path(weights))
        else:
            model = transformers.AutoModelForImageClassification.from_pretrained(
                source, local_files_only=local
            )
    except ModelLoadError:
        raise
    except Exception as exc:  # transformers raises OSError, ValueError, KeyError, ...
        where = "the folder" if local else "the hub (or its cache)"
        raise ModelLoadError(
            f"cannot load hf:{path} from {where} ({type(exc).__name__}: {exc}); accepted: an image "
            "classification model (AutoModelForImageClassification)"
        ) from exc
    return LoadedModel(model, hf_preprocess(transformers, source, local, model), _labels(model))


def _is_default(weights: str | os.PathLike[str]) -> bool:
    return isinstance(weights, str) and weights.upper() == "DEFAULT"


def hf_preprocess(transformers: Any, source: str, local: bool, model: nn.Module) -> Preprocess:
    """The image processor config as a :class:`Preprocess` (the model config's image size and
    mean = std = 0.5, the ViT processor's defaults, when there is none).

    A ``{"height", "width"}`` size resizes the image to exactly that size in transformers; here
    (square sizes) the shorter side is resized and the centre cropped, which is the same for
    square images (``saliency explain`` always resizes the whole image to the square).
    """
    try:
        processor = transformers.AutoImageProcessor.from_pretrained(
            source, local_files_only=local
        )
    except Exception:  # no processor config: the defaults below
        processor = None
    image_size = getattr(getattr(model, "config", None), "image_size", 224)
    side = int(image_size if isinstance(image_size, int) else min(image_size))
    if processor is None:
        return Preprocess(resize_size=side, crop_size=side, mean=(0.5,) * 3, std=(0.5,) * 3)
    size = getattr(processor, "size", None)
    height, width = _get(size, "height"), _get(size, "width")
    shortest = _get(size, "shortest_edge")
    cropped = getattr(processor, "do_center_crop", False)
    crop_side = _get(getattr(processor, "crop_size", None), "height") if cropped else None
    if height is not None and width is not None:
        resize: int | None = min(int(height), int(width))
        crop_side = crop_side or resize
    else:
        resize = int(shortest) if shortest is not None else side
    normalize = getattr(processor, "do_normalize", True)
    mean = tuple(getattr(processor, "image_mean", None) or (0.5,) * 3) if normalize else (0.0,) * 3
    std = tuple(getattr(processor, "image_std", None) or (0.5,) * 3) if normalize else (1.0,) * 3
    resample = getattr(processor, "resample", 2)
    interpolation = _RESAMPLING.get(int(resample), InterpolationMode.BILINEAR)
    return Preprocess(
        resize_size=resize if getattr(processor, "do_resize", True) else None,
        crop_size=int(crop_side) if crop_side is not None else None,
        mean=mean,
        std=std,
        interpolation=interpolation,
    )


def _get(size: Any, key: str) -> Any:
    if size is None:
        return None
    if isinstance(size, Mapping):
        return size.get(key)
    return getattr(size, key, None)


def _labels(model: nn.Module) -> tuple[str, ...] | None:
    """``config.id2label`` in index order, unless it holds only the default ``LABEL_i``."""
    mapping = getattr(getattr(model, "config", None), "id2label", None)
    if not isinstance(mapping, Mapping) or not mapping:
        return None
    by_index = {int(k): str(v) for k, v in mapping.items()}
    names = [by_index[i] for i in sorted(by_index)]
    if all(_DEFAULT_LABEL.fullmatch(n) for n in names):
        return None
    return tuple(names)
