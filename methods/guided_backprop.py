"""Guided backpropagation."""

from __future__ import annotations

from dataclasses import dataclass

from saliency.methods.modified_gradient import ModifiedGradient


@dataclass(frozen=True)
class GuidedBackprop(ModifiedGradient):
    r"""The gradient with only positive gradients passed back through active ReLUs.

    .. math:: \frac{\partial^{GB}}{\partial x}\,\mathrm{ReLU}:\quad
              g_{in} = \max\big(0,\ g_{out}\big) \cdot 1[x > 0]

    at every ReLU (module, functional or in-place); other layers keep their gradient. Equals
    captum's ``GuidedBackprop`` on models whose ReLUs are ``nn.ReLU`` modules, and covers the
    functional ReLUs that captum's module hooks miss. ReLU6 keeps its ordinary gradient, as in
    captum. Springenberg, Dosovitskiy, Brox & Riedmiller (2015), "Striving for Simplicity: The
    All Convolutional Net", ICLR workshop, arXiv:1412.6806.
    """

    rules = ("guided_relu",)
    paper = "Springenberg et al. 2015, arXiv:1412.6806"
