"""Layouts of layer outputs: how a token sequence or a channels-last map becomes ``(N, D, h, w)``.

Layer methods (the Grad-CAM family) work on ``(N, D, h, w)`` feature maps. Transformers give
other shapes:

- a token sequence ``(N, L, D)``: ``prefix`` leading tokens that are not image patches (class,
  distillation and register tokens), then the ``h × w`` patch tokens in row-major order;
- a channels-last map ``(N, h, w, C)`` (Swin, and the blocks of ConvNeXt).

A :class:`Layout` turns such an output into a map and back. :func:`layout_of` finds it: from the
model's own metadata where it has some (timm ``num_prefix_tokens`` and ``patch_embed``,
torchvision ``class_token`` and ``patch_size``, Hugging Face ``config.patch_size``), otherwise
from a structural probe — the model runs on the input and on three copies with one corner
pixel changed (top left, top right, bottom left); the token or position that responds most to
each gives the prefix length and the grid — and otherwise from the shape alone (the smallest
prefix that leaves a grid of the input's proportions).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

LayoutKind = Literal["channels_first", "channels_last", "tokens"]
Grid = tuple[int, int]

# The most prefix tokens considered when only the shape is known (class, distillation and a
# few register tokens; DINOv2 uses 4 registers, some models 8 or 16).
_MAX_PREFIX = 16


@dataclass(frozen=True)
class Layout:
    """How a layer output maps to an ``(N, D, h, w)`` feature map.

    Attributes:
        kind: ``"channels_first"`` (already ``(N, C, h, w)``), ``"channels_last"``
            (``(N, h, w, C)``) or ``"tokens"`` (``(N, L, D)``).
        prefix: leading tokens that are not patches (tokens only); never part of the map.
        grid: ``(h, w)`` of the patch tokens (tokens only).
        source: how it was found: ``"shape"``, ``"metadata"``, ``"probe"`` or ``"proportions"``.
    """

    kind: LayoutKind = "channels_first"
    prefix: int = 0
    grid: Grid | None = None
    source: str = "shape"

    def to_map(self, value: Tensor) -> Tensor:
        """The ``(N, D, h, w)`` map of a layer output (a view where possible)."""
        if self.kind == "channels_first":
            return value
        if self.kind == "channels_last":
            return value.permute(0, 3, 1, 2)
        h, w = self._grid()
        patches = value[:, self.prefix : self.prefix + h * w]
        return patches.transpose(1, 2).reshape(value.shape[0], value.shape[2], h, w)

    def from_map(self, feature_map: Tensor, value: Tensor) -> Tensor:
        """A new tensor shaped like the layer output ``value``, with its map part taken from
        ``feature_map`` (prefix and any trailing tokens from ``value``)."""
        if self.kind == "channels_first":
            return feature_map.clone()
        if self.kind == "channels_last":
            return feature_map.permute(0, 2, 3, 1).clone(memory_format=torch.contiguous_format)
        h, w = self._grid()
        patches = feature_map.flatten(2).transpose(1, 2)
        end = self.prefix + h * w
        return torch.cat([value[:, : self.prefix], patches.to(value.dtype), value[:, end:]], 1)

    def describe(self) -> str:
        if self.kind == "tokens":
            h, w = self._grid()
            return f"{self.prefix} prefix token(s) + a {h}×{w} grid of patch tokens"
        return "a channels-last (N, h, w, C) map" if self.kind == "channels_last" else "a map"

    def _grid(self) -> Grid:
        assert self.grid is not None, "a token layout needs a grid"
        return self.grid


@dataclass(frozen=True)
class TokenMetadata:
    """What a model says about its token sequence at one input size (each part may be unknown).

    Attributes:
        prefix: non-patch tokens before the patches.
        grid: ``(h, w)`` of the patch tokens.
        source: the library the metadata comes from.
    """

    prefix: int | None = None
    grid: Grid | None = None
    source: str = ""

    def layout(self, length: int) -> Layout | None:
        """The token layout for a sequence of ``length`` tokens, if the metadata fits it."""
        if self.grid is None:
            return None
        patches = self.grid[0] * self.grid[1]
        prefix = self.prefix if self.prefix is not None else length - patches
        if prefix < 0 or prefix + patches != length:
            return None
        if self.prefix is None and prefix > _MAX_PREFIX:
            return None
        return Layout("tokens", prefix, self.grid, "metadata")


def token_metadata(model: nn.Module, size: Grid) -> TokenMetadata:
    """The token metadata of ``model`` (or of its first submodule that has some) for an input of
    ``size = (H, W)`` pixels: timm, torchvision and Hugging Face vision transformers."""
    for module in model.modules():
        found = _own_metadata(module, size)
        if found is not None:
            return found
    return TokenMetadata()


def _own_metadata(module: nn.Module, size: Grid) -> TokenMetadata | None:
    height, width = size
    embed = getattr(module, "patch_embed", None)
    prefix = getattr(module, "num_prefix_tokens", None)
    if isinstance(embed, nn.Module) and isinstance(prefix, int):  # timm
        grid: Any = getattr(embed, "grid_size", None)
        feature_size = getattr(embed, "dynamic_feat_size", None)
        if callable(feature_size):
            grid = feature_size((height, width))
        return TokenMetadata(prefix, _as_grid(grid), "timm")
    patch = getattr(module, "patch_size", None)
    if isinstance(getattr(module, "class_token", None), nn.Parameter) and isinstance(patch, int):
        return TokenMetadata(1, (height // patch, width // patch), "torchvision")  # torchvision
    config = getattr(module, "config", None)
    patch = getattr(config, "patch_size", None)
    if config is not None and patch is not None:  # Hugging Face: the prefix is what is left
        ph, pw = (patch, patch) if isinstance(patch, int) else tuple(patch)[:2]
        return TokenMetadata(None, (height // int(ph), width // int(pw)), "transformers")
    return None


def _as_grid(value: Any) -> Grid | None:
    if isinstance(value, Sequence) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return (int(value[0]), int(value[1]))
    return None


def fits(grid: Grid, size: Grid) -> bool:
    """Whether an ``h × w`` grid can be a downsampling of an ``H × W`` input by one stride s
    (each side within one cell of ``H / s``, ``W / s``)."""
    (h, w), (height, width) = grid, size
    if not (1 <= h <= height and 1 <= w <= width):
        return False
    return (h - 1) * width <= (w + 1) * height and (w - 1) * height <= (h + 1) * width


def patch_grid(grid: Grid, size: Grid) -> bool:
    """Whether an ``h × w`` grid is the patch grid of an ``H × W`` input for one integer patch
    size s: ``(⌊H/s⌋, ⌊W/s⌋)`` or ``(⌈H/s⌉, ⌈W/s⌉)`` (padded patches)."""
    (h, w), (height, width) = grid, size
    for stride in range(1, max(height, width) + 1):
        floor = (height // stride, width // stride)
        ceil = (-(-height // stride), -(-width // stride))
        if (h, w) in (floor, ceil):
            return True
    return False


def proportional_layout(length: int, size: Grid) -> Layout | None:
    """The token layout with the smallest prefix whose other tokens form a :func:`patch_grid`
    of the input (at least 2 patches)."""
    for prefix in range(min(_MAX_PREFIX, length - 2) + 1):
        patches = length - prefix
        for h in range(1, patches + 1):
            if patches % h == 0 and patch_grid((h, patches // h), size):
                return Layout("tokens", prefix, (h, patches // h), "proportions")
    return None


Observe = Callable[[Tensor], Tensor | None]
"""Runs the model on a batch of points and returns the layer's output for it (or None)."""


