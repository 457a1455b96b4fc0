"""The result of :func:`saliency.explain`, with rendering, saving and notebook display."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import PIL.Image
import torch
from torch import Tensor

from saliency.errors import InvalidOptionError
from saliency.output_files import file_stem, write_text_atomic
from saliency.rendering import render
from saliency.run_folder import json_safe, versions, write_overlay, write_raw

_NOTEBOOK_MAX_IMAGES = 8


@dataclass
class Explanation:
    """Attributions for a batch, with what is needed to show and save them.

    Attributes:
        attributions: raw, signed maps on the inputs' device and dtype; ``(N, C, H, W)`` for
            input-space methods, ``(N, 1, H, W)`` for layer methods.
        targets: ``(N,)`` resolved class indices, or ``None`` for a callable target (its
            values at the inputs are in ``target_scores``).
        method: the registered method name.
        options: the method's option values.
        inputs: the explained inputs.
        images: what the inputs show, for overlays (see :func:`saliency.explain`).
        outputs: float32 model outputs ``(N, K)`` at the inputs (``None`` for callable targets).
        extras: per-sample diagnostics, e.g. ``completeness_error`` of integrated gradients.
        target_scores: ``(N,)`` float32 explained scores at the inputs: the output of each
            sample's target class, or the callable target's value.
        class_names: one name per model output, when known (titles and legends).
    """

    attributions: Tensor
    targets: Tensor | None
    method: str
    options: dict[str, Any]
    inputs: Tensor | None = field(default=None, repr=False)
    images: Tensor | Sequence[Tensor | PIL.Image.Image] | None = field(default=None, repr=False)
    outputs: Tensor | None = field(default=None, repr=False)
    extras: dict[str, Tensor] = field(default_factory=dict, repr=False)
    target_scores: Tensor | None = field(default=None, repr=False)
    class_names: tuple[str, ...] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.attributions)

    def __repr__(self) -> str:
        """One line: method, shape, dtype and device of the maps, and the targets."""
        shape = "×".join(str(size) for size in self.attributions.shape)
        if self.targets is None:
            targets = "callable target"
        else:
            shown = self.targets[:8].tolist()
            more = ", …" if len(self.targets) > 8 else ""
            targets = f"targets [{', '.join(map(str, shown))}{more}]"
        dtype = str(self.attributions.dtype).removeprefix("torch.")
        return (
            f"<Explanation {self.method}: {shape} {dtype} on {self.attributions.device}, "
            f"{targets}>"
        )

    def backgrounds(self) -> Tensor | Sequence[Tensor | PIL.Image.Image]:
        """The images overlays are drawn on: ``images``, else the inputs rescaled to [0, 1]."""
        if self.images is not None:
            return self.images
        if self.inputs is None:
            raise ValueError("this Explanation has neither images nor inputs to draw overlays on")
        flat = self.inputs.detach().float().flatten(1)
        low = flat.amin(1).view(-1, 1, 1, 1)
        span = (flat.amax(1).view(-1, 1, 1, 1) - low).clamp_min(1e-12)
        rescaled = (self.inputs.detach().float() - low) / span
        return (
            rescaled
            if rescaled.shape[1] == 3
            else rescaled.mean(1, keepdim=True).expand(-1, 3, -1, -1)
        )

    def render(
        self, images: Tensor | Sequence[Tensor | PIL.Image.Image] | None = None, **options: Any
    ) -> Tensor | list[Tensor] | list[PIL.Image.Image]:
        """Render the maps with :func:`saliency.render` (default: overlays on :meth:`backgrounds`).

        Returns uint8 ``(N, H, W, 3)`` tensors, a list of them for mixed sizes, or PIL images
        with ``as_pil=True``.
        """
        if images is None and options.get("style", "overlay") != "heatmap":
            images = self.backgrounds()
        return render(self.attributions.detach(), images, **options)

    def pictures(
        self, images: Tensor | Sequence[Tensor | PIL.Image.Image] | None = None, **options: Any
    ) -> list[PIL.Image.Image]:
        """:meth:`render` as a list of PIL images."""
        pictures = self.render(images, **{**options, "as_pil": True})
        assert isinstance(pictures, list)
        return [p for p in pictures if isinstance(p, PIL.Image.Image)]

    def save(self, directory: str | Path, **render_options: Any) -> list[Path]:
        """Write overlays ``NNNN_<method>.png``, raw ``<method>.npy`` and ``<method>.json``.

        Every file is written to a temporary name and renamed, so none is ever half-written.

        Returns:
            The written paths.
        """
        folder = Path(directory)
        if folder.exists() and not folder.is_dir():
            raise InvalidOptionError(
                f"save({str(directory)!r}): it exists and is not a folder; accepted: a folder "
                "path (created if missing)"
            )
        folder.mkdir(parents=True, exist_ok=True)
        stem = file_stem(self.method)
        paths = [
            write_overlay(folder / f"{i:04d}_{stem}.png", picture)
            for i, picture in enumerate(self.pictures(**render_options))
        ]
        raw = self.attributions.detach().float().cpu().numpy()
        paths.append(write_raw(folder / f"{stem}.npy", raw))
        paths.append(
            write_text_atomic(folder / f"{stem}.json", json.dumps(self.metadata(), indent=2))
        )
        return paths

    def metadata(self) -> dict[str, Any]:
        """A JSON-ready summary: method, options, targets, shape and library versions."""
        return {
            "method": self.method,
            "options": json_safe(self.options),
            "targets": None if self.targets is None else self.targets.tolist(),
            "target_names": self.target_names(),
            "target_scores": None
            if self.target_scores is None
            else self.target_scores.detach().float().cpu().tolist(),
            "shape": list(self.attributions.shape),
            "extras": {k: v.tolist() for k, v in self.extras.items()},
            "versions": versions(),
        }

    def target_names(self) -> list[str] | None:
        """The class name of each sample's target, when the targets and names are known."""
        if self.targets is None or self.class_names is None:
            return None
        names = self.class_names
        return [names[i] if 0 <= i < len(names) else str(i) for i in self.targets.tolist()]

    def head(self, count: int) -> Explanation:
        """The first ``count`` samples (views of the same tensors; the options are shared)."""

        def first(value: Tensor | None) -> Tensor | None:
            return None if value is None else value[:count]

        return Explanation(
            self.attributions[:count],
            first(self.targets),
            self.method,
            self.options,
            first(self.inputs),
            None if self.images is None else _head(self.images, count),
            first(self.outputs),
            {k: v[:count] for k, v in self.extras.items()},
            first(self.target_scores),
            self.class_names,
        )

    def show(
        self,
        images: Tensor | Sequence[Tensor | PIL.Image.Image] | None = None,
        *,
        max_samples: int = 8,
        **options: Any,
    ) -> Any:
        """A matplotlib figure: one row per sample, the image beside its overlay, titled with
        the method and the explained class (name and probability), with a colour bar in
        attribution units (:func:`saliency.figures.show`)."""
        from saliency.figures import show

        return show(self, images, max_samples=max_samples, **options)

    def _repr_png_(self) -> bytes:
        """Notebook display: the first samples' overlays side by side, each with its caption
        and colour bar (:func:`saliency.figures.strip`)."""
        from saliency.figures import strip

        buffer = io.BytesIO()
        strip(self, max_samples=_NOTEBOOK_MAX_IMAGES).save(buffer, "PNG")
        return buffer.getvalue()

    def background_pictures(
        self, images: Tensor | Sequence[Tensor | PIL.Image.Image] | None = None
    ) -> list[PIL.Image.Image]:
        """The backgrounds (``images``, else :meth:`backgrounds`) as PIL RGB images."""
        backgrounds = images if images is not None else self.backgrounds()
        return [_to_pil(b) for b in backgrounds]


def _head(images: Tensor | Sequence[Any], count: int) -> Tensor | list[Any]:
    return images[:count] if isinstance(images, Tensor) else list(images)[:count]


def _to_pil(image: Tensor | PIL.Image.Image) -> PIL.Image.Image:
    if isinstance(image, PIL.Image.Image):
        return image.convert("RGB")
    pixels = image.detach()
    if pixels.is_floating_point():
        pixels = (pixels.clamp(0, 1) * 255).round()
    return PIL.Image.fromarray(pixels.to(torch.uint8).permute(1, 2, 0).cpu().numpy())


__all__ = ["Explanation", "json_safe", "versions"]
