"""HiResCAM: the element-wise product of gradients and activations, summed over channels."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from saliency.engine import Chunk
from saliency.methods.gradcam import GradCAM


@dataclass(frozen=True)
class HiResCAM(GradCAM):
    r"""Grad-CAM without the spatial average: each activation weighted by its own gradient.

    .. math:: L = \mathrm{ReLU}\Big(\sum_k \frac{\partial f_t}{\partial A^k} \odot A^k\Big)

    For a layer followed by a linear head (pooled or flattened), the map before ReLU and
    upsampling sums to the score minus the head's bias; Grad-CAM's does only when each
    channel's gradient is uniform (global average pooling), where the two maps coincide.
    Draelos & Carin (2020), "Use HiResCAM instead of Grad-CAM for faithful explanations of
    convolutional neural networks", arXiv:2011.08891.

    Options:
        layer: as for ``gradcam``.
        relu: as for ``gradcam``.
    """

    paper = "Draelos & Carin 2020, arXiv:2011.08891"

    def channel_weights(self, chunk: Chunk) -> Tensor:
        return chunk.grads
