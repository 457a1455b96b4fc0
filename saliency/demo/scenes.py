"""Synthetic shape scenes with exact ground truth, for demo models and attribution metrics.

Each scene is an RGB image on a cluttered procedural background (colour gradient, multi-scale
value noise, stripes, soft blobs) with one target object from :data:`CLASS_NAMES` at a random
position, scale, rotation and colour, optional distractor shapes that belong to no class, and an
exact per-pixel mask of the object. The *shortcut* variant adds a small class-coded marker patch
(a black-framed square filled with the class's colour from :data:`MARKER_COLOURS`, with its own
mask) in the image corner farthest from the object; it agrees with the object's class in most
training images (``marker="agree"``), or shows a uniformly random class (``marker="random"``,
the counterfactual split).

Generation is seeded, deterministic and vectorised in torch. Scene ``i`` of a seed depends only
on ``(seed, i)``: scenes are drawn in blocks of :data:`BLOCK` from generators seeded by
:func:`block_seed`, so a small set is a prefix of a larger one, and the marker draws use their
own stream, so ``marker="agree"`` and ``marker="random"`` give the same objects and backgrounds
with different markers.

>>> scenes = generate_scenes(24, seed=1, config=SHORTCUT)
>>> scenes.images.shape, scenes.masks.shape        # (24, 3, 96, 96) uint8, (24, 96, 96) bool
>>> save_scenes(scenes, "scenes/")                 # images/, masks/, markers/, scenes.json
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from torch import Tensor

from saliency.errors import InvalidOptionError, accepted
from saliency.validation import require_int

__all__ = [
    "BLOCK",
    "CLASS_NAMES",
    "CLEAN",
    "COUNTERFACTUAL",
    "DISTRACTOR_NAMES",
    "GENERATOR_VERSION",
    "MARKER_COLOURS",
    "SHORTCUT",
    "TEST_SEED",
    "MarkerMode",
    "SceneConfig",
    "Scenes",
    "block_seed",
    "generate_scenes",
    "load_scenes",
    "save_scenes",
    "shape_masks",
]

GENERATOR_VERSION = 1
"""Bumped whenever the same seed would give different scenes."""

CLASS_NAMES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "star",
    "cross",
    "ring",
    "crescent",
    "heart",
)
"""The object classes, in label order."""

DISTRACTOR_NAMES: tuple[str, ...] = ("ellipse", "bar")
"""Distractor shapes: elongated, so that they look like no class."""

MARKER_COLOURS: tuple[tuple[float, float, float], ...] = (
    (1.0, 0.0, 0.0),
    (0.0, 1.0, 0.0),
    (0.0, 0.2, 1.0),
    (1.0, 1.0, 0.0),
    (1.0, 0.0, 1.0),
    (0.0, 1.0, 1.0),
    (1.0, 0.5, 0.0),
    (1.0, 1.0, 1.0),
)
"""Fill colour of the marker patch for each class (RGB in [0, 1])."""

BLOCK = 64
"""Scenes per seeded block: scene ``i`` comes from block ``i // BLOCK``."""

TEST_SEED = 1_000_000
"""Seed of the standard test (and counterfactual) split; training seeds stay below it."""

MarkerMode = Literal["none", "agree", "random"]
_MARKER_MODES: tuple[str, ...] = ("none", "agree", "random")
_SCENE_STREAM, _MARKER_STREAM = 0, 1
_MASK64 = (1 << 64) - 1


