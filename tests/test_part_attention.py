"""Part-attention maps and picture: shapes, normalisation, the centre-row measure, and the drawing."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

import pass_hub
from pass_hub.pictures.part_attention import draw_part_attention, part_attention_maps, vertical_centres


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = pass_hub.PassViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=(64, 32))
    return pass_hub.PassViTModel(config).eval()


def test_maps_are_the_last_block_prefix_rows_over_the_patches(model):
    images = [Image.new("RGB", (32, 64), colour) for colour in ("red", "navy", "white")]
    maps = part_attention_maps(model, images)
    assert maps.shape == (3, 4, 4, 2)
    assert torch.allclose(maps.sum(dim=(-2, -1)), torch.ones(3, 4), atol=1e-5)
    # the same numbers straight from the transformers output, renormalised over the 8 patches
    pixels = pass_hub.image_processor_for(model.config)(images, return_tensors="pt")["pixel_values"]
    last = model(pixels, output_attentions=True).attentions[-1].mean(dim=1)[:, :4, 4:]
    assert torch.allclose(maps.flatten(2), last / last.sum(-1, keepdim=True), atol=1e-5)
    assert model.training is False


def test_vertical_centres_measure_top_middle_bottom():
    maps = torch.zeros(1, 4, 4, 2)
    maps[0, 0] = 1 / 8  # uniform: centre 0.5
    maps[0, 1, 0] = 0.5  # top row only
    maps[0, 2, 1:3] = 0.25  # middle rows
    maps[0, 3, 3] = 0.5  # bottom row
    assert torch.allclose(vertical_centres(maps), torch.tensor([[0.5, 0.125, 0.5, 0.875]]))


def test_picture_has_a_row_per_image_and_a_column_per_token(model, tmp_path):
    images = [Image.new("RGB", (32, 64), "green")] * 2
    picture = draw_part_attention(images, part_attention_maps(model, images), tmp_path / "a.png", title="t")
    assert Image.open(tmp_path / "a.png").size == picture.size
    assert picture.width > 5 * 64 and picture.height > 2 * 128
    with pytest.raises(ValueError, match="do not fit 3 images"):
        draw_part_attention(images + images[:1], torch.zeros(2, 4, 4, 2))
