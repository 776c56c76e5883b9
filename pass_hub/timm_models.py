"""timm registry entries ``pass_vit_tiny`` / ``pass_vit_small`` / ``pass_vit_base`` (patch 16, 256x128).

Registered when ``pass_hub`` is imported (the second line loads a pass-hub folder):

    >>> import pass_hub, timm
    >>> model = timm.create_model("pass_vit_small", num_classes=0)  # ReID embedding of 768 values
    >>> model = timm.create_model("local-dir:out/pass-vit-s16", pretrained=True)  # doctest: +SKIP

``checkpoint_filter_fn`` accepts every weight layout a user may hold: a pass-hub hub folder (backbone or
fine-tuned ReID model), the original PASS pre-training checkpoint, the original flat backbone and the
original fine-tuned ReID model; see :mod:`pass_hub.convert`.
"""

from __future__ import annotations

from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import resample_abs_pos_embed
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from .backbone import PRESETS, REID_IMAGE_SIZE, PassVisionTransformer
from .convert import extract_weights, infer_grid

DEFAULT_HUB_IDS = {
    "pass_vit_small": "pass-hub/pass-vit-s16",
    "pass_vit_base": "pass-hub/pass-vit-b16",
}


def checkpoint_filter_fn(state_dict: dict[str, Any], model: PassVisionTransformer) -> dict[str, torch.Tensor]:
    """Map any supported PASS checkpoint to ``model``'s backbone keys; resample the position table to its grid.

    ReID necks and identity classifiers are dropped: the timm entry is a feature extractor whose
    ``forward_head(pre_logits=True)`` is the ReID embedding.
    """
    backbone = dict(extract_weights(state_dict).backbone)
    pos_embed = backbone.get("pos_embed")
    if pos_embed is not None and pos_embed.shape != model.pos_embed.shape:
        backbone["pos_embed"] = resample_abs_pos_embed(
            pos_embed,
            new_size=model.patch_embed.grid_size,
            old_size=infer_grid(pos_embed.shape[1] - model.num_prefix_tokens),
            num_prefix_tokens=model.num_prefix_tokens,
            interpolation=model.pos_embed_interpolation,
            antialias=False,
        )
    return backbone


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "url": "",
        "num_classes": 0,
        "input_size": (3, *REID_IMAGE_SIZE),
        "pool_size": None,
        "crop_pct": 1.0,
        "crop_mode": "squash",
        "interpolation": "bilinear",
        "fixed_input_size": True,
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj",
        "classifier": "head",
        "license": "apache-2.0",
        "paper_ids": "arXiv:2203.03931",
        "paper_name": "PASS: Part-Aware Self-Supervised Pre-Training for Person Re-Identification",
        **kwargs,
    }


default_cfgs = generate_default_cfgs(
    {
        "pass_vit_tiny": _cfg(),
        "pass_vit_small.lup_pass": _cfg(hf_hub_id=DEFAULT_HUB_IDS["pass_vit_small"]),
        "pass_vit_base.lup_pass": _cfg(hf_hub_id=DEFAULT_HUB_IDS["pass_vit_base"]),
    }
)


def _create_pass_vit(variant: str, pretrained: bool = False, **kwargs: Any) -> PassVisionTransformer:
    model_args = {"img_size": REID_IMAGE_SIZE, "patch_size": 16, "num_classes": 0, **PRESETS[variant], **kwargs}
    out_indices = model_args.pop("out_indices", 3)
    return build_model_with_cfg(
        PassVisionTransformer,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        **model_args,
    )


@register_model
def pass_vit_tiny(pretrained: bool = False, **kwargs: Any) -> PassVisionTransformer:
    """PASS ViT-Ti/16 at 256x128 (embed 192, 3 heads); no published weights, used for tests and demos."""
    return _create_pass_vit("pass_vit_tiny", pretrained=pretrained, **kwargs)


@register_model
def pass_vit_small(pretrained: bool = False, **kwargs: Any) -> PassVisionTransformer:
    """PASS ViT-S/16 at 256x128 (embed 384, 6 heads), pre-trained with PASS on LUPerson."""
    return _create_pass_vit("pass_vit_small", pretrained=pretrained, **kwargs)


@register_model
def pass_vit_base(pretrained: bool = False, **kwargs: Any) -> PassVisionTransformer:
    """PASS ViT-B/16 at 256x128 (embed 768, 12 heads), pre-trained with PASS on LUPerson."""
    return _create_pass_vit("pass_vit_base", pretrained=pretrained, **kwargs)