@dataclass(frozen=True)
class SceneConfig:
    """How scenes are drawn.

    Attributes:
        size: Height and width in pixels.
        object_scale: Range of the object's radius as a fraction of ``size`` (every shape fits
            in the disk of that radius).
        distractors: Inclusive range of the number of distractor shapes.
        distractor_scale: Range of a distractor's radius as a fraction of ``size``.
        contrast: Minimum Euclidean RGB distance (values in [0, 1]) between the object's colour
            and the mean background colour under the object's disk.
        marker: ``"none"``, ``"agree"`` (the marker shows the object's class with probability
            ``marker_agreement``, another class otherwise) or ``"random"`` (uniform class).
        marker_agreement: See ``marker``.
        marker_size: Side of the marker patch as a fraction of ``size``.
    """

    size: int = 96
    object_scale: tuple[float, float] = (0.14, 0.24)
    distractors: tuple[int, int] = (0, 3)
    distractor_scale: tuple[float, float] = (0.07, 0.13)
    contrast: float = 0.45
    marker: MarkerMode = "none"
    marker_agreement: float = 0.95
    marker_size: float = 0.13

    def __post_init__(self) -> None:
        require_int("size", self.size, 32)
        for name in ("object_scale", "distractor_scale"):
            low, high = getattr(self, name)
            if not 0.0 < low <= high < 0.5:
                raise InvalidOptionError(f"{name} must satisfy 0 < low <= high < 0.5, got {name}")
        low_count, high_count = self.distractors
        if not 0 <= low_count <= high_count:
            raise InvalidOptionError(
                f"distractors must be 0 <= low <= high, got {self.distractors}"
            )
        if not 0.0 <= self.contrast <= 0.85:
            raise InvalidOptionError(f"contrast must be in [0, 0.85], got {self.contrast!r}")
        if self.marker not in _MARKER_MODES:
            raise InvalidOptionError(f"marker={self.marker!r}; accepted: {accepted(_MARKER_MODES)}")
        if not 0.0 <= self.marker_agreement <= 1.0:
            raise InvalidOptionError(
                f"marker_agreement must be in [0, 1], got {self.marker_agreement!r}"
            )
        if not 0.05 <= self.marker_size <= 0.25:
            raise InvalidOptionError(f"marker_size must be in [0.05, 0.25], got {self.marker_size}")


CLEAN = SceneConfig()
"""Scenes of the clean demo model: object and distractors, no marker."""
SHORTCUT = SceneConfig(marker="agree")
"""Scenes of the shortcut demo model: the marker agrees with the class 95% of the time."""
COUNTERFACTUAL = SceneConfig(marker="random")
"""The shortcut model's counterfactual split: markers of uniformly random classes."""


@dataclass(frozen=True)
class Scenes:
    """A batch of scenes with their ground truth.

    Attributes:
        images: ``(N, 3, H, W)`` uint8 RGB pixels.
        labels: ``(N,)`` int64 object classes (indices into :data:`CLASS_NAMES`).
        masks: ``(N, H, W)`` bool: exactly the pixels drawn in the object's colour.
        marker_masks: ``(N, H, W)`` bool: the marker patch (all False without markers).
        marker_labels: ``(N,)`` int64 class shown by the marker, ``-1`` without a marker.
        seed: The seed the scenes were drawn from.
        start: Index of the first scene within that seed's sequence.
        config: How the scenes were drawn.
    """

    images: Tensor
    labels: Tensor
    masks: Tensor
    marker_masks: Tensor
    marker_labels: Tensor
    seed: int
    start: int
    config: SceneConfig

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def class_names(self) -> tuple[str, ...]:
        return CLASS_NAMES

    def to(self, device: str | torch.device) -> Scenes:
        """The same scenes with every tensor on ``device``."""
        return replace(
            self,
            images=self.images.to(device),
            labels=self.labels.to(device),
            masks=self.masks.to(device),
            marker_masks=self.marker_masks.to(device),
            marker_labels=self.marker_labels.to(device),
        )

    def floats(self) -> Tensor:
        """The images as float32 in [0, 1]."""
        return self.images.float().div(255.0)


# ---- seeding ---------------------------------------------------------------------------------


def _splitmix64(value: int) -> int:
    """One SplitMix64 step (Steele et al. 2014): a well-mixed 64-bit hash of ``value``."""
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


def block_seed(seed: int, block: int, stream: int = _SCENE_STREAM) -> int:
    """Seed of block ``block`` of ``seed`` for one random stream (a non-negative 63-bit int)."""
    mixed = _splitmix64(_splitmix64(_splitmix64(seed & _MASK64) ^ block) ^ stream)
    return mixed >> 1


