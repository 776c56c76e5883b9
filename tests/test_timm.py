"""The timm entries behave like any timm ViT, and one hub folder serves timm and transformers (also offline hub ids)."""

from __future__ import annotations

import pytest
import timm
import torch
from conftest import populate_hub_cache
from timm.data import resolve_data_config
from transformers import AutoModel

import pass_hub
from pass_hub.models.backbone import pool_parts

TINY = dict(embed_dim=64, depth=2, num_heads=2)


def test_registry_and_presets():
    assert timm.list_models("pass_vit*") == ["pass_vit_base", "pass_vit_small", "pass_vit_tiny"]
    assert timm.get_pretrained_cfg("pass_vit_small.lup_pass").input_size == (3, 256, 128)  # the paper's weights' tag
    with torch.device("meta"):
        models = {name: timm.create_model(name) for name in timm.list_models("pass_vit*")}
    counts = {name: sum(p.numel() for p in model.parameters()) for name, model in models.items()}
    assert counts["pass_vit_small"] == 21_641_856 and counts["pass_vit_base"] == 85_751_040
    config = resolve_data_config({}, model=timm.create_model("pass_vit_tiny", **TINY))
    assert config["input_size"] == (3, 256, 128) and config["interpolation"] == "bilinear"
    assert config["crop_pct"] == 1.0 and config["mean"] == timm.data.IMAGENET_DEFAULT_MEAN


def test_features_head_and_classifier():
    model = timm.create_model("pass_vit_tiny", **TINY).eval()
    pixels = torch.randn(2, 3, 256, 128)
    with torch.no_grad():
        tokens = model.forward_features(pixels)
        assert tokens.shape == (2, 132, 64)
        embedding = model.forward_head(tokens, pre_logits=True)
        assert torch.equal(embedding, pool_parts(tokens)) and torch.equal(model(pixels), embedding)
        assert model.head_hidden_size == 128 and model.num_features == 64
        model.reset_classifier(10)
        assert model(pixels).shape == (2, 10) and model.get_classifier().in_features == 128
        model.reset_classifier(5, "avg")
        assert model(pixels).shape == (2, 5) and model.get_classifier().in_features == 64
        model.reset_classifier(0, "pass")
        assert model(pixels).shape == (2, 128)


def test_num_classes_and_dynamic_size():
    model = timm.create_model("pass_vit_tiny", num_classes=7, dynamic_img_size=True, **TINY).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 384, 128)).shape == (1, 7)
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 7)
    fixed = timm.create_model("pass_vit_tiny", **TINY)
    with pytest.raises(AssertionError):
        fixed(torch.randn(1, 3, 384, 128))


def test_intermediates_features_only_and_grad_checkpointing():
    model = timm.create_model("pass_vit_tiny", **TINY).eval()
    pixels = torch.randn(2, 3, 256, 128)
    with torch.no_grad():
        final, intermediates = model.forward_intermediates(pixels, indices=2)
        assert torch.allclose(final, model.forward_features(pixels), atol=1e-6)
        assert [t.shape for t in intermediates] == [(2, 64, 16, 8)] * 2
        prefix = model.forward_intermediates(pixels, indices=1, return_prefix_tokens=True, intermediates_only=True)
        assert prefix[0][1].shape == (2, 4, 64)  # CLS + 3 PART tokens
    features = timm.create_model("pass_vit_tiny", features_only=True, out_indices=(0, 1), **TINY)
    assert [f.shape for f in features(pixels)] == [(2, 64, 16, 8)] * 2
    model.train()
    model.set_grad_checkpointing()
    model(pixels).sum().backward()
    assert model.cls_token.grad is not None and model.reg_token.grad.abs().sum() > 0


def _saved_reid_folder(tmp_path):
    config = pass_hub.PassViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, num_labels=4)
    config.image_mean, config.image_std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    model = pass_hub.PassViTForReID(config).eval()
    return pass_hub.save_hub_folder(model, tmp_path / "pass-vit-test"), model


def test_one_folder_serves_both_libraries(tmp_path):
    folder, reid = _saved_reid_folder(tmp_path)
    pixels = torch.randn(3, 3, 256, 128)
    timm_model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    hf_model = AutoModel.from_pretrained(folder).eval()
    with torch.no_grad():
        timm_embedding = timm_model(pixels)
        assert torch.allclose(timm_embedding, hf_model(pixels).pooler_output, atol=1e-6)
        assert torch.allclose(timm_embedding, reid(pixels).features_before_neck, atol=1e-6)
    data_config = resolve_data_config({}, model=timm_model)
    assert tuple(data_config["mean"]) == (0.5, 0.5, 0.5) and tuple(data_config["input_size"]) == (3, 256, 128)


def test_hub_ids_load_offline_from_a_populated_cache(tmp_path):
    folder, reid = _saved_reid_folder(tmp_path)
    cache = tmp_path / "cache"
    populate_hub_cache(folder, "someone/pass-vit-test", cache)
    pixels = torch.randn(2, 3, 256, 128)
    timm_model = timm.create_model("hf-hub:someone/pass-vit-test", pretrained=True, cache_dir=cache).eval()
    hf_model = AutoModel.from_pretrained("someone/pass-vit-test", cache_dir=cache).eval()
    with torch.no_grad():
        expected = reid(pixels).features_before_neck
        assert torch.allclose(timm_model(pixels), expected, atol=1e-6)
        assert torch.allclose(hf_model(pixels).pooler_output, expected, atol=1e-6)


def test_a_preset_takes_a_hub_id_as_an_overlay(tmp_path):
    config = pass_hub.PassViTConfig.from_preset("small")
    model = pass_hub.PassViTModel(config).eval()
    folder = pass_hub.save_hub_folder(model, tmp_path / "pass-vit-s16")
    cache = tmp_path / "cache"
    populate_hub_cache(folder, "someone/pass-vit-s16", cache)
    timm_model = timm.create_model("pass_vit_small", pretrained=True, cache_dir=cache,
                                   pretrained_cfg_overlay=dict(hf_hub_id="someone/pass-vit-s16")).eval()
    pixels = torch.randn(1, 3, 256, 128)
    with torch.no_grad():
        assert torch.allclose(timm_model(pixels), model(pixels).pooler_output, atol=1e-5)


def test_filter_fn_resamples_to_another_training_size(tmp_path):
    folder, _ = _saved_reid_folder(tmp_path)
    model = timm.create_model(f"local-dir:{folder}", pretrained=True, img_size=(384, 128)).eval()
    assert model.pos_embed.shape == (1, 4 + 24 * 8, 64)
    hf = AutoModel.from_pretrained(folder).eval()
    pixels = torch.randn(1, 3, 384, 128)
    with torch.no_grad():
        assert torch.allclose(model(pixels), hf(pixels).pooler_output, atol=1e-5)