PROBE_POINTS = 5
"""Points of the structural probe: the input and one copy per changed corner pixel."""


def probe_points(point: Tensor) -> Tensor:
    """The structural probe: ``point`` and four copies with one corner pixel changed (top left,
    top right, bottom left, bottom right), all channels, by a step of the input's scale."""
    step = float(point.detach().float().abs().max()) or 1.0
    batch = point.detach().expand(PROBE_POINTS, *point.shape[1:]).clone()
    for copy, (row, column) in enumerate(((0, 0), (0, -1), (-1, 0), (-1, -1)), start=1):
        batch[copy, :, row, column] += step
    return batch


def probed_layout(
    kind: LayoutKind, responses: Tensor, shape: torch.Size, size: Grid
) -> Layout | None:
    """The layout a structural probe shows, or None if the responses do not form a grid.

    The token (or map position) that changes most when one corner pixel changes is that
    corner's patch: the top-left one is the first patch token (its index is the prefix length),
    the top-right one ends the first row, the bottom-left one starts the last row, the
    bottom-right one is the last patch.

    Args:
        kind: ``"tokens"`` for an ``(N, L, D)`` output; ``"channels_first"`` or
            ``"channels_last"`` to test one reading of an ``(N, a, b, c)`` output.
        responses: the layer output for the :func:`probe_points`.
        shape: the output's shape for one point.
        size: the input's ``(H, W)``.
    """
    change = (responses[1:] - responses[:1]).abs().float()
    if kind == "tokens":
        strength = change.sum(-1)  # (4, L)
        if not bool((strength.amax(1) > 0).all()):
            return None
        top_left, top_right, bottom_left, bottom_right = (int(i) for i in strength.argmax(1))
        width = top_right - top_left + 1
        rows = bottom_left - top_left
        if width < 1 or rows < 0 or rows % width:
            return None
        grid = (rows // width + 1, width)
        end = top_left + grid[0] * grid[1]
        if end > shape[0] or bottom_right != end - 1 or not patch_grid(grid, size):
            return None
        return Layout("tokens", top_left, grid, "probe")
    spatial = change.sum(1) if kind == "channels_first" else change.sum(-1)  # (4, h, w)
    h, w = spatial.shape[1:]
    corners = [(0, 0), (0, w - 1), (h - 1, 0), (h - 1, w - 1)]
    peaks = [divmod(int(s.flatten().argmax()), w) for s in spatial]
    if peaks == corners and bool((spatial.flatten(1).amax(1) > 0).all()):
        return Layout(kind, source="probe")
    return None


def layout_of(
    shape: torch.Size,
    size: Grid,
    metadata: TokenMetadata,
    probe: Callable[[], Tensor | None],
    *,
    explicit: bool,
) -> Layout | None:
    """The layout of a layer output of ``shape`` (one point, batch dimension excluded).

    Args:
        shape: ``(L, D)`` for tokens, ``(a, b, c)`` for maps.
        size: the input's ``(H, W)``.
        metadata: the model's :func:`token_metadata` at that size.
        probe: the layer output for the :func:`probe_points` (run only when needed; None
            when the layer did not run).
        explicit: the user chose this layer: a map whose shape tells nothing is read as
            channels-first instead of being rejected.

    Returns:
        The layout, or None when the output is not a map of the input (for the automatic choice:
        not a candidate).
    """
    if len(shape) == 3:
        first = shape[1] * shape[2] > 1 and fits((shape[1], shape[2]), size)
        last = shape[0] * shape[1] > 1 and fits((shape[0], shape[1]), size)
        if first and last:
            # Both readings fit: the one closer to the input's proportions, else the probe.
            first_off = abs(shape[1] * size[1] - shape[2] * size[0])
            last_off = abs(shape[0] * size[1] - shape[1] * size[0])
            first, last = first_off <= last_off, last_off <= first_off
        if first != last:
            return Layout("channels_first" if first else "channels_last")
        if first and last:
            responses = probe()
            for kind in ("channels_first", "channels_last"):
                found = None if responses is None else probed_layout(kind, responses, shape, size)
                if found is not None:
                    return found
            return Layout("channels_first")
        return Layout("channels_first") if explicit else None
    if len(shape) == 2 and shape[0] > 1:
        known = metadata.layout(shape[0])
        if known is not None:
            return known
        responses = probe()
        found = None if responses is None else probed_layout("tokens", responses, shape, size)
        if found is not None:
            return found
        return proportional_layout(shape[0], size)
    return None
