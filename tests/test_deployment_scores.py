"""Deployment scores: calibration (TPR at FPR against a brute-force reference), thresholded search, the feature
named in every output, the int8 ONNX export."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import pass_hub
from pass_hub.cli import main
from pass_hub.data import SynthPersonConfig, generate_synthperson
from pass_hub.deployment.embedder import load_reid_model
from pass_hub.deployment.export import INT8_MIN_COSINE, OnnxReIDModel, export_onnx
from pass_hub.deployment.gallery import GalleryIndex
from pass_hub.deployment.images import ImageList
from pass_hub.evaluation.calibration import FPR_TARGETS, calibrate, draw_calibration
from pass_hub.evaluation.protocol import evaluate_model, extract_features, preprocessing_transform
from pass_hub.models.model_card import deployment_section

TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2)


def brute_force_points(queries, gallery, q_pids, g_pids, q_cams, g_cams, fprs):
    """Every pair scored in one matrix; for each FPR the lowest threshold that lets at most FPR x negatives
    through, found by trying every negative score."""
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    g = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    scores = np.clip(q.astype(np.float32) @ g.T.astype(np.float32), -1, 1)
    same = q_pids[:, None] == g_pids[None, :]
    positives = scores[same & (q_cams[:, None] != g_cams[None, :])]
    negatives = scores[~same]
    points = []
    for fpr in fprs:
        allowed = math.floor(fpr * len(negatives))
        candidates = sorted(set(negatives.tolist()))
        threshold = next(t for t in candidates if (negatives > t).sum() <= allowed)
        points.append((threshold, (positives > threshold).mean(), (negatives > threshold).sum() / len(negatives)))
    return points, positives, negatives


@pytest.mark.parametrize("seed", range(4))
def test_tpr_at_fpr_matches_brute_force_on_random_cases(seed):
    rng = np.random.default_rng(seed)
    num_ids, dim = int(rng.integers(3, 9)), int(rng.integers(2, 6))
    centres = rng.normal(size=(num_ids, dim))
    q_pids, g_pids = rng.integers(0, num_ids, 25), rng.integers(0, num_ids, 120)
    queries = centres[q_pids] + rng.normal(scale=0.8, size=(25, dim))
    gallery = centres[g_pids] + rng.normal(scale=0.8, size=(120, dim))
    gallery[:5] = gallery[5:10]  # exact ties among the scores
    q_cams, g_cams = rng.integers(0, 3, 25), rng.integers(0, 3, 120)
    fprs = (0.2, 0.05, 0.01, 1e-3)
    expected, positives, negatives = brute_force_points(queries, gallery, q_pids, g_pids, q_cams, g_cams, fprs)
    num_positive, num_negative = len(positives), len(negatives)
    for chunk_size in (None, 1, 7):  # the query blocks must not change anything
        result = calibrate(queries, gallery, q_pids, g_pids, q_cams, g_cams, fprs=fprs, chunk_size=chunk_size)
        assert (result.num_positive, result.num_negative) == (num_positive, num_negative)
        for point, (threshold, tpr, fpr) in zip(result.points, expected, strict=True):
            assert point.threshold == pytest.approx(threshold, abs=1e-6)
            assert point.tpr == pytest.approx(tpr) and point.fpr == pytest.approx(fpr)
            assert point.fpr <= point.target_fpr
            assert point.resolved == (point.target_fpr * num_negative >= 1)
        assert sum(result.positive_counts) == num_positive and sum(result.negative_counts) == num_negative
        # The summary statistics are exact too: all positives, the negatives' mean and top percentile.
        assert result.negative_mean == pytest.approx(negatives.astype(np.float64).mean(), abs=1e-6)
        assert result.negative_quantiles["p99"] == pytest.approx(
            np.sort(negatives)[::-1][math.floor(0.01 * num_negative)], abs=1e-6)
        assert [result.positive_quantiles[k] for k in ("p1", "p50", "p99")] == pytest.approx(
            np.quantile(positives.astype(np.float64), [0.01, 0.5, 0.99]), abs=1e-6)


def test_calibration_separates_well_separated_people_and_refuses_bad_input():
    gallery = torch.eye(8).repeat_interleave(4, dim=0) + 0.01 * torch.randn(32, 8)
    q_pids, g_pids = torch.arange(8), torch.arange(32) // 4
    q_cams, g_cams = torch.zeros(8, dtype=torch.long), torch.ones(32, dtype=torch.long)
    result = calibrate(gallery[::4] + 0.01, gallery, q_pids, g_pids, q_cams, g_cams, feature="after_neck")
    assert [point.target_fpr for point in result.points] == list(FPR_TARGETS)
    assert all(point.tpr == 1.0 for point in result.points)
    assert result.negative_quantiles["p99"] < 0.2 < result.positive_quantiles["p1"]
    table = result.table()
    assert table.splitlines()[2].startswith("| 0.01 | 100.0% |") and "too few negatives" in table
    with pytest.raises(ValueError, match="positive and negative pairs"):  # every pair shares a camera
        calibrate(gallery[::4], gallery, q_pids, g_pids, q_cams, torch.zeros(32, dtype=torch.long))
    with pytest.raises(ValueError, match="fprs must be rates"):
        calibrate(gallery[::4], gallery, q_pids, g_pids, q_cams, g_cams, fprs=(0.0,))
    with pytest.raises(ValueError, match="gallery_pids has 31 items"):
        calibrate(gallery[::4], gallery, q_pids, torch.arange(31), q_cams, g_cams)
    with pytest.raises(TypeError, match="query_camids must hold integers"):
        calibrate(gallery[::4], gallery, q_pids, g_pids, torch.zeros(8), g_cams)


def test_calibration_picture_and_card_section(tmp_path):
    rng = np.random.default_rng(0)
    pids = np.repeat(np.arange(20), 3)
    features = rng.normal(size=(20, 16))[pids] + rng.normal(scale=0.7, size=(60, 16))
    cameras = np.repeat([0, 1, 1], 20)  # a query (the first image of an identity) and its 2 others elsewhere
    result = calibrate(features[::3], features, pids[::3], pids, cameras[:20], np.tile([0, 1, 1], 20),
                       feature="after_neck")
    path = draw_calibration(result, tmp_path / "pictures" / "calibration.png", title="tiny")
    with Image.open(path) as picture:
        assert picture.size == (1100, 400)
    section = deployment_section(result, "synthetic", "calibration.png")
    assert "after-neck feature" in section and "![score histograms and ROC curve](calibration.png)" in section
    assert result.table() in section
    assert set(result.to_dict()) == {"points", "num_positive", "num_negative", "positive_quantiles",
                                     "negative_quantiles", "negative_mean", "feature"}


def test_threshold_keeps_exactly_the_matches_above_it():
    rng = np.random.default_rng(1)
    gallery = pass_hub.ImageEmbeddings(torch.from_numpy(rng.normal(size=(50, 8))).float(),
                                       [f"{i}.jpg" for i in range(50)])
    index = GalleryIndex(gallery)
    queries = torch.from_numpy(rng.normal(size=(4, 8))).float()
    cosines = torch.nn.functional.normalize(queries, dim=1) @ index.vectors.T
    for threshold in (-0.2, 0.3, 0.6, 0.99):
        everything = index.search(queries, top_k=None, threshold=threshold)
        capped = index.search(queries, top_k=5, threshold=threshold)
        for row in range(4):
            expected = set(torch.nonzero(cosines[row] > threshold).flatten().tolist())
            found = everything.matches(row)
            assert {index for index, _ in found} == expected
            assert [score for _, score in found] == sorted((score for _, score in found), reverse=True)
            assert all(score > threshold for _, score in found)
            assert capped.matches(row) == found[:5]
            assert (capped.indices[row] == -1).sum() == 5 - min(5, len(expected))
    with pytest.raises(ValueError, match="not a cosine similarity"):
        index.search(queries, threshold=1.5)


def test_search_cli_threshold(tmp_path, capsys):
    torch.manual_seed(0)
    folder = pass_hub.save_hub_folder(pass_hub.PassViTModel(pass_hub.PassViTConfig(**TINY)), tmp_path / "model")
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    rng = np.random.default_rng(0)
    for index in range(6):
        Image.fromarray(rng.integers(0, 255, (128, 64, 3)).astype(np.uint8)).save(gallery / f"{index}.png")
    shutil.copy(gallery / "2.png", tmp_path / "query.png")
    args = ["search", str(folder), "--gallery", str(gallery), "--query", str(tmp_path / "query.png")]
    assert main([*args, "--threshold", "0.9999"]) == 0
    out = capsys.readouterr().out
    assert "1 match(es) above 0.9999" in out and f"{gallery / '2.png'}" in out
    assert main([*args, "--threshold", "1"]) == 0
    assert "no match above 1" in capsys.readouterr().out


def reid_model_with_necks() -> pass_hub.PassViTForReID:
    torch.manual_seed(0)
    model = pass_hub.PassViTForReID(pass_hub.PassViTConfig(**TINY, image_size=(64, 32), num_labels=3)).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so that the two features differ
        for neck in model.neck_modules():
            neck.running_mean.uniform_(-1, 1)
            neck.running_var.uniform_(0.2, 3)
    return model


def test_evaluation_keeps_the_paper_feature_and_calibrates_the_deployment_one():
    data = generate_synthperson(SynthPersonConfig(train_ids=2, test_ids=5, distractors=2, unlabelled=0,
                                                  image_size=(64, 32)), progress=False)
    model = reid_model_with_necks()
    results = evaluate_model(model, data["query"], data["gallery"], progress=False, calibration=True,
                             return_per_query=True)
    plain = evaluate_model(model, data["query"], data["gallery"], progress=False)
    assert results["feature"] == plain["feature"] == "before_neck" and results["mAP"] == plain["mAP"]
    deployment = load_reid_model(model)
    assert deployment.feature == "after_neck"
    transform = preprocessing_transform(deployment.preprocessing)
    sets = [extract_features(deployment, data[split], transform, progress=False) for split in ("query", "gallery")]
    expected = calibrate(sets[0].features, sets[1].features, sets[0].pids, sets[1].pids, sets[0].camids,
                         sets[1].camids, feature="after_neck")
    got = results["calibration"]
    assert got.feature == "after_neck" and got.num_negative == expected.num_negative
    for a, b in zip(got.points, expected.points, strict=True):
        assert a.threshold == pytest.approx(b.threshold, abs=1e-5) and a.tpr == pytest.approx(b.tpr)
    # Rank-list captions: the deployment cosines of the pairs the evaluated feature ranked.
    query_side, gallery_side = (torch.nn.functional.normalize(part.features, dim=1) for part in sets)
    for row in range(3):
        ranked = [int(i) for i in results["topk_indices"][row] if i >= 0]
        np.testing.assert_allclose(results["topk_deployment_cosines"][row][: len(ranked)],
                                   (gallery_side[ranked] @ query_side[row]).numpy(), atol=1e-5)
    after = evaluate_model(model, data["query"], data["gallery"], progress=False, feature="after_neck")
    assert after["feature"] == "after_neck" and after["mAP"] != plain["mAP"]


def test_every_output_names_its_feature(tmp_path):
    model = reid_model_with_necks()
    images = ImageList(["red", "blue"], [Image.new("RGB", (32, 64), colour) for colour in ("red", "blue")])
    deployed = pass_hub.embed_files(images, model, progress=False)
    assert deployed.metadata["feature"] == "after_neck"
    assert deployed.metadata["feature_description"].startswith("cat(BN(CLS)")
    evaluated = pass_hub.embed_files(images, load_reid_model(model, feature="evaluation"), progress=False)
    assert evaluated.metadata["feature"] == "before_neck"
    backbone = pass_hub.embed_files(images, model.pass_vit, progress=False)
    assert backbone.metadata["feature"] == "before_neck"
    with pytest.raises(ValueError, match="no BatchNorm necks"):
        load_reid_model(model.pass_vit, feature="after_neck")
    runner = OnnxReIDModel(export_onnx(model, tmp_path / "reid.onnx").path)
    assert runner.feature == "after_neck" and runner.metadata["embedding"].startswith("cat(BN(CLS)")
    np.testing.assert_allclose(runner(torch.zeros(1, 3, 64, 32)),
                               load_reid_model(model)(torch.zeros(1, 3, 64, 32)).detach().numpy(), atol=1e-4)


def test_int8_export_stays_close_to_pytorch(tmp_path, capsys):
    model = reid_model_with_necks()
    result = export_onnx(model, tmp_path / "int8.onnx", quantize="int8")
    assert min(result.min_cosine.values()) >= INT8_MIN_COSINE
    runner = OnnxReIDModel(result.path)
    assert runner.quantization.startswith("int8") and runner.feature == "after_neck"
    float32 = export_onnx(model, tmp_path / "fp32.onnx").path
    assert result.path.stat().st_size < float32.stat().st_size
    pixels = torch.randn(4, 3, 64, 32)
    cosine = torch.nn.functional.cosine_similarity(torch.from_numpy(runner(pixels)), load_reid_model(model)(pixels))
    assert cosine.min() >= INT8_MIN_COSINE  # stated tolerance, on inputs the export check did not see
    folder = pass_hub.save_hub_folder(model, tmp_path / "model")
    assert main(["export-onnx", str(folder), str(tmp_path / "cli.onnx"), "--quantize", "int8"]) == 0
    out = capsys.readouterr().out
    assert "after-neck feature, int8 dynamic" in out and "lowest cosine" in out
    with pytest.raises(ValueError, match="quantize='int4'"):
        export_onnx(model, tmp_path / "bad.onnx", quantize="int4")


def test_eval_cli_prints_thresholds_and_draws_calibration(tmp_path, capsys):
    folder = pass_hub.save_hub_folder(reid_model_with_necks(), tmp_path / "reid")
    data = tmp_path / "data"
    assert main(["synth", str(data), "--train-ids", "2", "--test-ids", "4", "--distractors", "1",
                 "--unlabelled", "0", "--image-size", "64x32"]) == 0
    picture, output = tmp_path / "calibration.png", tmp_path / "eval.json"
    assert main(["eval", "--model", str(folder), "--data", str(data), "--num-workers", "0",
                 "--calibration", str(picture), "--output", str(output)]) == 0
    out = capsys.readouterr().out
    assert "before-neck feature" in out and "cosine similarity of the after-neck feature (what embed" in out
    assert "same-person pairs from different cameras, median" in out
    assert "| FPR | TPR | threshold (cosine) |" in out and picture.is_file()
    import json

    summary = json.loads(output.read_text())
    assert summary["feature"] == "before_neck" and summary["calibration"]["feature"] == "after_neck"
    assert [point["target_fpr"] for point in summary["calibration"]["points"]] == list(FPR_TARGETS)
    assert main(["eval", "--model", str(folder), "--data", str(data), "--num-workers", "0",
                 "--calibration-feature", "before_neck"]) == 0
    assert "cosine similarity of the before-neck feature:" in capsys.readouterr().out


def test_weights_chosen_on_the_test_split_are_calibrated_themselves(tmp_path):
    from accelerate import Accelerator

    from training.engine.reid import PublishedWeights, publish

    data = generate_synthperson(SynthPersonConfig(train_ids=2, test_ids=5, distractors=2, unlabelled=0,
                                                  image_size=(64, 32)), progress=False)
    chosen = reid_model_with_necks()
    weights = PublishedWeights(tmp_path / "best", "best_test_evaluation")
    ranked = evaluate_model(chosen, data["query"], data["gallery"], progress=False, return_per_query=True)
    weights.consider(ranked, 10, chosen, Accelerator(cpu=True))
    later = reid_model_with_necks()
    with torch.no_grad():
        later.cls_neck.running_mean.add_(5)  # the final weights differ from the published ones
    ranked["calibration"] = evaluate_model(later, data["query"], data["gallery"], progress=False,
                                           calibration=True)["calibration"]
    folder, calibration = publish(weights, tmp_path / "run", data=data, dataset="synthetic", ranked=ranked,
                                  name="tiny", summary="A test.", training="Trained briefly.")
    expected = evaluate_model(chosen, data["query"], data["gallery"], progress=False, calibration=True)
    assert [p.threshold for p in calibration.points] == pytest.approx(
        [p.threshold for p in expected["calibration"].points], abs=1e-5)
    assert [p.threshold for p in calibration.points] != [p.threshold for p in ranked["calibration"].points]
    text = (folder / "README.md").read_text()
    assert calibration.table() in text and (folder / "calibration.png").is_file()
