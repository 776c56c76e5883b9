"""Evaluate a ReID model on query / gallery splits: batched feature extraction and the Market-1501 protocol.

Works on one process or under accelerate: each process embeds its shard and ``gather_for_metrics`` brings the
features together without the padding duplicates a distributed sampler adds.

Example:
    >>> import pass_hub
    >>> from pass_hub.data import SynthPersonConfig, generate_synthperson
    >>> data = generate_synthperson(SynthPersonConfig(train_ids=2, test_ids=3, distractors=2, unlabelled=0,
    ...                                               image_size=(64, 32)), progress=False)
    >>> config = pass_hub.PassViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=1,
    ...                                 image_size=(64, 32))
    >>> results = evaluate_model(pass_hub.PassViTModel(config), data["query"], data["gallery"], progress=False)
    >>> 0 <= results["mAP"] <= 1
    True
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2
from tqdm.auto import tqdm

from ..deployment.embedder import ReIDEmbedder, load_reid_model
from ..deployment.preprocessing import Preprocessing
from ..models.backbone import l2_normalize
from .calibration import calibrate
from .metrics import evaluate_reid


def pixel_transform(
    image_size: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    interpolation: str = "bilinear",
) -> v2.Compose:
    """PIL image -> normalised (3, H, W) float tensor: resize, rescale to [0, 1], normalise. Nothing random."""
    mode = v2.InterpolationMode[interpolation.upper()]
    return v2.Compose(
        [
            v2.RGB(),
            v2.Resize(tuple(image_size), interpolation=mode),
            v2.PILToTensor(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(mean), list(std)),
        ]
    )


def preprocessing_transform(preprocessing: Preprocessing) -> v2.Compose:
    """The :func:`pixel_transform` a model's :class:`~pass_hub.inference.Preprocessing` asks for."""
    return pixel_transform(preprocessing.image_size, preprocessing.mean, preprocessing.std, preprocessing.interpolation)


@dataclass
class FeatureSet:
    """Embeddings of a split with the identities and cameras of its rows."""

    features: torch.Tensor
    pids: np.ndarray
    camids: np.ndarray


class _ReIDSplit(Dataset):
    def __init__(self, split: Any, transform: Callable) -> None:
        self.split, self.transform = split, transform

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        item = self.split[index]
        return self.transform(item["image"]), int(item["pid"]), int(item["camid"])


def extract_features(
    embedder: nn.Module,
    split: Any,
    transform: Callable,
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    flip: bool = False,
    accelerator: Any = None,
    progress: bool = True,
    description: str = "features",
) -> FeatureSet:
    """Embed every image of a ``datasets`` split (columns ``image``, ``pid``, ``camid``) in batches.

    Args:
        embedder: Pixels -> embeddings (e.g. a :class:`pass_hub.ReIDEmbedder`).
        split: The split.
        transform: PIL image -> pixel tensor.
        batch_size: Images per forward pass (per process).
        num_workers: DataLoader workers.
        flip: Average the embeddings of each image and its mirror image.
        accelerator: An ``accelerate.Accelerator`` to shard the work over processes; None for one process.
        progress: Show a progress bar (on the main process).
        description: The progress bar's label.
    """
    loader = DataLoader(_ReIDSplit(split, transform), batch_size=batch_size, num_workers=num_workers, shuffle=False)
    if accelerator is not None:
        loader = accelerator.prepare_data_loader(loader)
    device = next(embedder.parameters()).device
    main = accelerator is None or accelerator.is_local_main_process
    features, pids, camids = [], [], []
    with torch.inference_mode():
        for pixels, pid, camid in tqdm(loader, desc=description, disable=not (progress and main), leave=False):
            pixels = pixels.to(device)
            embedding = embedder(pixels)
            if flip:
                embedding = (embedding + embedder(pixels.flip(-1))) / 2
            if accelerator is not None:
                embedding, pid, camid = accelerator.gather_for_metrics((embedding, pid.to(device), camid.to(device)))
            features.append(embedding.float().cpu())
            pids.append(pid.cpu().numpy())
            camids.append(camid.cpu().numpy())
    return FeatureSet(torch.cat(features), np.concatenate(pids), np.concatenate(camids))


