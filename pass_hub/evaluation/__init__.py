"""ReID evaluation: the Market-1501 protocol over a model (``protocol``: features of a split, CMC / mAP / mINP,
rank lists), the metrics on features (``metrics``, ``distances``), k-reciprocal re-ranking (``reranking``), score
calibration (``calibration``) and the ``evaluate`` metric (``evaluate_metric/pass_reid``).

Example:
    >>> from pass_hub.evaluation import evaluate_model, extract_features, pixel_transform  # the protocol's API
"""

from .protocol import (
    FeatureSet,
    evaluate_model,
    extract_features,
    pixel_transform,
    preprocessing_transform,
    save_rank_lists,
)

__all__ = ["FeatureSet", "evaluate_model", "extract_features", "pixel_transform", "preprocessing_transform",
           "save_rank_lists"]
