"""Rank-list pictures and the choice of queries to draw."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pass_hub.pictures.visualize import MATCH_COLOR, NON_MATCH_COLOR, QUERY_COLOR, draw_rank_list, select_queries


def person(seed: int, size: tuple[int, int] = (48, 96)) -> Image.Image:
    """A random 'person': two coloured blocks (torso, legs) on noise."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 60, (size[1], size[0], 3), dtype=np.uint8)
    pixels[: size[1] // 2] += rng.integers(0, 190, 3, dtype=np.uint8)
    pixels[size[1] // 2 :] += rng.integers(0, 190, 3, dtype=np.uint8)
    return Image.fromarray(pixels)


def test_draw_rank_list_writes_a_framed_png(tmp_path: Path) -> None:
    matches = [True, False, True, False, False, True, False, False, False, True]
    distances = np.linspace(0.1, 1.3, 10)
    out = tmp_path / "lists" / "query_7.png"
    picture = draw_rank_list(person(0), [person(i) for i in range(1, 11)], distances, matches, out,
                             title="query 7  AP 0.512")  # fmt: skip
    saved = Image.open(out)
    assert saved.format == "PNG" and saved.size == picture.size
    pixels = np.asarray(saved.convert("RGB"))
    border, gap, cell_width = 4, 6, 64 + 2 * 4
    top = next(y for y in range(pixels.shape[0]) if tuple(pixels[y, gap + 1]) == QUERY_COLOR)
    assert tuple(pixels[top + 1, gap + 1]) == QUERY_COLOR
    for rank, is_match in enumerate(matches):
        left = gap + cell_width + 2 * gap + rank * (cell_width + gap)
        frame = tuple(pixels[top + 1, left + 1]), tuple(pixels[top + 100, left + border - 1])
        assert frame == ((MATCH_COLOR,) * 2 if is_match else (NON_MATCH_COLOR,) * 2), rank
    # Each image is resized into its frame: the torso colour of the query shows inside the blue frame.
    torso = np.asarray(person(0))[10:40, 10:40].mean(axis=(0, 1))
    inside = pixels[top + border + 20 : top + border + 60, gap + border + 10 : gap + border + 50]
    np.testing.assert_allclose(inside.mean(axis=(0, 1)), torso, atol=3)


def test_draw_rank_list_rejects_mismatched_lists() -> None:
    with pytest.raises(ValueError, match="2 gallery images, 1 scores and 2 match flags"):
        draw_rank_list(person(0), [person(1), person(2)], [0.1], [True, False])


def test_select_queries() -> None:
    ap = np.array([0.5, np.nan, 1.0, 0.2, 1.0, 0.2, 0.7, np.nan, 0.9, 0.3])
    picks = select_queries(ap, num_best=2, num_worst=2, num_random=10)
    assert picks["best"].tolist() == [2, 4]  # equal AP: lower index first
    assert picks["worst"].tolist() == [3, 5]
    assert sorted(picks["random"].tolist()) == [0, 6, 8, 9]  # the other valid queries, NaN never picked
    assert (
        select_queries(ap, num_random=2, seed=1)["random"].tolist()
        == select_queries(ap, num_random=2, seed=1)["random"].tolist()
    )
    assert len(select_queries([np.nan])["best"]) == 0