def evaluate_model(
    model: Any,
    query: Any,
    gallery: Any,
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    flip: bool = False,
    rerank: bool = False,
    accelerator: Any = None,
    return_per_query: bool = False,
    progress: bool = True,
    feature: str = "evaluation",
    calibration: bool | str = False,
) -> dict[str, Any]:
    """Embed ``query`` and ``gallery`` with ``model`` and score them with :func:`pass_hub.metrics.evaluate_reid`.

    Args:
        model: Anything :func:`pass_hub.load_reid_model` takes: a model object, folder, hub id, timm name or
            original checkpoint. Its own preprocessing (size, mean/std) is used.
        query: ``datasets`` split of queries; ``gallery``: of gallery images.
        batch_size / num_workers / flip / accelerator / progress: as in :func:`extract_features`.
        rerank: k-reciprocal re-ranking before ranking.
        return_per_query: Also return per-query AP and top-k lists (for rank-list pictures).
        feature: The embedding evaluated (see :class:`pass_hub.ReIDEmbedder`): the paper's test feature by
            default; ``"deployment"`` for the one searches use.
        calibration: Also measure the thresholds of cosine similarities (:func:`pass_hub.calibration.calibrate`),
            returned under ``"calibration"``: True for the deployment feature's, or the name of a feature (as
            ``feature``); both features come from one forward pass when they differ.

    Returns:
        The ``evaluate_reid`` dict plus ``num_query``, ``num_gallery``, ``feature`` and, when asked, ``calibration``.
    """
    was_training = isinstance(model, nn.Module) and model.training  # a model in training gets its mode back
    embedder = load_reid_model(model, feature=feature)
    calibrated_feature = "deployment" if calibration is True else calibration
    deployment = load_reid_model(embedder, feature=calibrated_feature) if calibration else embedder
    both = _FeaturePair(embedder, deployment) if deployment.feature != embedder.feature else None
    transform = preprocessing_transform(embedder.preprocessing)
    options = dict(batch_size=batch_size, num_workers=num_workers, flip=flip, accelerator=accelerator,
                   progress=progress)
    try:
        queries = extract_features(both or embedder, query, transform, description="query features", **options)
        gallery_set = extract_features(both or embedder, gallery, transform, description="gallery features",
                                       **options)
    finally:
        embedder.train(was_training)
    calibrated_queries, calibrated_gallery = queries, gallery_set
    if both is not None:
        queries, calibrated_queries = both.split(queries)
        gallery_set, calibrated_gallery = both.split(gallery_set)
    results = evaluate_reid(
        queries.features, gallery_set.features, queries.pids, gallery_set.pids, queries.camids, gallery_set.camids,
        rerank=rerank, return_per_query=return_per_query,
    )
    results.update(num_query=len(queries.pids), num_gallery=len(gallery_set.pids), feature=embedder.feature,
                   rerank=rerank)
    if calibration:
        results["calibration"] = calibrate(
            calibrated_queries.features, calibrated_gallery.features, queries.pids, gallery_set.pids, queries.camids,
            gallery_set.camids, feature=deployment.feature,
        )
        if return_per_query:  # the ranked pairs' scores as a search would show them (rank-list captions)
            ranked = torch.from_numpy(results["topk_indices"])
            query_side = nn.functional.normalize(calibrated_queries.features.float(), dim=1)
            gallery_side = nn.functional.normalize(calibrated_gallery.features.float(), dim=1)[ranked.clamp(min=0)]
            cosines = torch.einsum("qd,qkd->qk", query_side, gallery_side).double()
            results["topk_deployment_cosines"] = cosines.masked_fill(ranked < 0, float("nan")).numpy()
    return results


class _FeaturePair(nn.Module):
    """Two embedders of one ReID model (two of its features) in one forward pass: ``cat(first, second)``."""

    def __init__(self, first: ReIDEmbedder, second: ReIDEmbedder) -> None:
        super().__init__()
        self.first, self.second = first, second

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        embedders = (self.first, self.second)
        features = self.first.model.features_by_name(pixel_values, [e.feature for e in embedders])
        return torch.cat([l2_normalize(features[e.feature]) if e.normalize else features[e.feature]
                          for e in embedders], dim=1)

    def split(self, both: FeatureSet) -> tuple[FeatureSet, FeatureSet]:
        # Both features of one ReID model have its embedding size (the same fusion before and after the necks).
        width = self.first.embedding_size
        first, second = both.features[:, :width], both.features[:, width:]
        return FeatureSet(first, both.pids, both.camids), FeatureSet(second, both.pids, both.camids)


def save_rank_lists(
    results: dict[str, Any],
    query: Any,
    gallery: Any,
    path: str | Path,
    *,
    num_best: int = 2,
    num_worst: int = 2,
    num_random: int = 2,
    seed: int = 0,
) -> Path:
    """One PNG of rank lists (query, then its top-k gallery images; green: same identity, red: not) for the
    best, worst and some random queries by AP. ``results`` comes from :func:`evaluate_model` with
    ``return_per_query=True``; ``query`` / ``gallery`` are the splits it was computed on. Captions are the cosine
    similarities a search would show (the calibrated feature's, when ``results`` hold a calibration), else those of
    the evaluated feature, or the re-ranked distances when ``results`` were re-ranked.
    """
    from ..atomic import atomic_file
    from ..pictures.visualize import draw_rank_list, select_queries, stack_pictures

    if "per_query_ap" not in results:
        raise ValueError("rank lists need per-query results: evaluate with return_per_query=True")
    picks = select_queries(results["per_query_ap"], num_best=num_best, num_worst=num_worst, num_random=num_random,
                           seed=seed)
    if "topk_deployment_cosines" in results:
        label = f"cosine of the {results['calibration'].feature.replace('_', '-')} feature (what a search shows)"
        captions = results["topk_deployment_cosines"]
    elif results.get("rerank"):
        label, captions = "re-ranked distance", results["topk_distances"]
    else:  # squared Euclidean distances of L2-normalised features: 2 - 2 cos
        label = f"cosine of the {results.get('feature', 'evaluated').replace('_', '-')} feature"
        captions = 1 - results["topk_distances"] / 2
    strips = []
    for kind, indices in picks.items():
        for index in indices.tolist():
            ranked = [int(i) for i in results["topk_indices"][index] if i >= 0]
            strips.append(
                draw_rank_list(
                    query[index]["image"],
                    [gallery[i]["image"] for i in ranked],
                    captions[index][: len(ranked)].tolist(),
                    results["topk_matches"][index][: len(ranked)].tolist(),
                    title=f"{kind}: query {index} (pid {query[index]['pid']}), AP {results['per_query_ap'][index]:.2f}"
                    f", {label}",
                )
            )
    if not strips:
        raise ValueError("no query with a true match to draw")
    with atomic_file(path) as temporary:
        stack_pictures(strips).save(temporary, format="PNG")
    return Path(path)
