"""LayerCAM: each activation weighted by its own positive gradient."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from saliency.engine import Chunk
from saliency.methods.gradcam import GradCAM


@dataclass(frozen=True)
class LayerCAM(GradCAM):
    r"""Activations weighted element-wise by their positive gradients, summed over channels.

    .. math:: L = \mathrm{ReLU}\Big(\sum_k \mathrm{ReLU}\Big(
              \frac{\partial f_t}{\partial A^k}\Big) \odot A^k\Big)

    Element-wise weights keep fine detail, so shallow layers give usable maps too. Jiang et
    al. (2021), "LayerCAM: Exploring Hierarchical Class Activation Maps for Localization",
    IEEE Transactions on Image Processing 30, doi:10.1109/TIP.2021.3089943.

    Options:
        layer: as for ``gradcam``.
        relu: as for ``gradcam``.
    """

    paper = "Jiang et al. 2021, doi:10.1109/TIP.2021.3089943"

    def channel_weights(self, chunk: Chunk) -> Tensor:
        return F.relu(chunk.grads)
