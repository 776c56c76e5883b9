"""pass_vit_* / PassViT* behave like the models timm and transformers ship: TorchScript, gradient checkpointing
through transformers' layers, attention implementations switchable after construction, timm's pretrained path
with a local file of every original layout, and clear messages where weights or extras are missing."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from reference_pass import ReferencePassViT, ReferenceReID, pretraining_checkpoint, reid_embedding
from transformers import AutoModel
from transformers.modeling_layers import GradientCheckpointingLayer

import pass_hub
from pass_hub import export
from pass_hub.cli import main as cli_main

TINY = dict(embed_dim=64, depth=2, num_heads=2)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
@pytest.mark.parametrize("name", ["pass_vit_tiny", "pass_vit_small", "pass_vit_base"])
def test_every_preset_scripts(name):
    model = timm.create_model(name).eval()
    scripted = torch.jit.script(model)
    pixels = torch.randn(1, 3, 256, 128)
    with torch.no_grad():
        assert torch.equal(scripted(pixels), model(pixels))


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_a_dynamic_size_mean_pooled_model_scripts():
    model = timm.create_model("pass_vit_tiny", dynamic_img_size=True, global_pool="pass_mean", **TINY).eval()
    scripted = torch.jit.script(model)
    with torch.no_grad():
        for size in ((256, 128), (384, 128)):
            pixels = torch.randn(2, 3, *size)
            assert torch.equal(scripted(pixels), model(pixels)) and scripted(pixels).shape == (2, 64)


def test_num_features_is_the_token_width_and_the_pooled_width_is_head_hidden_size():
    model = timm.create_model("pass_vit_tiny", num_classes=0, **TINY).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 256, 128))
    assert (model.num_features, model.head_hidden_size, out.shape[-1]) == (64, 128, 128)
    assert "head_hidden_size" in pass_hub.timm_models.__doc__ and "num_features" in pass_hub.timm_models.__doc__


def _attention_calls(model: torch.nn.Module) -> list[int]:
    """Counts of attention forwards per block: 2 for a checkpointed block after a backward (the recompute)."""
    counts = [0] * len(model.vit.blocks)
    for index, block in enumerate(model.vit.blocks):
        block.attn.register_forward_hook(lambda *_, index=index: counts.__setitem__(index, counts[index] + 1))
    return counts


def _gradients(model, pixels, **kwargs) -> list[torch.Tensor]:
    model.zero_grad()
    model(pixels, **kwargs).pooler_output.square().sum().backward()
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.filterwarnings("ignore:.*is deprecated:FutureWarning")  # transformers 5 renames the API, keeps it
def test_gradient_checkpointing_goes_through_transformers_layers():
    config = pass_hub.PassViTConfig(hidden_size=64, num_hidden_layers=4, num_attention_heads=2)
    model = pass_hub.PassViTModel(config).train()
    assert all(isinstance(block, GradientCheckpointingLayer) for block in model.vit.blocks)
    pixels = torch.randn(2, 3, 256, 128)
    counts = _attention_calls(model)
    expected = _gradients(model, pixels)
    assert counts == [1, 1, 1, 1]
    for options in ({"use_reentrant": True}, {"use_reentrant": False}):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options)
        assert model.is_gradient_checkpointing
        for kwargs in ({}, {"output_hidden_states": True}):
            counts[:] = [0] * 4
            got = _gradients(model, pixels, **kwargs)
            assert counts == [2, 2, 2, 2], (options, kwargs)
            for grad, reference in zip(got, expected, strict=True):
                torch.testing.assert_close(grad, reference, atol=1e-6, rtol=1e-5)
    model.activation_checkpointing_enable(every_n_layers=2)
    counts[:] = [0] * 4
    _gradients(model, pixels)
    assert counts == [2, 1, 2, 1]
    model.gradient_checkpointing_disable()
    counts[:] = [0] * 4
    _gradients(model, pixels)
    assert counts == [1, 1, 1, 1] and not model.is_gradient_checkpointing
    # timm's own switch still works on the same backbone, and on the timm entries.
    model.vit.set_grad_checkpointing(True)
    counts[:] = [0] * 4
    for grad, reference in zip(_gradients(model, pixels), expected, strict=True):
        torch.testing.assert_close(grad, reference, atol=1e-6, rtol=1e-5)
    assert counts == [2, 2, 2, 2]


def test_attention_implementations_at_load_and_after_construction(tmp_path, monkeypatch):
    config = pass_hub.PassViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2)
    model = pass_hub.PassViTModel(config).eval()
    model.save_pretrained(tmp_path)
    pixels = torch.randn(2, 3, 256, 128)
    with torch.no_grad():
        sdpa = model(pixels).pooler_output
        eager_loaded = AutoModel.from_pretrained(tmp_path, attn_implementation="eager").eval()
        model.set_attn_implementation("eager")
        eager = model(pixels).pooler_output

        def refuse(*args, **kwargs):
            raise AssertionError("the fused kernel ran")

        monkeypatch.setattr(F, "scaled_dot_product_attention", refuse)
        eager_again = eager_loaded(pixels).pooler_output  # the eager path does not touch the fused kernel
        torch.testing.assert_close(eager, sdpa, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(eager_again, eager)
        with pytest.raises(AssertionError, match="fused kernel ran"):
            model.set_attn_implementation("sdpa")
            model(pixels)
        monkeypatch.undo()
        attentions = model(pixels, output_attentions=True).attentions  # maps are always computed unfused
    assert len(attentions) == 2 and attentions[0].shape == (2, 2, 132, 132)


def test_timm_set_fused_attn_is_respected():
    try:
        timm.layers.set_fused_attn(False)
        unfused = timm.create_model("pass_vit_tiny", **TINY).eval()
    finally:
        timm.layers.set_fused_attn(True)
    fused = timm.create_model("pass_vit_tiny", **TINY).eval()
    fused.load_state_dict(unfused.state_dict())
    assert not unfused.blocks[0].attn.fused_attn and fused.blocks[0].attn.fused_attn
    pixels = torch.randn(1, 3, 256, 128)
    with torch.no_grad():
        torch.testing.assert_close(unfused(pixels), fused(pixels), atol=1e-5, rtol=1e-5)


def test_pretrained_without_weights_says_where_they_are():
    assert timm.list_pretrained("pass_*") == []  # timm lists weights that load; none is hosted yet
    for name in ("pass_vit_small", "pass_vit_small.lup_pass"):
        with pytest.raises(RuntimeError) as refused:
            timm.create_model(name, pretrained=True)
    message = str(refused.value)
    assert "no published pass-hub weights" in message and "github.com/CASIA-IVA-Lab/PASS-reID" in message
    assert "pretrained_cfg_overlay=dict(file='pass_vit_small_full.pth')" in message and "pass-hub convert" in message


def _layouts(tmp_path: Path, reference: ReferencePassViT) -> dict[str, Path]:
    """The same backbone in every layout a user may hold."""
    torch.manual_seed(3)
    reid = ReferenceReID(copy.deepcopy(reference), num_ids=5)  # it adds the unused base.fc to its backbone
    student = ReferencePassViT(dim=64, depth=2, heads=2)
    files = {
        "original backbone": (reference.state_dict(), "pass_vit_small_full.pth"),
        "original pre-training checkpoint": (pretraining_checkpoint(teacher=reference, student=student),
                                             "checkpoint.pth"),
        "original fine-tuned model": ({"state_dict": reid.state_dict()}, "transformer_120.pth"),
    }
    paths = {}
    for layout, (state, name) in files.items():
        paths[layout] = tmp_path / name
        torch.save(state, paths[layout])
    folder = pass_hub.convert_checkpoint(paths["original backbone"], tmp_path / "converted")
    paths["pass-hub model.safetensors"] = folder / "model.safetensors"
    timm_model = timm.create_model(f"local-dir:{folder}", pretrained=True)
    paths["timm state dict"] = tmp_path / "timm.pth"
    torch.save(timm_model.state_dict(), paths["timm state dict"])
    return paths


def test_timm_local_file_path_loads_every_original_layout(tmp_path):
    torch.manual_seed(2)
    reference = ReferencePassViT(dim=64, depth=2, heads=2).eval()
    pixels = torch.randn(2, 3, 256, 128)
    with torch.no_grad():
        expected = reid_embedding(reference(pixels))
    for layout, path in _layouts(tmp_path, reference).items():
        model = timm.create_model("pass_vit_tiny", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                                  **TINY).eval()
        with torch.no_grad():
            torch.testing.assert_close(model(pixels), expected, atol=1e-5, rtol=1e-5, msg=layout)
    wrong = tmp_path / "wrong.pth"
    torch.save({"cls_token": torch.zeros(1, 1, 64)}, wrong)
    with pytest.raises(ValueError, match="unrecognised checkpoint layout"):
        timm.create_model("pass_vit_tiny", pretrained=True, pretrained_cfg_overlay=dict(file=str(wrong)), **TINY)


def test_export_without_the_onnx_extra_names_it(tmp_path, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else real(name, *a))
    config = pass_hub.PassViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=1)
    extra = r"needs onnxscript, from pass-hub's onnx extra: pip install 'pass-hub\[onnx\]'"
    with pytest.raises(ImportError, match=extra):
        export.export_onnx(pass_hub.PassViTModel(config), tmp_path / "m.onnx")
    folder = pass_hub.save_hub_folder(pass_hub.PassViTModel(config), tmp_path / "model")
    assert cli_main(["export-onnx", str(folder), str(tmp_path / "m.onnx")]) == 2
    error = capsys.readouterr().err
    assert "pip install 'pass-hub[onnx]'" in error and "Traceback" not in error
