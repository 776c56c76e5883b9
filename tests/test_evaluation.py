"""Model evaluation: feature extraction, evaluate_model, rank-list pictures and `pass-hub eval`."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

import pass_hub
from pass_hub.cli import main as cli_main
from pass_hub.data import SynthPersonConfig, generate_synthperson
from pass_hub.evaluation.metrics import evaluate_reid
from pass_hub.evaluation.protocol import evaluate_model, extract_features, pixel_transform, save_rank_lists

SPEC = "synthetic:train_ids=2,test_ids=4,distractors=3,unlabelled=0,image_size=64x32"


@pytest.fixture(scope="module")
def data():
    config = SynthPersonConfig(train_ids=2, test_ids=4, distractors=3, unlabelled=0, image_size=(64, 32))
    return generate_synthperson(config, progress=False)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = pass_hub.PassViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=1, image_size=(64, 32))
    return pass_hub.PassViTModel(config).train()  # evaluation must not leave it in eval mode


def test_features_are_the_model_embeddings_in_order(data, model):
    embedder = pass_hub.load_reid_model(model)
    transform = pixel_transform((64, 32), model.config.image_mean, model.config.image_std)
    features = extract_features(embedder, data["query"], transform, batch_size=3, progress=False)
    assert features.features.shape == (len(data["query"]), 64)
    assert features.pids.tolist() == data["query"]["pid"] and features.camids.tolist() == data["query"]["camid"]
    with torch.no_grad():
        pixels = torch.stack([transform(image) for image in data["query"]["image"]])
        expected = torch.nn.functional.normalize(model.eval()(pixels).pooler_output, dim=1)
    model.train()
    assert torch.allclose(features.features, expected, atol=1e-5)
    flipped = extract_features(embedder, data["query"], transform, flip=True, progress=False)
    assert not torch.allclose(flipped.features, features.features)


def test_evaluate_model_scores_the_extracted_features(data, model):
    results = evaluate_model(model, data["query"], data["gallery"], batch_size=5, progress=False,
                             return_per_query=True)
    assert model.training
    embedder = pass_hub.load_reid_model(model)
    transform = pixel_transform((64, 32), model.config.image_mean, model.config.image_std)
    query = extract_features(embedder, data["query"], transform, progress=False)
    gallery = extract_features(embedder, data["gallery"], transform, progress=False)
    model.train()
    expected = evaluate_reid(query.features, gallery.features, query.pids, gallery.pids, query.camids, gallery.camids)
    assert results["mAP"] == pytest.approx(expected["mAP"]) and results["rank1"] == pytest.approx(expected["rank1"])
    assert results["num_query"] == len(data["query"]) and results["num_gallery"] == len(data["gallery"])


def test_rank_list_picture(data, model, tmp_path):
    results = evaluate_model(model, data["query"], data["gallery"], progress=False, return_per_query=True)
    path = save_rank_lists(results, data["query"], data["gallery"], tmp_path / "ranks.png", num_random=1)
    picture = Image.open(path)
    assert picture.width > 10 * 64 and picture.height > 4 * 128
    with pytest.raises(ValueError, match="return_per_query=True"):
        save_rank_lists({"mAP": 0.5}, data["query"], data["gallery"], tmp_path / "x.png")


def test_eval_command(model, tmp_path, capsys):
    folder = pass_hub.save_hub_folder(model, tmp_path / "model")
    output, picture = tmp_path / "results.json", tmp_path / "ranks.png"
    code = cli_main(["eval", "--model", str(folder), "--data", SPEC, "--num-workers", "0", "--output", str(output),
                     "--rank-lists", str(picture), "--flip"])
    printed = capsys.readouterr().out
    assert code == 0 and "| mAP | mINP | Rank-1 | Rank-5 | Rank-10 |" in printed and "flip averaging" in printed
    results = json.loads(output.read_text())
    assert 0 <= results["mAP"] <= 1 and len(results["cmc"]) == 50 and results["flip"] is True
    assert picture.stat().st_size > 1000
    assert cli_main(["eval", "--model", str(folder), "--data", SPEC, "--query-split", "probe"]) == 2
    assert "no split(s) ['probe']" in capsys.readouterr().err


def test_eval_checks_the_model_before_loading_the_data(monkeypatch, capsys):
    import pass_hub.data

    def no_data(spec):
        raise AssertionError("the data was loaded before the model was checked")

    monkeypatch.setattr(pass_hub.data, "load_dataset_spec", no_data)
    assert cli_main(["eval", "--model", "missing/path"]) == 2
    error = capsys.readouterr().err.strip()
    assert error == ("pass-hub eval: error: model missing/path: no such folder or file, and as a hub id not in the "
                     "local hub cache (offline)")
    assert cli_main(["eval", "--model", "./missing"]) == 2
    assert "model ./missing: no such folder or file" in capsys.readouterr().err
