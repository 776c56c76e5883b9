"""timm registry entries ``pass_vit_tiny`` / ``pass_vit_small`` / ``pass_vit_base`` (patch 16, 256x128).

Registered when ``pass_hub`` is imported:

    >>> import pass_hub, timm
    >>> model = timm.create_model("pass_vit_small", num_classes=0)  # ReID embedding of 768 values
    >>> model.num_features, model.head_hidden_size
    (384, 768)
    >>> model = timm.create_model("local-dir:out/pass-vit-s16", pretrained=True)  # doctest: +SKIP
    >>> model = timm.create_model("pass_vit_small", pretrained=True,  # doctest: +SKIP
    ...                           pretrained_cfg_overlay=dict(file="pass_vit_small_full.pth"))

Two widths, in timm's own terms: ``num_features`` is the token width D (what ``forward_features`` returns per
token and ``forward_intermediates`` per feature map), ``head_hidden_size`` the width of the pooled feature the
head sees, ``cat(CLS, mean(PARTs))``, 2D (``global_pool="pass_mean"``: D). With ``num_classes=0`` the model's
output is that pooled feature, so its width is ``head_hidden_size``, not ``num_features``.

No pass-hub weights are published yet (``pretrained=True`` without a file says where the original ones are).
``pretrained_cfg_overlay=dict(file=PATH)`` loads a local checkpoint of any layout a user may hold: the original
flat backbone, the original pre-training ``checkpoint.pth`` (its teacher), the original fine-tuned ReID model, a
pass-hub ``model.safetensors`` or a timm state dict, through the allow-listed safe loader of
:mod:`pass_hub.convert` and :func:`checkpoint_filter_fn`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import resample_abs_pos_embed
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._builder import _resolve_pretrained_source, resolve_pretrained_cfg

from .backbone import PRESETS, REID_IMAGE_SIZE, PassVisionTransformer
from .convert import check_state_dict, extract_weights, infer_grid, load_checkpoint_file

ORIGINAL_WEIGHTS = {"pass_vit_small": "pass_vit_small_full.pth", "pass_vit_base": "pass_vit_base_full.pth"}


def no_weights_message(variant: str) -> str:
    """What ``pretrained=True`` without weights says: where the original weights are and how to load them."""
    file = ORIGINAL_WEIGHTS.get(variant, "pass_vit_small_full.pth")
    return (
        f"{variant} has no published pass-hub weights yet. The original PASS weights ({file}; "
        f"{', '.join(v for v in ORIGINAL_WEIGHTS.values() if v != file)} for the other size) are linked from the "
        "README of https://github.com/CASIA-IVA-Lab/PASS-reID. Load a downloaded file with "
        f"timm.create_model({variant!r}, pretrained=True, pretrained_cfg_overlay=dict(file={file!r})), or convert it "
        f"once with `pass-hub convert {file} out/{variant}` and use "
        f"timm.create_model('local-dir:out/{variant}', pretrained=True); pretrained=False gives random weights."
    )


def checkpoint_filter_fn(state_dict: dict[str, Any], model: PassVisionTransformer) -> dict[str, torch.Tensor]:
    """Map any supported PASS checkpoint to ``model``'s backbone keys; resample the position table to its grid.

    ReID necks and identity classifiers are dropped: the timm entry is a feature extractor whose
    ``forward_head(pre_logits=True)`` is the ReID embedding.
    """
    backbone = dict(extract_weights(state_dict).backbone)
    if "pos_embed" in backbone:
        backbone["pos_embed"] = position_table_for(backbone["pos_embed"], model)
    return backbone


def grid_change(trained_size: Sequence[int], image_size: Sequence[int], patch_size: int) -> tuple[str, str] | None:
    """(``"16x8"``, ``"24x8"``) when ``image_size`` puts the patches on another grid than the ``trained_size`` a
    position table is laid out for (what :func:`position_table_for` then resamples); None when they agree.

    Example:
        >>> grid_change((256, 128), (384, 128), 16), grid_change((256, 128), (256, 128), 16)
        (('16x8', '24x8'), None)
    """
    old = tuple(side // patch_size for side in trained_size)
    new = tuple(side // patch_size for side in image_size)
    return None if old == new else ("x".join(map(str, old)), "x".join(map(str, new)))


def position_table_for(pos_embed: torch.Tensor, model: PassVisionTransformer) -> torch.Tensor:
    """A position table (prefix rows, then a patch grid of height = 2 x width) on ``model``'s patch grid: the
    prefix rows kept, the patch rows resampled (bilinear, as the original fine-tuning code resizes at load) when
    the grids differ; unchanged otherwise."""
    if pos_embed.shape == model.pos_embed.shape:
        return pos_embed
    return resample_abs_pos_embed(
        pos_embed,
        new_size=model.patch_embed.grid_size,
        old_size=infer_grid(pos_embed.shape[1] - model.num_prefix_tokens),
        num_prefix_tokens=model.num_prefix_tokens,
        interpolation=model.pos_embed_interpolation,
        antialias=False,
    )


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


# The tags name the weights of the paper (PASS on LUPerson); none is hosted yet, so they carry no source.
default_cfgs = generate_default_cfgs(
    {
        "pass_vit_tiny": _cfg(),
        "pass_vit_small.lup_pass": _cfg(),
        "pass_vit_base.lup_pass": _cfg(),
    }
)


def load_checkpoint_into(model: PassVisionTransformer, path: str) -> None:
    """Load a local checkpoint of any PASS layout into ``model``'s backbone, strictly (its head is left as is)."""
    state = checkpoint_filter_fn(load_checkpoint_file(path), model)
    expected = {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}
    check_state_dict(expected, {k: v for k, v in state.items() if not k.startswith("head.")}, str(path))
    model.load_state_dict(state, strict=False)


def _create_pass_vit(variant: str, pretrained: bool = False, **kwargs: Any) -> PassVisionTransformer:
    model_args = {"img_size": REID_IMAGE_SIZE, "patch_size": 16, "num_classes": 0, **PRESETS[variant], **kwargs}
    out_indices = model_args.pop("out_indices", 3)
    cfg = resolve_pretrained_cfg(variant, pretrained_cfg=model_args.pop("pretrained_cfg", None),
                                 pretrained_cfg_overlay=model_args.pop("pretrained_cfg_overlay", None))
    source, location = _resolve_pretrained_source(cfg.to_dict())
    if pretrained and not source:
        raise RuntimeError(no_weights_message(variant))
    model = build_model_with_cfg(
        PassVisionTransformer,
        variant,
        pretrained and source != "file",  # timm's own loader refuses the argparse.Namespace of a checkpoint.pth
        pretrained_cfg=cfg,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        **model_args,
    )
    if pretrained and source == "file":
        load_checkpoint_into(model, location)
    return model


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
