"""Attribution-quality metrics, batched on the model's device.

One concept per module, each returning one value per sample (``(N,)`` tensors):

- :mod:`~saliency.metrics.relevance`: raw attributions → pixel relevance; mask checks.
- :mod:`~saliency.metrics.localisation`: pointing game, relevance mass and rank accuracy.
- :mod:`~saliency.metrics.faithfulness`: deletion and insertion curves and AUC.
- :mod:`~saliency.metrics.sanity`: cascading parameter randomisation, Spearman correlation.
- :mod:`~saliency.metrics.shortcut`: marker versus object relevance mass.
- :mod:`~saliency.metrics.fragility`: explanation robustness under adversarial perturbation.
- :mod:`~saliency.metrics.controls`: model-independent control maps (centre, noise, edges).
- :mod:`~saliency.metrics.intervals`: bootstrap and Wilson intervals of metric means.
- :mod:`~saliency.metrics.complexity`: sparseness (Gini) and complexity (entropy).
- :mod:`~saliency.metrics.imputation`: noisy linear imputation (a batched sparse solve).
- :mod:`~saliency.metrics.road`: ROAD, remove-and-debias deletion (MoRF and LeRF).
- :mod:`~saliency.metrics.similarity`: SSIM and Spearman similarity of two maps.
- :mod:`~saliency.metrics.random_logit`: the random-logit test (class sensitivity).
- :mod:`~saliency.metrics.invariance`: input invariance under a compensated input shift.
- :mod:`~saliency.metrics.report`: every metric for a model × method as one table row.

A new metric module adds one import block below and its names to ``__all__``.
"""

from saliency.metrics.complexity import complexity, sparseness
from saliency.metrics.controls import (
    CONTROLS,
    Control,
    centre_gaussian,
    control_map,
    random_noise,
    sobel_edges,
)
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
from saliency.metrics.imputation import linear_imputation, noisy_linear_imputation
from saliency.metrics.intervals import Interval, bootstrap_interval, wilson_interval
from saliency.metrics.invariance import first_linear_layer, input_invariance, shift_compensation
from saliency.metrics.localisation import dilate, pointing_game, relevance_mass, relevance_rank
from saliency.metrics.random_logit import off_target_classes, random_logit
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
from saliency.metrics.road import RoadOrder, RoadScore, road, road_curve
from saliency.metrics.sanity import (
    average_ranks,
    cascade_layers,
    cascading_randomisation,
    parameter_randomisation,
    spearman_correlation,
)
from saliency.metrics.shortcut import ShortcutMass, marker_object_mass
from saliency.metrics.similarity import Similarity, map_similarity, ssim

__all__ = [
    "CONTROLS",
    "DEMO_METHOD_OPTIONS",
    "METRIC_NAMES",
    "Control",
    "Curve",
    "Interval",
    "MethodEvaluation",
    "MetricSettings",
    "Reduction",
    "RoadOrder",
    "RoadScore",
    "ShortcutMass",
    "Similarity",
    "as_masks",
    "average_ranks",
    "bootstrap_interval",
    "cascade_layers",
    "cascading_randomisation",
    "centre_gaussian",
    "complexity",
    "control_map",
    "deletion_auc",
    "dilate",
    "evaluate_method",
    "evaluate_scenes",
    "first_linear_layer",
    "fragility",
    "gaussian_blur",
    "input_invariance",
    "insertion_auc",
    "linear_imputation",
    "make_substrate",
    "map_similarity",
    "marker_object_mass",
    "noisy_linear_imputation",
    "off_target_classes",
    "parameter_randomisation",
    "perturbation_curve",
    "pointing_game",
    "random_logit",
    "random_noise",
    "relevance_map",
    "relevance_mass",
    "relevance_rank",
    "road",
    "road_curve",
    "sample_metrics",
    "shift_compensation",
    "sobel_edges",
    "sparseness",
    "spearman_correlation",
    "ssim",
    "trapezoid_auc",
    "wilson_interval",
    "write_metrics",
]
