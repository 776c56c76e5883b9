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

from huggingface_hub import ModelCard, ModelCardData

from .configuration_pass_vit import PassViTConfig

KIND_DESCRIPTIONS = {
    "backbone": "pre-trained backbone (PassViTModel); fine-tune it for ReID",
    "reid": "ReID model (PassViTForReID): backbone, BatchNorm necks and identity classifier",
}


def template_path(name: str = "pass_vit.md") -> Path:
    """A card template: shipped inside the package when installed, at the repository top in a checkout."""
    here = Path(__file__).resolve().parent
    for folder in (here / "model_cards", here.parent / "model_cards"):
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"model card template {name!r} not found next to {here}")


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
        **sections: Optional template sections (``training``, ``results_table``, ``pictures``).
    """
    if kind not in KIND_DESCRIPTIONS:
        raise ValueError(f"kind={kind!r}; expected one of {sorted(KIND_DESCRIPTIONS)}")
    card_data = card_data or ModelCardData(
        library_name="transformers",
        license="apache-2.0",
        pipeline_tag="image-feature-extraction",
        tags=["pass-hub", "timm", "person-reid", "re-identification", "vision-transformer", "pass"],
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