# ---- shapes ----------------------------------------------------------------------------------


def _polar_star(u: Tensor, v: Tensor, points: int, inner: float) -> Tensor:
    """Inside a star polygon with ``points`` tips at radius 1 and notches at radius ``inner``.

    Between two consecutive vertices (angles Δ = π/points apart, radii a and b) the boundary at
    angle α from the first is ``r(α) = a b sin Δ / (a sin α + b sin(Δ − α))``. With
    ``inner = cos(π/points)`` this is the regular polygon with ``points`` corners.
    """
    rho = torch.hypot(u, v)
    angle = torch.remainder(torch.atan2(v, u) - math.pi / 2, 2 * math.pi)
    delta = math.pi / points
    sector = torch.floor(angle / delta)
    alpha = angle - sector * delta
    even = torch.remainder(sector, 2) == 0
    first = torch.where(even, 1.0, inner)
    second = torch.where(even, inner, 1.0)
    boundary = first * second * math.sin(delta)
    boundary = boundary / (first * torch.sin(alpha) + second * torch.sin(delta - alpha))
    return rho <= boundary


def _heart(u: Tensor, v: Tensor) -> Tensor:
    """Inside the heart curve (x² + y² − 1)³ − x² y³ ≤ 0, scaled into the unit disk."""
    x = u * 1.3
    y = v * 1.3 + 0.2
    return (x * x + y * y - 1) ** 3 - x * x * y**3 <= 0


_SHAPES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "circle": lambda u, v: u * u + v * v <= 1.0,
    "square": lambda u, v: _polar_star(u, v, 4, math.cos(math.pi / 4)),
    "triangle": lambda u, v: _polar_star(u, v, 3, 0.5),
    "star": lambda u, v: _polar_star(u, v, 5, 0.42),
    "cross": lambda u, v: (
        ((u.abs() <= 0.3) & (v.abs() <= 0.95)) | ((v.abs() <= 0.3) & (u.abs() <= 0.95))
    ),
    "ring": lambda u, v: (u * u + v * v <= 1.0) & (u * u + v * v >= 0.55**2),
    "crescent": lambda u, v: (u * u + v * v <= 1.0) & ((u - 0.5) ** 2 + v * v > 0.8**2),
    "heart": _heart,
    "ellipse": lambda u, v: u * u + (v / 0.3) ** 2 <= 1.0,
    "bar": lambda u, v: (u.abs() <= 1.0) & (v.abs() <= 0.12),
}


def shape_masks(
    kinds: Tensor,
    centres: Tensor,
    radii: Tensor,
    angles: Tensor,
    size: int,
    names: tuple[str, ...] = CLASS_NAMES,
) -> Tensor:
    """Rasterise one shape per image: pixel centres inside the rotated, scaled shape.

    A pixel with centre ``p`` is inside when ``u = R(−θ)(p − c) / r`` lies in the unit shape.

    Args:
        kinds: ``(N,)`` indices into ``names``.
        centres: ``(N, 2)`` centres ``(x, y)`` in pixels.
        radii: ``(N,)`` radii in pixels (every shape fits in its disk).
        angles: ``(N,)`` rotations in radians.
        size: Image height and width.
        names: Shape names (keys of the shape table), in index order.

    Returns:
        ``(N, size, size)`` bool masks on ``centres``' device.
    """
    device = centres.device
    coords = torch.arange(size, device=device, dtype=torch.float32) + 0.5
    dx = coords.view(1, 1, size) - centres[:, 0].view(-1, 1, 1)
    dy = coords.view(1, size, 1) - centres[:, 1].view(-1, 1, 1)
    cos, sin = torch.cos(angles).view(-1, 1, 1), torch.sin(angles).view(-1, 1, 1)
    scale = radii.view(-1, 1, 1)
    u = (cos * dx + sin * dy) / scale
    v = (-sin * dx + cos * dy) / scale
    masks = torch.zeros(len(kinds), size, size, dtype=torch.bool, device=device)
    for index, name in enumerate(names):
        chosen = (kinds == index).nonzero().flatten()
        if len(chosen):
            masks[chosen] = _SHAPES[name](u[chosen], v[chosen])
    return masks


