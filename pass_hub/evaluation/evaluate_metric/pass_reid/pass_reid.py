"""`evaluate` metric for person re-identification: CMC, mAP and mINP (Market-1501 protocol) of ReID features.

Loads offline from the installed package:

    >>> import evaluate
    >>> from pass_hub.evaluation.metrics import EVALUATE_METRIC_PATH
    >>> metric = evaluate.load(str(EVALUATE_METRIC_PATH))  # doctest: +SKIP

Each example is one image: its feature vector, identity, camera and whether it is a query (else gallery).
All the work is :func:`pass_hub.metrics.evaluate_reid`; this module only adapts it to ``evaluate``'s
``add_batch`` / ``compute`` API (which stores examples in Arrow and hands them back as Python lists, so the
plain function is faster and leaner for large sets).
"""

import datasets
import evaluate
import numpy as np

from pass_hub.evaluation.metrics import evaluate_reid

_DESCRIPTION = """
Person re-identification retrieval metrics under the Market-1501 protocol: for each query, gallery images of
the same identity and camera are ignored, the other images of its identity are true matches, and queries
without a true match are skipped. Returns mAP, mINP, Rank-1/5/10 and the CMC curve.
"""

_KWARGS_DESCRIPTION = """
Args:
    features: feature vector of each image (all the same length).
    pids: integer identity of each image.
    camids: integer camera of each image.
    is_query: True for query images, False for gallery images.
    distance: "euclidean" (squared, default) or "cosine".
    normalize: L2-normalise features first (default True).
    max_rank: length of the returned CMC curve (default 50).
    rerank: apply k-reciprocal re-ranking (default False), with k1 (20), k2 (6), lambda_value (0.3).
Returns:
    mAP, mINP, rank1, rank5, rank10 (fractions), cmc (list of max_rank floats), num_valid_queries,
    num_skipped_queries.
Example:
    >>> metric = evaluate.load(str(EVALUATE_METRIC_PATH))  # doctest: +SKIP
    >>> metric.compute(features=[[1.0, 0.0], [1.0, 0.1], [0.0, 1.0]], pids=[1, 1, 2], camids=[0, 1, 1],
    ...                is_query=[True, False, False], max_rank=2)  # doctest: +SKIP
    {'mAP': 1.0, 'mINP': 1.0, 'rank1': 1.0, 'rank5': 1.0, 'rank10': 1.0, 'cmc': [1.0, 1.0], ...}
"""

_CITATION = """
@inproceedings{zheng2015scalable,
  title={Scalable Person Re-identification: A Benchmark},
  author={Zheng, Liang and Shen, Liyue and Tian, Lu and Wang, Shengjin and Wang, Jingdong and Tian, Qi},
  booktitle={ICCV},
  year={2015}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class PassReid(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "features": datasets.Sequence(datasets.Value("float32")),
                    "pids": datasets.Value("int64"),
                    "camids": datasets.Value("int64"),
                    "is_query": datasets.Value("bool"),
                }
            ),
        )

    def _compute(
        self,
        features,
        pids,
        camids,
        is_query,
        distance="euclidean",
        normalize=True,
        max_rank=50,
        rerank=False,
        k1=20,
        k2=6,
        lambda_value=0.3,
    ):
        features = np.asarray(features, dtype=np.float32)
        pids, camids, is_query = np.asarray(pids), np.asarray(camids), np.asarray(is_query, dtype=bool)
        result = evaluate_reid(
            features[is_query], features[~is_query], pids[is_query], pids[~is_query], camids[is_query],
            camids[~is_query], distance=distance, normalize=normalize, max_rank=max_rank, rerank=rerank, k1=k1,
            k2=k2, lambda_value=lambda_value,
        )  # fmt: skip
        return {**result, "cmc": result["cmc"].tolist()}
