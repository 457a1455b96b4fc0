"""Attribution-quality metrics, batched on the model's device.

One concept per module, each returning one value per sample (``(N,)`` tensors):

- :mod:`~saliency.metrics.relevance`: raw attributions → pixel relevance; mask checks.
- :mod:`~saliency.metrics.localisation`: pointing game, relevance mass and rank accuracy.
- :mod:`~saliency.metrics.faithfulness`: deletion and insertion curves and AUC.
- :mod:`~saliency.metrics.sanity`: cascading parameter randomisation, Spearman correlation.
- :mod:`~saliency.metrics.shortcut`: marker versus object relevance mass.
- :mod:`~saliency.metrics.fragility`: explanation robustness under adversarial perturbation.
- :mod:`~saliency.metrics.report`: every metric for a model × method as one table row.

A new metric module adds one import block below and its names to ``__all__``.
"""

from saliency.metrics.faithfulness import (
    Curve,
    deletion_auc,
    gaussian_blur,
    insertion_auc,
    make_substrate,
    perturbation_curve,
    trapezoid_auc,
)
from saliency.metrics.fragility import fragility
from saliency.metrics.localisation import dilate, pointing_game, relevance_mass, relevance_rank
from saliency.metrics.relevance import Reduction, as_masks, relevance_map
from saliency.metrics.report import (
    DEMO_METHOD_OPTIONS,
    METRIC_NAMES,
    MethodEvaluation,
    MetricSettings,
    evaluate_method,
    evaluate_scenes,
    sample_metrics,
    write_metrics,
)
from saliency.metrics.sanity import (
    average_ranks,
    cascade_layers,
    cascading_randomisation,
    parameter_randomisation,
    spearman_correlation,
)
from saliency.metrics.shortcut import ShortcutMass, marker_object_mass

__all__ = [
    "DEMO_METHOD_OPTIONS",
    "METRIC_NAMES",
    "Curve",
    "MethodEvaluation",
    "MetricSettings",
    "Reduction",
    "ShortcutMass",
    "as_masks",
    "average_ranks",
    "cascade_layers",
    "cascading_randomisation",
    "deletion_auc",
    "dilate",
    "evaluate_method",
    "evaluate_scenes",
    "fragility",
    "gaussian_blur",
    "insertion_auc",
    "make_substrate",
    "marker_object_mass",
    "parameter_randomisation",
    "perturbation_curve",
    "pointing_game",
    "relevance_map",
    "relevance_mass",
    "relevance_rank",
    "sample_metrics",
    "spearman_correlation",
    "trapezoid_auc",
    "write_metrics",
]