# ---- backgrounds -----------------------------------------------------------------------------


def _uniform(generator: torch.Generator, shape: tuple[int, ...], low: float, high: float) -> Tensor:
    return torch.rand(shape, generator=generator) * (high - low) + low


def _background(generator: torch.Generator, count: int, size: int, device: torch.device) -> Tensor:
    """Cluttered backgrounds ``(N, 3, S, S)`` in [0, 1]: gradient + noise + stripes + blobs."""
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    grid_y, grid_x = torch.meshgrid(coords, coords, indexing="ij")
    grid_x, grid_y = grid_x.to(device), grid_y.to(device)

    first = _uniform(generator, (count, 3), 0.15, 0.85).to(device)
    second = _uniform(generator, (count, 3), 0.15, 0.85).to(device)
    direction = _uniform(generator, (count,), 0.0, 2 * math.pi).to(device)
    along = torch.cos(direction).view(-1, 1, 1) * (grid_x - 0.5)
    along = along + torch.sin(direction).view(-1, 1, 1) * (grid_y - 0.5)
    along = (along / math.sqrt(0.5) + 0.5).clamp(0, 1).unsqueeze(1)
    image = first.view(-1, 3, 1, 1) + (second - first).view(-1, 3, 1, 1) * along

    for cells, amplitude in ((4, 0.10), (8, 0.07), (16, 0.05), (32, 0.03)):
        noise = torch.randn((count, 3, cells, cells), generator=generator).to(device)
        image = image + amplitude * F.interpolate(
            noise, size=(size, size), mode="bilinear", align_corners=False
        )

    periods = _uniform(generator, (count,), 3.0, 10.0).to(device)
    stripe_angle = _uniform(generator, (count,), 0.0, math.pi).to(device)
    phase = _uniform(generator, (count,), 0.0, 2 * math.pi).to(device)
    stripe_colour = _uniform(generator, (count, 3), -0.15, 0.15).to(device)
    stripe_on = (torch.rand((count,), generator=generator) < 0.6).float().to(device)
    wave = torch.cos(stripe_angle).view(-1, 1, 1) * grid_x
    wave = wave + torch.sin(stripe_angle).view(-1, 1, 1) * grid_y
    wave = torch.sin(2 * math.pi * periods.view(-1, 1, 1) * wave + phase.view(-1, 1, 1))
    image = image + (stripe_on.view(-1, 1) * stripe_colour).view(-1, 3, 1, 1) * wave.unsqueeze(1)

    blobs = 4
    blob_centre = torch.rand((count, blobs, 2), generator=generator).to(device)
    blob_sigma = _uniform(generator, (count, blobs), 0.05, 0.18).to(device)
    blob_colour = _uniform(generator, (count, blobs, 3), -0.25, 0.25).to(device)
    distance = (grid_x.view(1, 1, size, size) - blob_centre[..., 0, None, None]) ** 2
    distance = distance + (grid_y.view(1, 1, size, size) - blob_centre[..., 1, None, None]) ** 2
    weight = torch.exp(-distance / (2 * blob_sigma[..., None, None] ** 2))
    image = image + torch.einsum("nbhw,nbc->nchw", weight, blob_colour)
    return image.clamp(0.0, 1.0)


