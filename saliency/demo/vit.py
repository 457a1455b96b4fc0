"""The token model of the demo: a small vision transformer for the 96² shapes scenes.

``saliency.load_model("demo:shapes-vit")`` gives it, trained on the same clean scenes as
``demo:shapes`` (reproduced on a 2-core CPU by ``python -m saliency.demo.training --model shapes-vit
--threads 1``) and measured by the same metrics. It is torchvision's ``VisionTransformer``, so its
token layout comes from torchvision's metadata (a class token, then a 12×12 grid of 8-pixel
patches) and its attention runs through ``nn.MultiheadAttention``: Grad-CAM picks the last
layer's first normalisation, and attention rollout and transformer attribution apply.

Its patches are embedded by a small convolutional stem (four 3×3 convolutions, three of stride
2: each token sees 31×31 pixels) instead of one 8×8 convolution, as in Xiao et al. (2021),
"Early Convolutions Help Transformers See Better", arXiv:2106.14881: with a linear patch
embedding the transformer stayed at chance for a thousand steps on these scenes, whose object
covers a few percent of the image.
"""

from __future__ import annotations

from torchvision.models import VisionTransformer
from torchvision.models.vision_transformer import ConvStemConfig

__all__ = ["ShapesViT"]


# (channels, stride) of the 3×3 conv–BatchNorm–ReLU layers of the stem (overall stride 8).
STEM = ((24, 2), (48, 2), (64, 2), (64, 1))


class ShapesViT(VisionTransformer):
    """A vision transformer: conv stem → class token + 12×12 patch tokens → 4 layers → head.

    Args:
        num_classes: Output classes.
        image_size: Input side in pixels.
        patch_size: Patch side in pixels.
        depth: Encoder layers.
        width: Token width.
        heads: Attention heads per layer.
        mlp: Hidden width of each layer's MLP.
    """

    def __init__(
        self,
        num_classes: int = 8,
        image_size: int = 96,
        patch_size: int = 8,
        depth: int = 4,
        width: int = 64,
        heads: int = 4,
        mlp: int = 128,
    ) -> None:
        super().__init__(
            image_size=image_size,
            patch_size=patch_size,
            num_layers=depth,
            num_heads=heads,
            hidden_dim=width,
            mlp_dim=mlp,
            num_classes=num_classes,
            conv_stem_configs=[ConvStemConfig(c, kernel_size=3, stride=s) for c, s in STEM],
        )
