"""ONNX export: parity with PyTorch in onnxruntime (fixed and dynamic size), metadata, input checks, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from PIL import Image

import pass_hub
from pass_hub.cli import main
from pass_hub.deployment.embedder import load_reid_model
from pass_hub.deployment.export import DEFAULT_OPSET, PARITY_TOLERANCE, OnnxReIDModel, check_onnx_parity, export_onnx

TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2)


def run_onnxruntime(path: Path, pixels: torch.Tensor) -> np.ndarray:
    """The exported graph run directly, without the checking wrapper."""
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"pixel_values": pixels.numpy()})[0]


@pytest.fixture(scope="module")
def model() -> pass_hub.ReIDEmbedder:
    torch.manual_seed(0)
    return load_reid_model(pass_hub.PassViTModel(pass_hub.PassViTConfig(**TINY)))


@pytest.fixture(scope="module")
def fixed(model, tmp_path_factory) -> Path:
    return export_onnx(model, tmp_path_factory.mktemp("onnx") / "fixed.onnx").path


@pytest.fixture(scope="module")
def dynamic(model, tmp_path_factory) -> Path:
    return export_onnx(model, tmp_path_factory.mktemp("onnx") / "dynamic.onnx", dynamic_size=True).path


def test_fixed_size_export_matches_pytorch_for_any_batch(model, fixed):
    for batch in (1, 5):
        pixels = torch.randn(batch, 3, 256, 128)
        with torch.no_grad():
            expected = model(pixels).numpy()
        assert np.abs(run_onnxruntime(fixed, pixels) - expected).max() <= PARITY_TOLERANCE
    assert np.allclose(np.linalg.norm(run_onnxruntime(fixed, torch.randn(2, 3, 256, 128)), axis=1), 1, atol=1e-5)

    graph_input = onnx.load(fixed).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in graph_input] == ["batch", 3, 256, 128]


def test_metadata_documents_the_preprocessing(model, fixed):
    metadata = {prop.key: prop.value for prop in onnx.load(fixed).metadata_props}
    assert metadata["image_size"] == "256x128" and metadata["dynamic_size"] == "false"
    assert json.loads(metadata["image_mean"]) == [0.485, 0.456, 0.406]
    assert json.loads(metadata["image_std"]) == [0.229, 0.224, 0.225]
    assert metadata["interpolation"] == "bilinear" and metadata["patch_size"] == "16"
    assert metadata["embedding_dim"] == "128" and metadata["normalized"] == "true"
    assert metadata["model"] == "PassViTModel" and "cat(CLS, mean(PART" in metadata["embedding"]
    assert metadata["model_fingerprint"] == model.fingerprint()
    assert {prop.domain: prop.version for prop in onnx.load(fixed).opset_import}[""] == DEFAULT_OPSET == 23


def test_dynamic_size_export_resamples_the_position_table_in_the_graph(model, dynamic):
    assert "Resize" in {node.op_type for node in onnx.load(dynamic).graph.node}
    for size in ((256, 128), (384, 128), (224, 224)):
        pixels = torch.randn(2, 3, *size)
        with torch.no_grad():
            expected = model(pixels).numpy()
        assert np.abs(run_onnxruntime(dynamic, pixels) - expected).max() <= PARITY_TOLERANCE, size
    parity = check_onnx_parity(dynamic, model)
    assert sorted(parity) == [(256, 128), (384, 128)] and max(parity.values()) <= PARITY_TOLERANCE


def test_raw_export_of_a_reid_model_keeps_its_configured_feature(tmp_path):
    config = pass_hub.PassViTConfig(**TINY, num_labels=3, reid_feature="after_neck")
    reid = pass_hub.PassViTForReID(config).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so the necks matter
        for neck in (reid.cls_neck, *reid.part_necks):
            neck.running_mean.uniform_(-1, 1)
            neck.running_var.uniform_(0.5, 2)
    result = export_onnx(reid, tmp_path / "raw.onnx", normalize=False, image_size=(384, 128))
    assert max(result.max_abs_diff.values()) <= PARITY_TOLERANCE
    pixels = torch.randn(2, 3, 384, 128)
    with torch.no_grad():
        expected = reid(pixels).features_after_neck.numpy()
    assert np.abs(run_onnxruntime(result.path, pixels) - expected).max() <= PARITY_TOLERANCE
    runner = OnnxReIDModel(result.path)
    assert not runner.normalize and runner.preprocessing.image_size == (384, 128)
    assert runner.metadata["embedding"].startswith("cat(BN(CLS)")


def test_wrong_input_gets_a_clear_message(fixed, dynamic):
    runner = OnnxReIDModel(fixed)
    assert runner(np.zeros((3, 3, 256, 128), np.float32)).shape == (3, 128)
    expected = r"fixed\.onnx takes pixel_values of shape \(batch, 3, 256, 128\) .*--dynamic-size.*got \(1, 3, 384, 128"
    with pytest.raises(ValueError, match=expected):
        runner(np.zeros((1, 3, 384, 128), np.float32))
    with pytest.raises(ValueError, match=r"got \(256, 128, 3\)"):
        runner(np.zeros((256, 128, 3), np.float32))
    flexible = OnnxReIDModel(dynamic)
    assert flexible(torch.zeros(1, 3, 384, 128)).shape == (1, 128)
    expected = r"height and width multiples of 16 \(trained at 256x128\); got \(1, 3, 250, 128\)"
    with pytest.raises(ValueError, match=expected):
        flexible(np.zeros((1, 3, 250, 128), np.float32))


def test_onnx_model_embeds_images_like_pytorch(tmp_path, model, fixed):
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (150, 60, 3), np.uint8)) for _ in range(3)]
    with_onnx = pass_hub.embed(images, model=str(fixed), batch_size=2)
    with_torch = pass_hub.embed(images, model=model)
    assert (with_onnx - with_torch).abs().max() <= PARITY_TOLERANCE


def test_foreign_onnx_file_and_bad_sizes_are_refused(tmp_path, model):
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])],
        "plain",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    onnx.save(onnx.helper.make_model(graph), tmp_path / "plain.onnx")
    with pytest.raises(ValueError, match="no pass-hub metadata"):
        OnnxReIDModel(tmp_path / "plain.onnx")
    with pytest.raises(ValueError, match="multiples of 16"):
        export_onnx(model, tmp_path / "odd.onnx", image_size=(250, 128))
    with pytest.raises(ValueError, match=r"must end with \.onnx"):
        export_onnx(model, tmp_path / "model.pt")


def test_cli_export_onnx(tmp_path, tiny_config, capsys):
    folder = pass_hub.save_hub_folder(pass_hub.PassViTModel(tiny_config), tmp_path / "tiny")
    out = tmp_path / "model.onnx"
    assert main(["export-onnx", str(folder), str(out), "--dynamic-size", "--raw"]) == 0
    printed = capsys.readouterr().out
    assert "(batch, 3, H, W) with H, W multiples of 16 -> embeddings (batch, 128), not normalised" in printed
    assert "onnxruntime vs PyTorch at 384x128: max abs diff" in printed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "tiny"]  # no external data, no leftovers
    assert main(["export-onnx", str(folder), str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["export-onnx", str(out), str(tmp_path / "again.onnx")]) == 2
    assert "is an ONNX file" in capsys.readouterr().err
