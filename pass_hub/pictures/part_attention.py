"""Where the CLS and [PART] tokens look: last-block attention over the patches, as numbers and as a picture.

After PASS pre-training PART1/2/3 should prefer the top / middle / bottom of a person; :func:`vertical_centres`
measures it (the attention-weighted mean row, 0 = top, 1 = bottom) and :func:`draw_part_attention` shows it.

Example:
    >>> import torch, pass_hub
    >>> from PIL import Image
    >>> config = pass_hub.PassViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2)
    >>> maps = part_attention_maps(pass_hub.PassViTModel(config), [Image.new("RGB", (64, 128))] * 2)
    >>> maps.shape  # (images, CLS + 3 PARTs, patch rows, patch columns)
    torch.Size([2, 4, 16, 8])
    >>> vertical_centres(maps).shape
    torch.Size([2, 4])
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ..atomic import atomic_file
from ..deployment.embedder import ReIDEmbedder, load_reid_model
from ..evaluation.protocol import preprocessing_transform
from ..models.backbone import PassVisionTransformer
from ..models.modeling_pass_vit import PassViTForReID, PassViTModel

BACKGROUND = (255, 255, 255)
TEXT_COLOR = (0, 0, 0)


def _backbone(embedder: ReIDEmbedder) -> PassVisionTransformer:
    model = embedder.model
    if isinstance(model, PassViTForReID):
        return model.pass_vit.vit
    if isinstance(model, PassViTModel):
        return model.vit
    return model


def token_names(num_parts: int) -> list[str]:
    return ["CLS", *(f"PART{k}" for k in range(1, num_parts + 1))]


@torch.no_grad()
def part_attention_maps(model, images: Sequence[Image.Image]) -> torch.Tensor:
    """Attention of CLS and of each [PART] token over the patch grid in the last block, averaged over heads.

    Args:
        model: Anything :func:`pass_hub.load_reid_model` takes (folder, hub id, timm name, model object).
        images: PIL images, preprocessed as the model expects.

    Returns:
        (len(images), 1 + num_parts, rows, columns); each map sums to 1 over the patches (attention paid to the
        prefix tokens is left out).
    """
    embedder = load_reid_model(model)
    backbone = _backbone(embedder)
    transform = preprocessing_transform(embedder.preprocessing)
    pixels = torch.stack([transform(image.convert("RGB")) for image in images])
    pixels = pixels.to(next(backbone.parameters()).device)
    was_training = backbone.training
    backbone.eval()
    try:
        attention = backbone.forward_tokens(pixels, output_attentions=True).attentions[-1]
    finally:
        backbone.train(was_training)
    prefix = backbone.num_prefix_tokens
    patch_height, patch_width = backbone.patch_embed.patch_size
    rows, columns = pixels.shape[-2] // patch_height, pixels.shape[-1] // patch_width
    maps = attention.mean(dim=1)[:, :prefix, prefix:].float().cpu()
    maps = maps / maps.sum(dim=-1, keepdim=True)
    return maps.reshape(len(images), prefix, rows, columns)


def vertical_centres(maps: torch.Tensor) -> torch.Tensor:
    """Attention-weighted mean row of each map in [0, 1] (0: top edge, 1: bottom edge) -> (images, tokens)."""
    rows = maps.shape[-2]
    row_positions = (torch.arange(rows, dtype=maps.dtype) + 0.5) / rows
    return (maps.sum(dim=-1) * row_positions).sum(dim=-1)


def _heat_overlay(image: Image.Image, attention: np.ndarray, size: tuple[int, int]) -> Image.Image:
    from matplotlib import colormaps

    scaled = attention / max(float(attention.max()), 1e-12)
    heat = Image.fromarray((colormaps["inferno"](scaled)[..., :3] * 255).astype(np.uint8))
    heat = heat.resize(size, Image.Resampling.NEAREST)
    return Image.blend(image.convert("RGB").resize(size, Image.Resampling.BILINEAR), heat, 0.6)


def draw_part_attention(
    images: Sequence[Image.Image],
    maps: torch.Tensor,
    output_path: str | Path | None = None,
    *,
    title: str | None = None,
    image_size: tuple[int, int] = (64, 128),
    gap: int = 6,
) -> Image.Image:
    """One row per image: the image, then its CLS and PART attention maps over it, with each map's centre row.

    Args:
        images: The images the maps were computed for.
        maps: (len(images), tokens, rows, columns) from :func:`part_attention_maps`.
        output_path: Save the picture there as PNG (atomically); not saved if None.
        title: A line above the picture.
        image_size: (width, height) of every cell.
        gap: Space between cells, in pixels.
    """
    if maps.ndim != 4 or maps.shape[0] != len(images):
        raise ValueError(f"maps of shape {tuple(maps.shape)} do not fit {len(images)} images")
    font = ImageFont.load_default()
    line = font.getbbox("Ag")[3] + 4
    names = token_names(maps.shape[1] - 1)
    centres = vertical_centres(maps)
    width, height = image_size
    top = gap + (line if title else 0) + line
    title_width = int(font.getlength(title)) + 2 * gap if title else 0
    canvas = Image.new(
        "RGB",
        (max(gap + (1 + len(names)) * (width + gap), title_width), top + len(images) * (height + line + gap)),
        BACKGROUND,
    )
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((gap, gap // 2), title, fill=TEXT_COLOR, font=font)
    for column, name in enumerate(["image", *names]):
        draw.text((gap + column * (width + gap), top - line), name, fill=TEXT_COLOR, font=font)
    for row, image in enumerate(images):
        y = top + row * (height + line + gap)
        canvas.paste(image.convert("RGB").resize(image_size, Image.Resampling.BILINEAR), (gap, y))
        for token in range(len(names)):
            x = gap + (1 + token) * (width + gap)
            canvas.paste(_heat_overlay(image, maps[row, token].numpy(), image_size), (x, y))
            draw.text((x, y + height + 1), f"centre {centres[row, token]:.2f}", fill=TEXT_COLOR, font=font)
    if output_path is not None:
        with atomic_file(output_path) as temporary:
            canvas.save(temporary, format="PNG")
    return canvas
