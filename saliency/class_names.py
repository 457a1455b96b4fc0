"""Class names of a model's outputs, for titles and legends.

They come, in this order, from what the caller gives (``explain(..., class_names=...)``), from
:func:`saliency.load_model` (which remembers the names of every model it returns: torchvision
weights' ``meta["categories"]``, the demo models' classes, a model source's names), from a
Hugging Face model's ``config.id2label`` (unless it holds only the placeholder names
``LABEL_0``, ``LABEL_1``, ...), or from timm's ImageNet label descriptions for a timm model with
1,000 or 21,843 outputs. Names that do not match the model's number of outputs are dropped.
"""

from __future__ import annotations

import contextlib
import re
import sys
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

from saliency.errors import InvalidOptionError

__all__ = [
    "ClassNames",
    "check_class_names",
    "class_names_of",
    "fitting_class_names",
    "remember_class_names",
]

ClassNames = tuple[str, ...]

_REMEMBERED: weakref.WeakKeyDictionary[Any, ClassNames] = weakref.WeakKeyDictionary()
_PLACEHOLDER = re.compile(r"LABEL_\d+")


def remember_class_names(model: object, names: Sequence[str] | None) -> None:
    """Record the class names of ``model`` (held weakly: the model is not kept alive)."""
    if names is None:
        return
    with contextlib.suppress(TypeError):  # not weak-referenceable: nothing to remember it by
        _REMEMBERED[model] = tuple(str(name) for name in names)


def check_class_names(names: object) -> ClassNames | None:
    """``names`` as a tuple of strings, or ``None``; raise for anything else."""
    if names is None:
        return None
    if isinstance(names, str | bytes) or not isinstance(names, Sequence):
        raise InvalidOptionError(
            f"class_names={names!r} is not accepted; accepted: None or a sequence of strings, "
            "one per model output (e.g. load_model(...).class_names)"
        )
    bad = [name for name in names if not isinstance(name, str)]
    if bad:
        raise InvalidOptionError(
            f"class_names holds {type(bad[0]).__name__} {bad[0]!r}; accepted: strings only"
        )
    return tuple(names)


def class_names_of(model: object) -> ClassNames | None:
    """What is known of ``model``'s class names (see the module docstring), else ``None``."""
    for candidate in (model, getattr(model, "_orig_mod", None)):  # torch.compile's wrapper
        if candidate is None:
            continue
        try:
            remembered = _REMEMBERED.get(candidate)
        except TypeError:
            remembered = None
        if remembered is not None:
            return remembered
        found = _hugging_face_names(candidate) or _timm_names(candidate)
        if found is not None:
            return found
    return None


def fitting_class_names(names: ClassNames | None, num_classes: int | None) -> ClassNames | None:
    """``names`` when there is one per class (or the class count is unknown), else ``None``."""
    if names is None or (num_classes is not None and len(names) != num_classes):
        return None
    return names


def _hugging_face_names(model: object) -> ClassNames | None:
    labels = getattr(getattr(model, "config", None), "id2label", None)
    if not isinstance(labels, Mapping) or not labels:
        return None
    try:
        ordered = {int(key): str(value) for key, value in labels.items()}
    except (TypeError, ValueError):
        return None
    if sorted(ordered) != list(range(len(ordered))):
        return None
    names = tuple(ordered[i] for i in range(len(ordered)))
    return None if all(_PLACEHOLDER.fullmatch(name) for name in names) else names


def _timm_names(model: object) -> ClassNames | None:
    timm = sys.modules.get("timm")  # a timm model means timm is imported: never import it here
    if timm is None or not type(model).__module__.startswith("timm."):
        return None
    try:
        from timm.data import ImageNetInfo, infer_imagenet_subset

        subset = infer_imagenet_subset(model)
        if subset is None:
            return None
        info = ImageNetInfo(subset)
        # "tench, Tinca tinca": the first synonym, as torchvision's categories name it
        count = info.num_classes()
        return tuple(info.index_to_description(i).split(",")[0] for i in range(count))
    except (ImportError, AttributeError, KeyError, OSError, ValueError):
        return None