def _contrasting_colours(
    generator: torch.Generator, local_mean: Tensor, contrast: float, candidates: int = 8
) -> Tensor:
    """Per image, the first random colour at RGB distance ≥ ``contrast`` from ``local_mean``.

    When no candidate is far enough, the RGB cube corner farthest from ``local_mean`` is used: it
    is at distance ≥ √3/2 ≈ 0.866 from any colour, so the contrast is guaranteed.
    """
    device = local_mean.device
    colours = torch.rand((len(local_mean), candidates, 3), generator=generator).to(device)
    far_enough = (colours - local_mean[:, None]).norm(dim=-1) >= contrast
    first = far_enough.float().argmax(dim=1)
    chosen = colours[torch.arange(len(local_mean), device=device), first]
    corner = (local_mean < 0.5).float()
    return torch.where(far_enough.any(dim=1, keepdim=True), chosen, corner)


# ---- scenes ----------------------------------------------------------------------------------


def _placements(
    generator: torch.Generator, count: int, size: int, scale: tuple[float, float]
) -> tuple[Tensor, Tensor, Tensor]:
    """Random radii, centres (fully inside the image, 2 px margin) and rotations."""
    radii = _uniform(generator, (count,), scale[0] * size, scale[1] * size)
    room = size - 2 * (radii + 2.0)
    centres = torch.rand((count, 2), generator=generator) * room[:, None] + (radii + 2.0)[:, None]
    angles = _uniform(generator, (count,), 0.0, 2 * math.pi)
    return centres, radii, angles


def _paint(image: Tensor, mask: Tensor, colour: Tensor) -> Tensor:
    """``image`` with ``mask``ed pixels set to the per-image ``colour``."""
    return torch.where(mask.unsqueeze(1), colour.view(-1, 3, 1, 1), image)


