"""PassViTModel / PassViTForReID / PassViTConfig / image processor / pipeline behaviour."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from reference_pass import ReferencePassViT
from transformers import AutoBackbone, AutoConfig, AutoImageProcessor, AutoModel, pipeline

import pass_hub
from pass_hub.models.backbone import pool_parts
from pass_hub.models.convert import extract_weights


@pytest.fixture
def model(tiny_config) -> pass_hub.PassViTModel:
    return pass_hub.PassViTModel(tiny_config).eval()


def test_outputs_layout(model):
    pixels = torch.randn(2, 3, 256, 128)
    with torch.no_grad():
        out = model(pixels)
    assert out.last_hidden_state.shape == (2, 4 + 128, 64)
    assert torch.equal(out.part_tokens, out.last_hidden_state[:, 1:4])
    expected = torch.cat([out.last_hidden_state[:, 0], out.last_hidden_state[:, 1:4].mean(1)], dim=1)
    assert torch.allclose(out.pooler_output, expected)
    assert out.hidden_states is None and out.attentions is None
    as_tuple = model(pixels, return_dict=False)
    assert torch.allclose(as_tuple[0], out.last_hidden_state)


@pytest.mark.parametrize("size", [(384, 128), (224, 224), (128, 64)])
def test_other_input_sizes_resample_patch_positions(model, size):
    with torch.no_grad():
        out = model(torch.randn(1, 3, *size))
    assert out.last_hidden_state.shape[1] == 4 + (size[0] // 16) * (size[1] // 16)
    with pytest.raises(ValueError, match="differs from the model's"):
        model(torch.randn(1, 3, *size), interpolate_pos_encoding=False)


def test_bad_pixel_values_are_explained(model):
    with pytest.raises(ValueError, match=r"pixel_values must be \(batch, 3, height, width\)"):
        model(torch.randn(1, 1, 256, 128))
    with pytest.raises(ValueError, match="not a multiple of the patch size 16"):
        model(torch.randn(1, 3, 250, 128))


def test_attention_maps_are_the_ones_used(model):
    pixels = torch.randn(2, 3, 256, 128)
    with torch.no_grad():
        fused = model(pixels)
        detailed = model(pixels, output_attentions=True, output_hidden_states=True)
    assert len(detailed.attentions) == 2 and detailed.attentions[0].shape == (2, 2, 132, 132)
    assert torch.allclose(detailed.attentions[1].sum(-1), torch.ones(2, 2, 132), atol=1e-5)
    # The eager path that produced the maps computes the same tokens as the fused kernel.
    assert (detailed.last_hidden_state - fused.last_hidden_state).abs().max() < 1e-5
    assert len(detailed.hidden_states) == 3
    assert torch.allclose(model.vit.norm(detailed.hidden_states[-1]), detailed.last_hidden_state, atol=1e-6)
    # Attention of CLS in block 0 recomputed by hand from the block's weights.
    block = model.vit.blocks[0]
    x = block.norm1(detailed.hidden_states[0])
    q, k, _ = block.attn.qkv(x).reshape(2, 132, 3, 2, 32).permute(2, 0, 3, 1, 4)
    by_hand = torch.softmax(q @ k.transpose(-1, -2) / 32**0.5, dim=-1)
    assert (by_hand - detailed.attentions[0]).abs().max() < 1e-5


def test_eager_attention_implementation_uses_unfused_blocks(tiny_config, model, tmp_path):
    model.save_pretrained(tmp_path)
    eager = AutoModel.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert not eager.vit.blocks[0].attn.fused_attn and model.vit.blocks[0].attn.fused_attn
    pixels = torch.randn(1, 3, 256, 128)
    with torch.no_grad():
        assert (eager(pixels).pooler_output - model(pixels).pooler_output).abs().max() < 1e-5


def test_reid_head(tiny_config):
    tiny_config.num_labels = 5
    model = pass_hub.PassViTForReID(tiny_config)
    pixels, labels = torch.randn(4, 3, 256, 128), torch.tensor([0, 1, 2, 4])
    out = model(pixels, labels=labels)
    assert out.logits.shape == (4, 5) and model.classifier.bias is None
    assert torch.allclose(out.loss, torch.nn.functional.cross_entropy(out.logits, labels))
    assert torch.allclose(out.embeddings.norm(dim=1), torch.ones(4))
    assert torch.allclose(out.embeddings, torch.nn.functional.normalize(out.features_before_neck, dim=1))
    out.loss.backward()
    assert model.cls_neck.weight.grad is not None and "bias" not in dict(model.cls_neck.named_parameters())
    assert model.classifier.weight.std() < 0.01  # N(0, 0.001) init, not the linear default
    model.eval()
    with torch.no_grad():
        out = model(pixels)
        tokens = model.pass_vit(pixels).last_hidden_state
    necks = [model.cls_neck(tokens[:, 0])] + [n(tokens[:, 1 + k]) for k, n in enumerate(model.part_necks)]
    after = torch.cat([necks[0], torch.stack(necks[1:]).mean(0)], dim=1)
    assert torch.allclose(out.features_after_neck, after, atol=1e-6)
    model.config.reid_feature, model.config.normalize_embeddings = "after_neck", False
    with torch.no_grad():
        assert torch.allclose(model(pixels).embeddings, after, atol=1e-6)


def test_config_validation_and_presets():
    assert pass_hub.PassViTConfig.from_preset("base").hidden_size == 768
    with pytest.raises(ValueError, match=r"unknown backbone 'huge': expected one of .*pass_vit_base"):
        pass_hub.PassViTConfig.from_preset("huge")
    for bad, match in (
        (dict(hidden_size=65), "not divisible by num_attention_heads"),
        (dict(image_size=(250, 128)), "multiples of 16"),
        (dict(reid_feature="middle"), "reid_feature='middle'"),
        (dict(pos_embed_interpolation="area"), "pos_embed_interpolation='area'"),
    ):
        with pytest.raises(ValueError, match=match):
            pass_hub.PassViTConfig(num_hidden_layers=1, **bad)


def test_forward_local_matches_the_reference(tmp_path):
    reference = ReferencePassViT(dim=128, depth=2, heads=2).eval()
    folder = tmp_path / "m"
    torch.save(reference.state_dict(), tmp_path / "b.pth")
    pass_hub.convert_checkpoint(tmp_path / "b.pth", folder)
    backbone = AutoModel.from_pretrained(folder).vit.eval()
    crops = torch.randn(6, 3, 128, 64)
    stripes = torch.tensor([0, 0, 1, 1, 2, 2])
    with torch.no_grad():
        batched = backbone.forward_local(crops, stripes)
        assert batched.shape == (6, 2 + 8 * 4, 128)
        for k in range(3):
            rows = stripes == k
            expected = reference.forward_local(crops[rows], k)
            assert (backbone.forward_local(crops[rows], k) - expected).abs().max() < 1e-5
            assert (batched[rows] - expected).abs().max() < 1e-5
    with pytest.raises(ValueError, match=r"part_index must lie in \[0, 3\)"):
        backbone.forward_local(crops, 3)


def test_save_and_reload_with_auto_classes(model, tmp_path):
    folder = pass_hub.save_hub_folder(model, tmp_path / "folder")
    config = AutoConfig.from_pretrained(folder)
    assert isinstance(config, pass_hub.PassViTConfig) and config.architectures == ["PassViTModel"]
    reloaded = AutoModel.from_pretrained(folder).eval()
    processor = AutoImageProcessor.from_pretrained(folder)
    assert isinstance(processor, pass_hub.PassViTImageProcessor)
    assert processor.size.height == 256 and processor.size.width == 128
    pixels = torch.randn(2, 3, 256, 128)
    with torch.no_grad():
        assert torch.equal(reloaded(pixels).pooler_output, model(pixels).pooler_output)
    with pytest.raises(FileExistsError, match="already exists"):
        pass_hub.save_hub_folder(model, folder)


def test_reid_folder_loads_as_backbone_without_warnings(tiny_config, tmp_path, caplog):
    tiny_config.num_labels = 3
    reid = pass_hub.PassViTForReID(tiny_config).eval()
    folder = pass_hub.save_hub_folder(reid, tmp_path / "reid")
    backbone = AutoModel.from_pretrained(folder).eval()
    assert "UNEXPECTED" not in caplog.text
    pixels = torch.randn(2, 3, 256, 128)
    with torch.no_grad():
        assert torch.equal(backbone(pixels).pooler_output, reid(pixels).features_before_neck)
    assert set(extract_weights(reid.state_dict()).reid_head) >= {"classifier.weight", "part_necks.2.running_var"}


def test_image_processor_and_pipeline(model, tmp_path):
    folder = pass_hub.save_hub_folder(model, tmp_path / "folder")
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in ((300, 120), (90, 40))]
    processor = AutoImageProcessor.from_pretrained(folder)
    pixels = processor(images, return_tensors="pt")["pixel_values"]
    assert pixels.shape == (2, 3, 256, 128)
    manual = torch.from_numpy(np.asarray(images[1].resize((128, 256), Image.BILINEAR), dtype=np.float32) / 255)
    mean, std = torch.tensor(model.config.image_mean), torch.tensor(model.config.image_std)
    assert (pixels[1].permute(1, 2, 0) - (manual - mean) / std).abs().mean() < 0.05
    extractor = pipeline("image-feature-extraction", model=str(folder), pool=True)
    features = extractor(images, return_tensors=True)
    with torch.no_grad():
        expected = model(pixels).pooler_output
    got = torch.cat([f.reshape(1, -1) for f in features])
    assert got.shape == (2, 128) and (got - expected).abs().max() < 1e-5
    assert torch.allclose(pool_parts(model(pixels).last_hidden_state), expected)


def test_processor_follows_the_config(tiny_config):
    tiny_config.image_size, tiny_config.image_mean, tiny_config.image_std = (384, 128), (0.5,) * 3, (0.5,) * 3
    processor = pass_hub.image_processor_for(tiny_config)
    assert processor.size.height == 384 and list(processor.image_mean) == [0.5, 0.5, 0.5]
    pixels = processor(Image.new("RGB", (50, 100), (255, 255, 255)), return_tensors="pt")["pixel_values"]
    assert pixels.shape == (1, 3, 384, 128) and torch.allclose(pixels, torch.ones_like(pixels))


def test_auto_backbone_feature_maps(model, tmp_path):
    folder = pass_hub.save_hub_folder(model, tmp_path / "folder")
    # AutoBackbone.from_pretrained asks the hub whether a repo exists even for local folders (transformers
    # 5.24), so a folder loads through the class; the Auto mapping itself is checked with from_config.
    assert isinstance(AutoBackbone.from_config(AutoConfig.from_pretrained(folder)), pass_hub.PassViTBackbone)
    backbone = pass_hub.PassViTBackbone.from_pretrained(folder, out_indices=[1, 2]).eval()
    assert backbone.out_features == ["stage1", "stage2"]
    pixels = torch.randn(2, 3, 384, 128)
    with torch.no_grad():
        maps = backbone(pixels).feature_maps
        tokens = model(pixels, output_hidden_states=True)
    assert [tuple(m.shape) for m in maps] == [(2, 64, 24, 8)] * 2
    patches = tokens.last_hidden_state[:, 4:].reshape(2, 24, 8, 64).permute(0, 3, 1, 2)
    assert torch.allclose(maps[-1], patches, atol=1e-6)
    first = model.vit.norm(tokens.hidden_states[1])[:, 4:].reshape(2, 24, 8, 64).permute(0, 3, 1, 2)
    assert torch.allclose(maps[0], first, atol=1e-6)


def test_reid_model_without_identities_has_no_classifier():
    config = pass_hub.PassViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_labels=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns when a zero-output Linear is initialised
        model = pass_hub.PassViTForReID(config).eval()
    assert model.classifier is None and not any(k.startswith("classifier") for k in model.state_dict())
    out = model(torch.randn(2, 3, 256, 128))
    assert out.logits is None and out.embeddings.shape == (2, 64)
    with pytest.raises(ValueError, match="no identity classifier"):
        model(torch.randn(2, 3, 256, 128), labels=torch.tensor([0, 1]))
