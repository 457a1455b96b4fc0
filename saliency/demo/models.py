"""The demo models: a compact CNN trained on :mod:`saliency.demo.scenes` scenes, shipped in the
package.

``saliency.load_model("demo:shapes")`` gives the clean model, ``"demo:shapes-shortcut"`` the
model trained with class-coded markers (it learns the marker, not the shape) and
``"demo:shapes-rrr"`` the same architecture trained on the same marker scenes with the
Right-for-the-Right-Reasons penalty on the marker (:mod:`saliency.demo.rrr`), and
``"demo:shapes-vit"`` a small vision transformer trained on the clean scenes
(:mod:`saliency.demo.vit`). All load offline
from ``saliency/demo/weights/``: the file's SHA-256 is checked against ``manifest.json`` and the
state dict is read with ``torch.load(weights_only=True)``. ``weights=None`` gives the untrained
architecture and ``weights=PATH`` a state dict of your own (e.g. from
:mod:`saliency.demo.training`). :func:`load_demo` is the ``demo:`` model source, declared in the
``saliency.model_sources`` entry-point group.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from torch import nn

from saliency.demo.scenes import (
    CLASS_NAMES,
    CLEAN,
    COUNTERFACTUAL,
    SHORTCUT,
    TEST_SEED,
    SceneConfig,
    Scenes,
    generate_scenes,
)
from saliency.errors import InvalidOptionError, ModelLoadError, accepted
from saliency.images import Preprocess
from saliency.models import LoadedModel, WeightsArg

__all__ = [
    "DEMO_MODELS",
    "PENALTY_FORMS",
    "PENALTY_SCORES",
    "WEIGHTS_DIR",
    "DemoModel",
    "PenaltyForm",
    "PenaltyScore",
    "ShapesNet",
    "default_demo_models",
    "demo_preprocess",
    "demo_scenes",
    "installed_demo_models",
    "load_demo",
    "read_manifest",
    "sha256_file",
]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
"""Where the shipped weights and their ``manifest.json`` live."""

PenaltyForm = Literal["features", "direction"]
PENALTY_FORMS: tuple[str, ...] = get_args(PenaltyForm)
PenaltyScore = Literal["all", "label"]
PENALTY_SCORES: tuple[str, ...] = get_args(PenaltyScore)
Architecture = Literal["shapesnet", "vit"]

_MEAN = (0.5, 0.5, 0.5)
_STD = (0.25, 0.25, 0.25)


class ShapesNet(nn.Module):
    """Conv stages (conv 3×3 → BatchNorm → ReLU), global average pooling, a linear head.

    The first ``pools`` stages end with 2×2 max pooling: with the default (every stage but the
    last) a 96² scene gives a 12×12 map in ``stage4``, the layer Grad-CAM picks automatically;
    ``pools=2`` keeps it at 24×24, so a class-activation map resolves holes such as the ring's.

    Args:
        num_classes: Output classes.
        widths: Channels of the stages (at least 3).
        pools: Leading stages followed by max pooling (None: all but the last).
    """

    def __init__(
        self,
        num_classes: int = len(CLASS_NAMES),
        widths: tuple[int, ...] = (16, 32, 64, 96),
        pools: int | None = None,
    ) -> None:
        super().__init__()
        if len(widths) < 3:
            raise ValueError(f"ShapesNet needs at least 3 stages, got widths={widths}")
        pooled = len(widths) - 1 if pools is None else pools
        if not 0 <= pooled <= len(widths) - 1:
            raise ValueError(f"pools must be in [0, {len(widths) - 1}], got {pools}")
        channels = (3, *widths)
        for index in range(len(widths)):
            layers: list[nn.Module] = [
                nn.Conv2d(channels[index], channels[index + 1], 3, padding=1, bias=False),
                nn.BatchNorm2d(channels[index + 1]),
                nn.ReLU(),
            ]
            if index < pooled:
                layers.append(nn.MaxPool2d(2))
            self.add_module(f"stage{index + 1}", nn.Sequential(*layers))
        self.stages = len(widths)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(widths[-1], num_classes)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        features = inputs
        for index in range(self.stages):
            features = getattr(self, f"stage{index + 1}")(features)
        return self.classifier(self.pool(features).flatten(1))


@dataclass(frozen=True)
class DemoModel:
    """A shipped demo model.

    Attributes:
        name: The name after ``demo:``.
        file: Its weights file in :data:`WEIGHTS_DIR`.
        config: The scenes it is trained and tested on.
        counterfactual: Scenes of its counterfactual split (None for none).
        widths: Channels of the ShapesNet stages.
        pools: Leading stages followed by max pooling (None: all but the last; see
            :class:`ShapesNet`).
        train_images: Distinct training scenes of the reference training run.
        epochs: Passes over them.
        penalty: λ of the Right-for-the-Right-Reasons input-gradient penalty on the marker
            patches during training (0: plain training; see :mod:`saliency.demo.rrr`).
        penalty_samples: Scenes of each batch the penalty is taken on (None: all).
        penalty_form: ``"features"`` (squared gradient per input feature, Ross et al.) or
            ``"direction"`` (squared derivative along the marker's change).
        penalty_score: The differentiated score: ``"all"`` (Σ_k log p̂_k) or ``"label"``.
        architecture: ``"shapesnet"`` (:class:`ShapesNet` with ``widths``) or ``"vit"``
            (:class:`~saliency.demo.vit.ShapesViT`).
        learning_rate: Peak learning rate of its training recipe (AdamW, one cycle).
        by_default: Measured by a ``saliency demo`` that names no model (the ViT is not: it
            doubles the run's time; ``--model all`` or ``--model shapes-vit`` adds it).
        weight_decay: AdamW weight decay of its training recipe.
    """

    name: str
    file: str
    config: SceneConfig
    counterfactual: SceneConfig | None
    widths: tuple[int, ...] = (16, 32, 64, 96)
    pools: int | None = None
    train_images: int = 16_384
    epochs: int = 4
    penalty: float = 0.0
    penalty_samples: int | None = None
    penalty_form: PenaltyForm = "direction"
    penalty_score: PenaltyScore = "label"
    architecture: Architecture = "shapesnet"
    learning_rate: float = 4e-3
    by_default: bool = True
    weight_decay: float = 5e-4

    def build(self) -> nn.Module:
        """The untrained architecture."""
        if self.architecture == "vit":
            from saliency.demo.vit import ShapesViT  # torchvision, only for this model

            return ShapesViT(len(CLASS_NAMES), image_size=self.config.size)
        return ShapesNet(len(CLASS_NAMES), self.widths, self.pools)

    def describe(self) -> str:
        """The architecture in one line (for the manifest), e.g. ``ShapesNet(widths=[...])``."""
        if self.architecture == "vit":
            return "ShapesViT(conv stem to 8-px patches, depth 4, width 64, heads 4, mlp 128)"
        pools = "" if self.pools is None else f", pools={self.pools}"
        return f"ShapesNet(widths={list(self.widths)}{pools})"


DEMO_MODELS: dict[str, DemoModel] = {
    # a 24×24 last map (one pooling fewer): Grad-CAM at 12×12 peaked in the ring's hole
    "shapes": DemoModel("shapes", "shapes.pt", CLEAN, None, pools=2, train_images=20_480, epochs=5),
    "shapes-shortcut": DemoModel(
        "shapes-shortcut",
        "shapes-shortcut.pt",
        SHORTCUT,
        COUNTERFACTUAL,
        train_images=8_192,
        epochs=3,
    ),
    "shapes-rrr": DemoModel(
        "shapes-rrr",
        "shapes-rrr.pt",
        SHORTCUT,
        COUNTERFACTUAL,
        train_images=20_480,
        epochs=5,
        penalty=10.0,
        penalty_samples=16,
    ),
    "shapes-vit": DemoModel(
        "shapes-vit",
        "shapes-vit.pt",
        CLEAN,
        None,
        train_images=20_480,
        epochs=8,
        architecture="vit",
        learning_rate=1e-3,
        weight_decay=0.05,
        by_default=False,
    ),
}
"""The demo models by name (``load_model("demo:NAME")``)."""


def demo_preprocess(size: int = 96) -> Preprocess:
    """The demo models' input pipeline: resize + centre crop to ``size``, x ↦ (x − 0.5) / 0.25.

    Scenes are already ``size``² so geometry leaves their pixels unchanged; use
    ``demo_preprocess().normalize(scenes.images)`` for generated scenes.
    """
    return Preprocess(resize_size=size, crop_size=size, mean=_MEAN, std=_STD)


def demo_scenes(
    name: str,
    count: int = 24,
    *,
    split: Literal["test", "counterfactual"] = "test",
    seed: int = TEST_SEED,
    device: str | torch.device | None = None,
) -> Scenes:
    """Scenes of a demo model's evaluation split (the first ``count`` of the manifest's split).

    Args:
        name: ``"shapes"`` or ``"shapes-shortcut"``.
        count: How many scenes.
        split: ``"test"`` (the model's own distribution) or ``"counterfactual"`` (markers of
            random classes; only models that have one).
        seed: The split's seed (default :data:`~saliency.demo.scenes.TEST_SEED`, as in the
            manifest).
        device: Where to render them.
    """
    spec = DEMO_MODELS.get(name)
    if spec is None:
        raise ModelLoadError(f"unknown demo model {name!r}; accepted: {accepted(DEMO_MODELS)}")
    config = spec.config if split == "test" else spec.counterfactual
    if config is None or split not in ("test", "counterfactual"):
        raise InvalidOptionError(f"demo:{name} has no {split!r} split")
    return generate_scenes(count, seed=seed, config=config, device=device)


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(directory: str | os.PathLike[str] = WEIGHTS_DIR) -> dict[str, Any]:
    """The weights manifest: ``{"models": {name: {file, sha256, accuracy, seed, ...}}}``."""
    path = Path(directory) / "manifest.json"
    try:
        manifest: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read the demo weights manifest {path}: {exc}") from exc
    return manifest


def _shipped_weights(spec: DemoModel) -> Path:
    """The shipped file of ``spec``, after checking its SHA-256 against the manifest."""
    entry = read_manifest().get("models", {}).get(spec.name)
    path = WEIGHTS_DIR / spec.file
    if entry is None or not path.is_file():
        raise ModelLoadError(
            f"the weights of demo:{spec.name} are not installed ({path}); train them with "
            f"`python -m saliency.demo.training --model {spec.name} --out {WEIGHTS_DIR}`"
        )
    actual = sha256_file(path)
    if actual != entry["sha256"]:
        raise ModelLoadError(
            f"{path} is corrupt or was replaced: its SHA-256 is {actual}, the manifest says "
            f"{entry['sha256']}; reinstall saliency-kit or retrain with "
            f"`python -m saliency.demo.training --model {spec.name} --out {WEIGHTS_DIR}`"
        )
    return path


def default_demo_models() -> tuple[str, ...]:
    """The installed demo models a ``saliency demo`` without ``--model`` measures."""
    return tuple(name for name in installed_demo_models() if DEMO_MODELS[name].by_default)


def installed_demo_models() -> tuple[str, ...]:
    """Names of the demo models whose weights are installed (in the manifest and on disk)."""
    try:
        entries = read_manifest().get("models", {})
    except ModelLoadError:
        return ()
    return tuple(
        name
        for name, spec in DEMO_MODELS.items()
        if name in entries and (WEIGHTS_DIR / spec.file).is_file()
    )


def load_demo(name: str, weights: WeightsArg = "DEFAULT") -> LoadedModel:
    """Loader of the ``demo:`` model source.

    Args:
        name: ``"shapes"`` or ``"shapes-shortcut"``.
        weights: ``"DEFAULT"`` (the shipped file), a path to a state-dict file, or None for an
            untrained model.

    Returns:
        The model, :func:`demo_preprocess` and :data:`~saliency.demo.scenes.CLASS_NAMES`.
    """
    spec = DEMO_MODELS.get(name)
    if spec is None:
        raise ModelLoadError(
            f"unknown demo model {name!r}; accepted: {accepted(f'demo:{n}' for n in DEMO_MODELS)}"
        )
    model = spec.build()
    if weights is not None:
        if isinstance(weights, str) and weights.upper() == "DEFAULT":
            path = _shipped_weights(spec)
        elif isinstance(weights, (str, os.PathLike)):
            path = Path(weights)
        else:
            raise ModelLoadError(
                f"weights must be 'DEFAULT', a path or None, got {type(weights).__name__}"
            )
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(state, strict=True)
        except (OSError, RuntimeError, KeyError, TypeError, ValueError) as exc:
            raise ModelLoadError(
                f"cannot load demo:{name} weights from {path}: {type(exc).__name__}: {exc}"
            ) from exc
    return LoadedModel(model.eval(), demo_preprocess(spec.config.size), CLASS_NAMES)