def _marker(
    marker_generator: torch.Generator,
    labels: Tensor,
    centres: Tensor,
    config: SceneConfig,
) -> tuple[Tensor, Tensor, Tensor]:
    """Marker classes, masks ``(N, S, S)`` and fill masks for the corner farthest from the object.

    Returns:
        ``(marker_labels, patch_masks, fill_masks)``; the patch is a black frame around the fill.
    """
    count, size, device = len(labels), config.size, centres.device
    classes = len(CLASS_NAMES)
    agree = torch.rand((count,), generator=marker_generator) < config.marker_agreement
    other = torch.randint(1, classes, (count,), generator=marker_generator)
    uniform = torch.randint(0, classes, (count,), generator=marker_generator)
    if config.marker == "agree":
        marker_labels = torch.where(agree.to(device), labels, (labels + other.to(device)) % classes)
    else:
        marker_labels = uniform.to(device)

    side = max(6, round(config.marker_size * size))
    margin = 2
    low, high = margin, size - margin - side
    corners = torch.tensor(
        [[low, low], [high, low], [low, high], [high, high]], dtype=torch.float32, device=device
    )
    distance = (corners[None] + side / 2 - centres[:, None]).norm(dim=-1)
    origin = corners[distance.argmax(dim=1)]
    pixels = torch.arange(size, device=device, dtype=torch.float32)
    offset_x = pixels.view(1, 1, size) - origin[:, 0].view(-1, 1, 1)
    offset_y = pixels.view(1, size, 1) - origin[:, 1].view(-1, 1, 1)

    def square(inset: int) -> Tensor:
        inside_x = (offset_x >= inset) & (offset_x < side - inset)
        inside_y = (offset_y >= inset) & (offset_y < side - inset)
        return inside_x & inside_y

    frame = max(1, side // 6)
    return marker_labels, square(0), square(frame)


def _block(seed: int, block: int, config: SceneConfig, device: torch.device) -> Scenes:
    """The ``BLOCK`` scenes of block ``block``."""
    generator = torch.Generator().manual_seed(block_seed(seed, block, _SCENE_STREAM))
    size, count = config.size, BLOCK
    image = _background(generator, count, size, device)

    slots = config.distractors[1]
    numbers = torch.randint(config.distractors[0], slots + 1, (count,), generator=generator)
    for slot in range(slots):
        kinds = torch.randint(0, len(DISTRACTOR_NAMES), (count,), generator=generator)
        centres, radii, angles = _placements(generator, count, size, config.distractor_scale)
        colours = torch.rand((count, 3), generator=generator).to(device)
        mask = shape_masks(
            kinds.to(device),
            centres.to(device),
            radii.to(device),
            angles.to(device),
            size,
            DISTRACTOR_NAMES,
        )
        mask &= (numbers > slot).to(device).view(-1, 1, 1)
        image = _paint(image, mask, colours)

    labels = torch.randint(0, len(CLASS_NAMES), (count,), generator=generator).to(device)
    centres, radii, angles = (
        t.to(device) for t in _placements(generator, count, size, config.object_scale)
    )
    masks = shape_masks(labels, centres, radii, angles, size)
    disk = shape_masks(torch.zeros_like(labels), centres, radii * 1.15, angles, size)
    local_mean = (image * disk.unsqueeze(1)).sum(dim=(2, 3)) / disk.sum(dim=(1, 2)).clamp_min(1)[
        :, None
    ]
    colours = _contrasting_colours(generator, local_mean, config.contrast)
    image = _paint(image, masks, colours)

    if config.marker == "none":
        marker_labels = torch.full((count,), -1, dtype=torch.int64, device=device)
        marker_masks = torch.zeros_like(masks)
    else:
        marker_generator = torch.Generator().manual_seed(block_seed(seed, block, _MARKER_STREAM))
        marker_labels, marker_masks, fill = _marker(marker_generator, labels, centres, config)
        palette = torch.tensor(MARKER_COLOURS, device=device)
        image = _paint(image, marker_masks, torch.zeros(count, 3, device=device))
        image = _paint(image, fill, palette[marker_labels])
        masks &= ~marker_masks

    return Scenes(
        images=image.mul(255).round().to(torch.uint8),
        labels=labels,
        masks=masks,
        marker_masks=marker_masks,
        marker_labels=marker_labels,
        seed=seed,
        start=block * BLOCK,
        config=config,
    )


def generate_scenes(
    count: int,
    *,
    seed: int = 0,
    config: SceneConfig = CLEAN,
    start: int = 0,
    device: str | torch.device | None = None,
) -> Scenes:
    """Draw scenes ``start .. start + count − 1`` of ``seed``'s sequence.

    Args:
        count: How many scenes (≥ 1).
        seed: Any non-negative int; use seeds below :data:`TEST_SEED` for training.
        config: How to draw them (:data:`CLEAN`, :data:`SHORTCUT`, :data:`COUNTERFACTUAL`, or
            your own :class:`SceneConfig`).
        start: Index of the first scene in the sequence.
        device: Where to render (default CPU). Random numbers are always drawn on the CPU, so
            a seed gives the same scenes on every device up to float rounding.

    Returns:
        The scenes with their labels and masks, on ``device``.
    """
    require_int("count", count, 1)
    require_int("seed", seed, 0)
    require_int("start", start, 0)
    target = torch.device(device) if device is not None else torch.device("cpu")
    first, last = start // BLOCK, (start + count - 1) // BLOCK
    blocks = [_block(seed, b, config, target) for b in range(first, last + 1)]
    begin = start - first * BLOCK
    window = slice(begin, begin + count)
    return Scenes(
        images=torch.cat([b.images for b in blocks])[window],
        labels=torch.cat([b.labels for b in blocks])[window],
        masks=torch.cat([b.masks for b in blocks])[window],
        marker_masks=torch.cat([b.marker_masks for b in blocks])[window],
        marker_labels=torch.cat([b.marker_labels for b in blocks])[window],
        seed=seed,
        start=start,
        config=config,
    )


# ---- files -----------------------------------------------------------------------------------


def _config_json(config: SceneConfig) -> dict[str, object]:
    return {
        "size": config.size,
        "object_scale": list(config.object_scale),
        "distractors": list(config.distractors),
        "distractor_scale": list(config.distractor_scale),
        "contrast": config.contrast,
        "marker": config.marker,
        "marker_agreement": config.marker_agreement,
        "marker_size": config.marker_size,
    }


def save_scenes(
    scenes: Scenes, directory: str | os.PathLike[str], *, prefix: str = "scene"
) -> list[Path]:
    """Write scenes as PNG files, with masks and a JSON index.

    Layout (``NNNN`` = index in the sequence): ``images/<prefix>_NNNN.png`` (RGB),
    ``masks/<prefix>_NNNN.png`` (object mask, L mode, 0 or 255), ``markers/<prefix>_NNNN.png``
    (marker mask, only when the scenes have markers), and ``scenes.json`` with the class names,
    per-scene labels, marker labels and file names, the seed, the configuration and
    :data:`GENERATOR_VERSION`. Keeping masks out of ``images/`` lets ``saliency explain
    DIR/images`` see only the scenes.

    Returns:
        The image files, in order.
    """
    root = Path(directory)
    has_markers = scenes.config.marker != "none"
    folders = ["images", "masks"] + (["markers"] if has_markers else [])
    for folder in folders:
        (root / folder).mkdir(parents=True, exist_ok=True)
    pixels = scenes.images.permute(0, 2, 3, 1).cpu().numpy()
    masks = scenes.masks.cpu().numpy().astype(np.uint8) * 255
    markers = scenes.marker_masks.cpu().numpy().astype(np.uint8) * 255
    entries, written = [], []
    for i in range(len(scenes)):
        name = f"{prefix}_{scenes.start + i:04d}.png"
        PIL.Image.fromarray(pixels[i], mode="RGB").save(root / "images" / name)
        PIL.Image.fromarray(masks[i], mode="L").save(root / "masks" / name)
        if has_markers:
            PIL.Image.fromarray(markers[i], mode="L").save(root / "markers" / name)
        written.append(root / "images" / name)
        entries.append(
            {
                "file": name,
                "label": int(scenes.labels[i]),
                "class": CLASS_NAMES[int(scenes.labels[i])],
                "marker_label": int(scenes.marker_labels[i]),
            }
        )
    index = {
        "generator_version": GENERATOR_VERSION,
        "seed": scenes.seed,
        "start": scenes.start,
        "class_names": list(CLASS_NAMES),
        "config": _config_json(scenes.config),
        "scenes": entries,
    }
    (root / "scenes.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return written


def load_scenes(directory: str | os.PathLike[str]) -> Scenes:
    """Read scenes written by :func:`save_scenes` back (pixels and masks exactly)."""
    root = Path(directory)
    index = json.loads((root / "scenes.json").read_text(encoding="utf-8"))
    if index.get("generator_version") != GENERATOR_VERSION:
        raise InvalidOptionError(
            f"{root} was written by generator version {index.get('generator_version')}, this is "
            f"version {GENERATOR_VERSION}"
        )
    raw = index["config"]
    config = SceneConfig(
        size=raw["size"],
        object_scale=tuple(raw["object_scale"]),
        distractors=tuple(raw["distractors"]),
        distractor_scale=tuple(raw["distractor_scale"]),
        contrast=raw["contrast"],
        marker=raw["marker"],
        marker_agreement=raw["marker_agreement"],
        marker_size=raw["marker_size"],
    )
    entries = index["scenes"]

    def read(folder: str, name: str) -> np.ndarray:
        with PIL.Image.open(root / folder / name) as image:
            return np.asarray(image)

    images = torch.from_numpy(np.stack([read("images", e["file"]) for e in entries]))
    masks = torch.from_numpy(np.stack([read("masks", e["file"]) for e in entries]) > 0)
    if config.marker != "none":
        markers = torch.from_numpy(np.stack([read("markers", e["file"]) for e in entries]) > 0)
    else:
        markers = torch.zeros_like(masks)
    return Scenes(
        images=images.permute(0, 3, 1, 2).contiguous(),
        labels=torch.tensor([e["label"] for e in entries], dtype=torch.int64),
        masks=masks,
        marker_masks=markers,
        marker_labels=torch.tensor([e["marker_label"] for e in entries], dtype=torch.int64),
        seed=index["seed"],
        start=index["start"],
        config=config,
    )
