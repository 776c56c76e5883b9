"""Model cards for pass-hub folders, rendered from the templates in ``model_cards/`` with huggingface_hub.

Example:
    >>> import pass_hub
    >>> card = render_model_card(pass_hub.PassViTConfig.from_preset("tiny"), kind="backbone", summary="A test.")
    >>> card.data.pipeline_tag
    'image-feature-extraction'
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..evaluation.calibration import Calibration
from .configuration_pass_vit import PassViTConfig

KIND_DESCRIPTIONS = {
    "backbone": "pre-trained backbone (PassViTModel); fine-tune it for ReID",
    "reid": "ReID model (PassViTForReID): backbone, BatchNorm necks and identity classifier",
}
CARD_TAGS = ["pass-hub", "timm", "person-reid", "re-identification", "vision-transformer", "pass"]
# evaluate_reid key -> name in the card (values are fractions there, percentages here).
REID_METRICS = {"mAP": "mAP", "rank1": "Rank-1", "rank5": "Rank-5", "mINP": "mINP"}


def template_path(name: str = "pass_vit.md") -> Path:
    """A card template: shipped inside the package when installed, at the repository top in a checkout."""
    package = Path(__file__).resolve().parent.parent  # pass_hub/
    for folder in (package / "model_cards", package.parent / "model_cards"):
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"model card template {name!r} not found in {package} or beside it")


def count_parameters(config: PassViTConfig) -> str:
    import torch

    from .backbone import PassVisionTransformer

    with torch.device("meta"):
        backbone = PassVisionTransformer(**config.backbone_kwargs(), num_classes=0)
    return f"{sum(p.numel() for p in backbone.parameters()):,} (backbone)"


def render_model_card(
    config: PassViTConfig,
    *,
    kind: str,
    summary: str,
    repo_id: str = "path/to/this/folder",
    title: str | None = None,
    card_data: ModelCardData | None = None,
    **sections: Any,
) -> ModelCard:
    """Render the card of a pass-hub folder.

    Args:
        config: The model's config (architecture facts in the card come from it).
        kind: ``"backbone"`` or ``"reid"``.
        summary: First paragraph: what this checkpoint is and where it came from.
        repo_id: Hub id used in the usage snippets.
        title: Heading; derived from the config when None.
        card_data: YAML front matter; a default with library, license, tags and pipeline tag when None.
        **sections: Optional template sections (``training``, ``results_table``, ``pictures``, ``deployment``).
    """
    if kind not in KIND_DESCRIPTIONS:
        raise ValueError(f"kind={kind!r}; expected one of {sorted(KIND_DESCRIPTIONS)}")
    card_data = card_data or ModelCardData(
        library_name="transformers", license="apache-2.0", pipeline_tag="image-feature-extraction", tags=CARD_TAGS
    )
    height, width = config.image_size
    return ModelCard.from_template(
        card_data,
        template_path=str(template_path()),
        title=title or f"PASS ViT ({config.hidden_size}-wide, {height}x{width}) {kind}",
        summary=summary,
        repo_id=repo_id,
        kind=kind,
        kind_description=KIND_DESCRIPTIONS[kind],
        hidden_size=config.hidden_size,
        depth=config.num_hidden_layers,
        heads=config.num_attention_heads,
        patch_size=config.patch_size,
        height=height,
        width=width,
        mean=list(config.image_mean),
        std=list(config.image_std),
        num_patches=config.num_patches,
        embedding_size=config.embedding_size,
        num_params=count_parameters(config),
        **sections,
    )


def reid_card_data(
    *,
    model_name: str,
    dataset_name: str,
    dataset_id: str,
    results: dict[str, float],
    base_model: str | None = None,
    dataset_config: str | None = None,
    extra_tags: tuple[str, ...] = (),
) -> ModelCardData:
    """Front matter of a ReID model card: library, license, tags, datasets, base model and a ``model-index``
    whose results are the ``evaluate_reid`` numbers (``mAP``, ``rank1``, ``rank5``, ``mINP``) in percent.

    Args:
        model_name: Name in the ``model-index``.
        dataset_name: Human name of the evaluation data (``Market-1501``).
        dataset_id: Hub dataset id or short type (``market1501``, ``synthperson``).
        results: ``evaluate_reid`` output (fractions).
        base_model: The checkpoint fine-tuning started from, if it has a hub id.
        dataset_config: The dataset variant, e.g. ``V1`` / ``V2`` for MSMT17.
        extra_tags: More tags (``unsupervised``, ``domain-adaptation`` ...).
    """
    eval_results = [
        EvalResult(
            task_type="image-feature-extraction",
            task_name="Person re-identification",
            dataset_type=dataset_id,
            dataset_name=dataset_name,
            dataset_config=dataset_config,
            dataset_split="query/gallery",
            metric_type=key,
            metric_name=label,
            metric_value=round(100 * float(results[key]), 2),
        )
        for key, label in REID_METRICS.items()
        if key in results
    ]
    return ModelCardData(
        library_name="transformers",
        license="apache-2.0",
        pipeline_tag="image-feature-extraction",
        tags=[*CARD_TAGS, *extra_tags],
        datasets=[dataset_id],
        base_model=base_model,
        model_name=model_name,
        eval_results=eval_results,
    )


def results_table(rows: dict[str, dict[str, float]]) -> str:
    """A markdown table (percent) of ``{setting: evaluate_reid results}``.

    Example:
        >>> print(results_table({"PASS": {"mAP": 0.5, "rank1": 0.75, "rank5": 0.9, "mINP": 0.2}}))
        | model | mAP | Rank-1 | Rank-5 | mINP |
        |---|---|---|---|---|
        | PASS | 50.0 | 75.0 | 90.0 | 20.0 |
    """
    lines = ["| model | " + " | ".join(REID_METRICS.values()) + " |", "|---" * (1 + len(REID_METRICS)) + "|"]
    for name, results in rows.items():
        cells = [f"{100 * results[key]:.1f}" if key in results else "" for key in REID_METRICS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def deployment_section(calibration: Calibration, dataset: str, picture: str | None = None) -> str:
    """The card's deployment section: which feature the embeddings are and the score thresholds measured on
    ``dataset`` (:func:`pass_hub.calibration.calibrate`), with the calibration picture when given.

    Example:
        >>> from pass_hub.evaluation.calibration import Calibration, OperatingPoint
        >>> point = OperatingPoint(target_fpr=0.01, threshold=0.41, tpr=0.9, fpr=0.0099, resolved=True)
        >>> text = deployment_section(Calibration([point], 10, 1000, {}, {}, 0.0, [], [], [], "after_neck"),
        ...                           "market1501")
        >>> "| 0.01 | 90.0% | 0.4100 |" in text
        True
    """
    feature = calibration.feature.replace("_", "-")
    lines = [
        f"`pass_hub.embed`, `pass-hub search`, `GalleryIndex` and `pass-hub export-onnx` return the L2-normalised "
        f"{feature} feature: its cosine similarities separate people, so they can be thresholded. Thresholds "
        f"measured on `{dataset}` ({calibration.num_positive} same-person pairs from different cameras, "
        f"{calibration.num_negative} different-person pairs); a pair matches when its cosine is above:",
        "",
        calibration.table(),
        "",
        "They hold for images like that test split's: measure them on your own cameras with "
        "`pass-hub eval --model MODEL --data SPEC --calibration calibration.png` before relying on one, and pass "
        "the chosen value to `pass-hub search --threshold T` or `GalleryIndex.search(..., threshold=T)`.",
    ]
    if picture:
        lines += ["", f"![score histograms and ROC curve]({picture})"]
    return "\n".join(lines)
