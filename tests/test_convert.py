"""Original PASS checkpoints -> pass-hub folders: exact outputs in transformers and timm, safe loading, clear errors."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from reference_pass import ReferencePassViT, ReferenceReID, pretraining_checkpoint
from transformers import AutoConfig, AutoImageProcessor, AutoModel

import pass_hub
from pass_hub.cli import main as cli_main
from pass_hub.models.convert import extract_weights, infer_backbone_args, load_checkpoint_file

TOL = 1e-5


@pytest.fixture(scope="module")
def reference() -> ReferencePassViT:
    torch.manual_seed(1)
    return ReferencePassViT(dim=128, depth=2, heads=2).eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(3, 3, 256, 128, generator=torch.Generator().manual_seed(2))


def _save(obj: object, path: Path) -> Path:
    torch.save(obj, path)
    return path


def _assert_backbone_matches(folder: Path, reference: ReferencePassViT, images: torch.Tensor) -> None:
    expected = reference(images)
    model = AutoModel.from_pretrained(folder).eval()
    assert isinstance(model, pass_hub.PassViTModel)
    with torch.no_grad():
        out = model(images)
        timm_model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
        timm_tokens = timm_model.forward_features(images)
        timm_embedding = timm_model(images)
    assert (out.last_hidden_state - expected).abs().max() <= TOL
    assert (timm_tokens - expected).abs().max() <= TOL
    reference_embedding = torch.cat([expected[:, 0], expected[:, 1:4].mean(1)], dim=1)
    assert (out.pooler_output - reference_embedding).abs().max() <= TOL
    assert (timm_embedding - reference_embedding).abs().max() <= TOL


@pytest.mark.parametrize("nesting", [None, "model", "state_dict"])
def test_flat_backbone_converts_exactly(tmp_path, reference, images, nesting):
    state = reference.state_dict()
    src = _save(state if nesting is None else {nesting: state}, tmp_path / "pass_vit_small_full.pth")
    folder = pass_hub.convert_checkpoint(src, tmp_path / "out")
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
    ]
    _assert_backbone_matches(folder, reference, images)
    config = AutoConfig.from_pretrained(folder)
    assert config.image_mean == pass_hub.configuration_pass_vit.IMAGENET_MEAN
    assert tuple(AutoImageProcessor.from_pretrained(folder).image_mean) == config.image_mean


def test_pretraining_checkpoint_keeps_the_teacher(tmp_path, reference, images):
    student = ReferencePassViT(dim=128, depth=2, heads=2)
    src = _save(pretraining_checkpoint(teacher=reference, student=student), tmp_path / "checkpoint.pth")
    weights = extract_weights(load_checkpoint_file(src))
    assert weights.source_format == "pretraining" and weights.metadata == {"epoch": 100}
    folder = pass_hub.convert_checkpoint(src, tmp_path / "out")
    _assert_backbone_matches(folder, reference, images)


def test_ddp_prefixed_backbone(tmp_path, reference, images):
    src = _save({f"module.{k}": v for k, v in reference.state_dict().items()}, tmp_path / "ddp.pth")
    _assert_backbone_matches(pass_hub.convert_checkpoint(src, tmp_path / "out"), reference, images)


def test_finetuned_reid_model_converts_exactly(tmp_path, reference, images):
    reid = ReferenceReID(reference, num_ids=7).eval()
    src = _save(reid.state_dict(), tmp_path / "transformer_120.pth")
    folder = pass_hub.convert_checkpoint(src, tmp_path / "out")

    model = pass_hub.PassViTForReID.from_pretrained(folder).eval()
    assert model.config.num_labels == 7 and model.config.image_mean == (0.5, 0.5, 0.5)
    processor = AutoImageProcessor.from_pretrained(folder)
    assert list(processor.image_mean) == [0.5] * 3 and list(processor.image_std) == [0.5] * 3
    with torch.no_grad():
        before, after, logits = reid(images)
        out = model(images)
        backbone = AutoModel.from_pretrained(folder).eval()
        backbone_embedding = backbone(images).pooler_output
    assert (out.features_before_neck - before).abs().max() <= TOL
    assert (out.features_after_neck - after).abs().max() <= TOL
    assert (out.logits - logits).abs().max() <= TOL
    assert (out.embeddings - torch.nn.functional.normalize(before, dim=1)).abs().max() <= TOL
    assert (backbone_embedding - before).abs().max() <= TOL
    for neck in (model.cls_neck, *model.part_necks):
        assert "bias" not in dict(neck.named_parameters()) and neck.bias.abs().max() == 0


def test_other_input_size_matches_original_bilinear_resize(tmp_path, reference):
    images = torch.randn(2, 3, 384, 128)
    folder = pass_hub.convert_checkpoint(_save(reference.state_dict(), tmp_path / "b.pth"), tmp_path / "out")
    model = AutoModel.from_pretrained(folder).eval()
    with torch.no_grad():
        assert (model(images).last_hidden_state - reference(images)).abs().max() <= TOL
        timm_model = timm.create_model(f"local-dir:{folder}", pretrained=True, img_size=(384, 128)).eval()
        assert timm_model.pos_embed.shape[1] == 4 + 24 * 8
        assert (timm_model.forward_features(images) - reference(images)).abs().max() <= TOL


def test_architecture_is_inferred_from_shapes(reference):
    weights = extract_weights(reference.state_dict())
    args = infer_backbone_args(weights.backbone)
    assert args["embed_dim"] == 128 and args["depth"] == 2 and args["num_heads"] == 2
    assert args["img_size"] == [256, 128] and args["num_parts"] == 3 and args["mlp_ratio"] == 4.0
    assert infer_backbone_args(weights.backbone, num_heads=4)["num_heads"] == 4
    with pytest.raises(ValueError, match="expects embed_dim=384"):
        infer_backbone_args(weights.backbone, arch="pass_vit_small")


def test_original_vit_small_layout_has_the_published_parameter_count(tmp_path):
    reference = ReferencePassViT(dim=384, depth=12, heads=6)
    assert sum(p.numel() for p in reference.parameters()) == 21_641_856
    folder = pass_hub.convert_checkpoint(_save(reference.state_dict(), tmp_path / "s.pth"), tmp_path / "out")
    config = AutoConfig.from_pretrained(folder)
    assert (config.hidden_size, config.num_attention_heads, config.timm_architecture) == (384, 6, "pass_vit_small")


class _Payload:
    """Stands for anything a malicious pickle could smuggle in."""


def test_unsafe_pickle_is_refused(tmp_path, reference):
    src = _save({"model": reference.state_dict(), "extra": _Payload()}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match=r"evil\.pth: refusing to unpickle.*_Payload"):
        load_checkpoint_file(src)


def test_numpy_scalars_of_an_original_checkpoint_load(tmp_path, reference):
    # The original's optimizer holds each step's lr as a numpy float64; files written under numpy 1 name its
    # constructor numpy.core.multiarray.scalar, numpy 2's numpy._core.multiarray.scalar.
    state = {"model": reference.state_dict(), "optimizer": {"param_groups": [{"lr": np.float64(0.002)}]}}
    src = _save(state, tmp_path / "numpy2.pth")
    with zipfile.ZipFile(src) as archive, zipfile.ZipFile(tmp_path / "numpy1.pth", "w") as renamed:
        for item in archive.infolist():
            data = archive.read(item.filename)
            if item.filename.endswith("data.pkl"):
                data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            renamed.writestr(item, data)
    assert "numpy.core.multiarray.scalar" in torch.serialization.get_unsafe_globals_in_checkpoint(
        tmp_path / "numpy1.pth")
    for name in ("numpy2.pth", "numpy1.pth"):
        assert load_checkpoint_file(tmp_path / name)["optimizer"]["param_groups"][0]["lr"] == 0.002


def test_missing_and_misshaped_keys_are_named(tmp_path, reference):
    state = dict(reference.state_dict())
    state["blocks.1.mlp.fc1.weight"] = torch.zeros(3, 3)
    del state["blocks.0.norm1.bias"]
    src = _save(state, tmp_path / "broken.pth")
    with pytest.raises(ValueError) as err:
        pass_hub.convert_checkpoint(src, tmp_path / "out")
    message = str(err.value)
    assert "broken.pth" in message and "blocks.0.norm1.bias" in message and "blocks.1.mlp.fc1.weight" in message
    assert not (tmp_path / "out").exists()

    del state["part_token2"]
    with pytest.raises(ValueError, match=r"missing.*part_token2"):
        extract_weights(state, source="x.pth")


def test_unknown_layout_and_unexpected_keys(tmp_path, reference):
    with pytest.raises(ValueError, match="unrecognised checkpoint layout"):
        extract_weights({"conv1.weight": torch.zeros(1)})
    state = {**reference.state_dict(), "blocks.0.extra.weight": torch.zeros(2)}
    with pytest.raises(ValueError, match=r"unexpected keys \(1\): blocks\.0\.extra\.weight"):
        pass_hub.convert_checkpoint(_save(state, tmp_path / "extra.pth"), tmp_path / "out")


def test_cli_convert_and_errors(tmp_path, reference, capsys):
    src = _save(reference.state_dict(), tmp_path / "b.pth")
    assert cli_main(["convert", str(src), str(tmp_path / "out")]) == 0
    assert "wrote" in capsys.readouterr().out
    assert cli_main(["convert", str(src), str(tmp_path / "out")]) == 2
    assert "already exists" in capsys.readouterr().err
    assert cli_main(["convert", str(src), str(tmp_path / "out"), "--overwrite", "--arch", "pass_vit_tiny"]) == 2
    assert "expects embed_dim=192" in capsys.readouterr().err
    assert cli_main(["convert", str(tmp_path / "nope.pth"), str(tmp_path / "o2")]) == 2
    assert "nope.pth: no such file or folder" in capsys.readouterr().err
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    assert cli_main(["convert", str(tmp_path / "junk.pth"), str(tmp_path / "o3")]) == 2
    assert "junk.pth" in capsys.readouterr().err


def test_converted_folder_round_trips_through_convert(tmp_path, reference, images):
    folder = pass_hub.convert_checkpoint(_save(reference.state_dict(), tmp_path / "b.pth"), tmp_path / "out")
    again = pass_hub.convert_checkpoint(folder, tmp_path / "again")
    _assert_backbone_matches(again, reference, images)
