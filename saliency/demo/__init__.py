"""The embedded demo: synthetic scenes with exact masks, the models trained on them, and the job
that measures every method on those models.

- :mod:`~saliency.demo.scenes`: seeded scenes, object and marker masks (the ground truth).
- :mod:`~saliency.demo.models`: ShapesNet, the shipped weights (``weights/``) and the ``demo:``
  model source of :func:`saliency.load_model`.
- :mod:`~saliency.demo.training`: reproducible training (``python -m saliency.demo.training``).
- :mod:`~saliency.demo.rrr`: Right for the Right Reasons, the penalty that trains a model away
  from the marker.
- :mod:`~saliency.demo.runner`: :func:`run_demo`, every method × metric on every demo model.
- :mod:`~saliency.demo.report`: the run folder it writes (overlays, metrics, gallery).

The core never imports this package; :func:`run_demo`, :class:`DemoSettings` and
:class:`DemoResult` load the runner (and with it the gallery) on first use, so that loading a
demo model stays light.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from saliency.demo.runner import DemoResult, DemoSettings, run_demo

__all__ = ["DemoResult", "DemoSettings", "run_demo"]


def __getattr__(name: str) -> object:
    if name in __all__:
        return getattr(import_module("saliency.demo.runner"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
