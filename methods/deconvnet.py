"""DeconvNet."""

from __future__ import annotations

from dataclasses import dataclass

from saliency.methods.modified_gradient import ModifiedGradient


@dataclass(frozen=True)
class DeconvNet(ModifiedGradient):
    r"""The gradient with each ReLU's backward replaced by the ReLU of the incoming gradient.

    .. math:: \frac{\partial^{D}}{\partial x}\,\mathrm{ReLU}:\quad g_{in} = \max(0,\ g_{out})

    whatever the unit's forward activation (the "deconvolution" of Zeiler & Fergus); at every
    ReLU (module, functional or in-place); other layers keep their gradient. Equals captum's
    ``Deconvolution`` on models whose ReLUs are ``nn.ReLU`` modules. Zeiler & Fergus (2014),
    "Visualizing and Understanding Convolutional Networks", ECCV, arXiv:1311.2901.
    """

    rules = ("deconv_relu",)
    paper = "Zeiler & Fergus 2014, arXiv:1311.2901"
