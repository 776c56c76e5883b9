"""Rank-list pictures: a query and its top-ranked gallery images, true matches framed green, others red
(gray when the identities are unknown, as in a gallery search), each captioned with its rank and score.

Example:
    >>> from PIL import Image
    >>> query = Image.new("RGB", (64, 128), "gray")
    >>> gallery = [Image.new("RGB", (64, 128), c) for c in ("white", "black")]
    >>> picture = draw_rank_list(query, gallery, [0.12, 0.5], [True, False], title="query 3")
    >>> picture.size
    (246, 188)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..atomic import atomic_file

MATCH_COLOR = (40, 170, 60)
NON_MATCH_COLOR = (215, 40, 40)
QUERY_COLOR = (60, 110, 220)
UNKNOWN_COLOR = (150, 150, 150)
BACKGROUND = (255, 255, 255)
TEXT_COLOR = (0, 0, 0)
CAPTION_SIZE = 13  # pixels: readable at 100% without zooming


def draw_rank_list(
    query_image: Image.Image,
    gallery_images: Sequence[Image.Image],
    scores: Sequence[float],
    matches: Sequence[bool] | None,
    output_path: str | Path | None = None,
    *,
    title: str | None = None,
    image_size: tuple[int, int] = (64, 128),
    border: int = 4,
    gap: int = 6,
) -> Image.Image:
    """Draw the query (blue frame) then its ranked gallery images (green: true match, red: not), with scores.

    Args:
        query_image: The query image.
        gallery_images: Gallery images in rank order (e.g. ``topk_indices`` of
            :func:`pass_hub.metrics.evaluate_reid` with ``return_per_query=True``, ``-1`` entries left out).
        scores: Their scores against the query (cosine similarity, or a distance), shown under each image with
            three decimals.
        matches: Whether each is a true match (``topk_matches``); None when unknown (gray frames).
        output_path: Where to save the picture as PNG (parent folders are created); not saved if None.
        title: A line above the pictures, e.g. the query index and its AP.
        image_size: (width, height) every image is resized to.
        border: Frame width in pixels.
        gap: Space between images, in pixels (twice that after the query).

    Returns:
        The picture.
    """
    if matches is None:
        matches = [None] * len(gallery_images)
    if not len(gallery_images) == len(scores) == len(matches):
        raise ValueError(
            f"got {len(gallery_images)} gallery images, {len(scores)} scores and {len(matches)} match flags"
        )
    font = ImageFont.load_default(size=CAPTION_SIZE)
    line_height = font.getbbox("Ag")[3] + 4
    cell_width, cell_height = image_size[0] + 2 * border, image_size[1] + 2 * border
    top = gap + (line_height if title else 0)
    width = gap + cell_width + gap * 2 + len(gallery_images) * (cell_width + gap)
    height = top + cell_height + line_height + gap
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((gap, gap // 2), title, fill=TEXT_COLOR, font=font)

    def paste(image: Image.Image, left: int, color: tuple[int, int, int], caption: str) -> None:
        draw.rectangle((left, top, left + cell_width - 1, top + cell_height - 1), fill=color)
        canvas.paste(image.convert("RGB").resize(image_size, Image.Resampling.BILINEAR), (left + border, top + border))
        draw.text((left, top + cell_height + 2), caption, fill=TEXT_COLOR, font=font)

    paste(query_image, gap, QUERY_COLOR, "query")
    left = gap + cell_width + gap * 2
    for rank, (image, score, is_match) in enumerate(zip(gallery_images, scores, matches, strict=True), 1):
        color = UNKNOWN_COLOR if is_match is None else MATCH_COLOR if is_match else NON_MATCH_COLOR
        paste(image, left, color, f"{rank}: {score:.3f}")
        left += cell_width + gap
    if output_path is not None:
        with atomic_file(output_path) as temporary:
            canvas.save(temporary, format="PNG")
    return canvas


def stack_pictures(pictures: Sequence[Image.Image]) -> Image.Image:
    """Pictures one under the other, left-aligned, on a white canvas as wide as the widest."""
    if not pictures:
        raise ValueError("nothing to stack")
    canvas = Image.new("RGB", (max(p.width for p in pictures), sum(p.height for p in pictures)), BACKGROUND)
    top = 0
    for picture in pictures:
        canvas.paste(picture, (0, top))
        top += picture.height
    return canvas


def select_queries(
    per_query_ap: Sequence[float] | np.ndarray,
    *,
    num_best: int = 3,
    num_worst: int = 3,
    num_random: int = 3,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Pick queries worth drawing from per-query AP (NaN = skipped query, never picked).

    Returns ``{"best": ..., "worst": ..., "random": ...}`` query indices: highest AP first, lowest AP first
    (ties by index), and a seeded random sample of the other valid queries. A query is picked once at most.

    Example:
        >>> picks = select_queries([0.2, float("nan"), 1.0, 0.5, 0.9], num_best=1, num_worst=1, num_random=1)
        >>> picks["best"].tolist(), picks["worst"].tolist(), len(picks["random"])
        ([2], [0], 1)
    """
    ap = np.asarray(per_query_ap, dtype=np.float64)
    valid = np.flatnonzero(~np.isnan(ap))
    best = valid[np.argsort(-ap[valid], kind="stable")][:num_best]
    ascending = valid[np.argsort(ap[valid], kind="stable")]
    worst = ascending[~np.isin(ascending, best)][:num_worst]
    rest = np.setdiff1d(valid, np.concatenate([best, worst]))
    random = np.random.default_rng(seed).choice(rest, size=min(num_random, len(rest)), replace=False)
    return {"best": best, "worst": worst, "random": np.sort(random)}
