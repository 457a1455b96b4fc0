"""Gradient-based saliency maps for PyTorch image models.

>>> import saliency
>>> ex = saliency.explain(model, inputs, method="integrated_gradients", steps=32)
>>> ex.attributions.shape, ex.targets

Importing the package loads the engine, the registry and the loaders only: the demo
(:mod:`saliency.demo`), the metrics, training losses, the CLI, the gallery, torchvision and
matplotlib load when they are used.
"""

from importlib.metadata import PackageNotFoundError, version

from saliency import errors, installation
from saliency.engine import Engine, EngineOptions, Precision
from saliency.explain import explain, explain_many
from saliency.explanation import Explanation
from saliency.figures import show, strip
from saliency.hvp import hvp
from saliency.images import ImageBatch, Preprocess, load_images, open_image
from saliency.methods.base import Method
from saliency.methods.registry import get_method, list_methods, register_method, unregister_method
from saliency.models import LoadedModel, load_model, register_model_source
from saliency.rendering import render
from saliency.smooth_relu import smooth_relu

installation.warn_on_clashing_distribution()

try:
    __version__ = version(installation.DISTRIBUTION)
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "Engine",
    "EngineOptions",
    "Explanation",
    "ImageBatch",
    "LoadedModel",
    "Method",
    "Precision",
    "Preprocess",
    "__version__",
    "errors",
    "explain",
    "explain_many",
    "get_method",
    "hvp",
    "list_methods",
    "load_images",
    "load_model",
    "open_image",
    "register_method",
    "register_model_source",
    "render",
    "show",
    "smooth_relu",
    "strip",
    "unregister_method",
]
