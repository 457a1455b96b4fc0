"""How an image file's pixels become the model's input.

Overlays cover the whole image at its own resolution, so the model must see the whole image:
it is resized (antialiased) to the model's square input size, ignoring its aspect ratio, rather
than centre-cropped as for classification. The map is then stretched back over the original
image by bilinear upsampling, so every output pixel has attributions from the same place. The
size is the model's ``Preprocess.crop_size`` (else its resize size, else 224), or
``--input-size``; the normalisation is the model's (ImageNet statistics when unknown, e.g. for
TorchScript files). A model whose own transform is a custom callable gets the whole image
through that callable, which must keep all of it in view.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import PIL.Image
import torch
from torch import Tensor
from torchvision.transforms import InterpolationMode, v2

from saliency.images import ImageTransform, Preprocess

DEFAULT_SIZE = 224


@dataclass(frozen=True)
class ModelInput:
    """Turns decoded RGB images into a batch for the model.

    Attributes:
        preprocess: Normalisation (and interpolation) of a :class:`Preprocess` pipeline.
        size: The square side the whole image is resized to.
        custom: The model's own transform when it is not a Preprocess (then used as is).
    """

    preprocess: Preprocess
    size: int
    custom: ImageTransform | None = None

    @classmethod
    def for_model(
        cls, transform: Preprocess | ImageTransform | None, size: int | None
    ) -> ModelInput:
        """The input pipeline of a loaded model, optionally at another square ``size``."""
        if isinstance(transform, Preprocess):
            side = size or transform.crop_size or transform.resize_size or DEFAULT_SIZE
            return cls(transform, side)
        if transform is not None and size is None:
            return cls(Preprocess(), DEFAULT_SIZE, custom=transform)
        return cls(Preprocess(), size or DEFAULT_SIZE)

    def describe(self) -> str:
        """One line for the user: what the model sees."""
        if self.custom is not None:
            return "the whole image through the model's own transform"
        return f"the whole image resized to {self.size}x{self.size}"

    def pixels(self, image: PIL.Image.Image) -> Tensor:
        """One image's model-ready pixels: ``(3, size, size)`` uint8, or the custom output.

        Runs in decoding workers (Pillow releases the GIL while resizing).
        """
        if self.custom is not None:
            return self.custom(image)
        resized = v2.functional.resize(
            image,
            [self.size, self.size],
            interpolation=InterpolationMode(self.preprocess.interpolation),
            antialias=True,
        )
        return v2.functional.pil_to_tensor(resized)

    def batch(self, pixels: Sequence[Tensor], device: torch.device) -> Tensor:
        """Stack :meth:`pixels` results on ``device`` (uint8 travels, then normalised there)."""
        stacked = torch.stack(list(pixels)).to(device, non_blocking=True)
        if self.custom is not None:
            return stacked.float()
        return self.preprocess.normalize(stacked)
