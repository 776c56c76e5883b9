"""The behaviours the paper recipes select, each shown on a small case against the original's rules as
docs/recipes.md states them: the fine-tuning lr per epoch, the camera-aware sampler, the
cluster-contrast Jaccard distance, the USL / UDA necks, the pre-training position table, token initialisation and
schedules, the erasing of cluster-contrast, and which weights are published."""

from __future__ import annotations

import math
from collections import Counter
from itertools import groupby

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from reference_pass import reference_cluster_contrast_jaccard

import pass_hub
from pass_hub.evaluation.reranking import jaccard_distance
from pass_hub.models.backbone import PassVisionTransformer, original_pretraining_pos_embed
from training.engine.optim import reid_optimizer
from training.engine.recipes import RECIPES
from training.engine.reid import PublishedWeights
from training.engine.samplers import CameraAwareSampler
from training.engine.transforms import ClusterContrastErasing
from training.finetuning.step import learning_rate_table
from training.pretraining.networks import init_tokens_as_original
from training.pretraining.step import PretrainSchedules


def test_fine_tuning_lr_at_named_epochs():
    # docs/recipes.md, disagreement 1: base b, biases peak at 2b; start 0.01b and floor 0.002b shared; 120 epochs,
    # 20 warm-up.
    settings = RECIPES["finetune"]["market_vit_small_256"].settings
    model = torch.nn.Linear(4, 2)
    optimizer = reid_optimizer(model, "sgd", lr=settings.lr, weight_decay=1e-4, bias_lr_factor=2.0)
    table = learning_rate_table(settings, optimizer) / settings.lr  # in units of b
    assert table.shape == (120, 2)
    expected = {  # epoch t (0-based): (weights, biases), worked out by hand from the formulas
        0: (0.01, 0.01),
        19: (0.9505, 1.9005),  # 0.01 + 19 (g - 0.01) / 20
        20: (0.93314667, 1.86615937),  # 0.002 + (g - 0.002)(1 + cos(pi / 6)) / 2: a drop after the warm-up
        119: (0.00217099, 0.00234233),  # 0.002 + (g - 0.002)(1 - cos(pi / 120)) / 2
    }
    for epoch, values in expected.items():
        assert table[epoch] == pytest.approx(values, rel=1e-5), epoch
    assert table[:, 0].max() < 1  # b itself is never used


def _groups(stream: list[int], labels: list[int]) -> list[list[int]]:
    """The stream cut into its runs of one cluster (each cluster appears once per pass)."""
    return [list(run) for _, run in groupby(stream, key=lambda index: labels[index])]


def test_camera_aware_sampler_draws_the_companions_as_the_original():
    # Cluster 0: 2 images on camera 0, 8 on camera 1; cluster 1: 3 images of one camera; cluster 2: a single image;
    # cluster 3: 5 images on 5 cameras.
    labels = [0] * 10 + [1] * 3 + [2] + [3] * 5
    camids = [0, 0] + [1] * 8 + [7] * 3 + [2] + [0, 1, 2, 3, 4]
    sampler = CameraAwareSampler(labels, camids, instances_per_identity=4, batch_size=4, global_batch_size=8,
                                 num_batches=5, seed=0)
    anchors_on_camera_0 = 0
    for pass_index in range(30):
        stream = sampler.stream(epoch=0, pass_index=pass_index)
        groups = _groups(stream, labels)
        assert len(stream) == 4 + 4 + 1 + 4 and sorted(labels[g[0]] for g in groups) == [0, 1, 2, 3]
        for anchor, *companions in groups:
            members = [i for i, label in enumerate(labels) if label == labels[anchor]]
            if labels[anchor] == 2:
                assert companions == []  # a one-image cluster gives only its anchor
                continue
            assert len(companions) == 3 and all(labels[i] == labels[anchor] for i in companions)
            other = [i for i in members if camids[i] != camids[anchor]]
            if other:  # from other cameras; without replacement when K = 4 or more such images exist
                assert all(camids[i] != camids[anchor] for i in companions)
                assert (len(set(companions)) == 3) if len(other) >= 4 else set(companions) <= set(other)
            else:  # one camera: the cluster's other images, with replacement (2 < K)
                assert anchor not in companions and set(companions) <= set(members) - {anchor}
            if labels[anchor] == 0 and camids[anchor] == 0:
                anchors_on_camera_0 += 1
                assert set(companions) <= set(range(2, 10))
    assert anchors_on_camera_0 > 0
    # 13 images a pass make one global batch of 8 (the rest is dropped), i.e. 2 micro-batches of 4.
    batches = sampler.batches(epoch=0)
    first_pass = sampler.stream(0, 0)[:8]
    assert len(batches) == 5 and batches[0] + batches[1] == first_pass and batches[2] + batches[3] == sampler.stream(
        0, 1)[:8]


def test_cluster_contrast_jaccard_on_5_points():
    angles = np.radians([0.0, 10.0, 25.0, 90.0, 105.0])
    features = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    for k1, k2 in ((2, 1), (4, 1), (4, 2), (3, 2)):
        ours = jaccard_distance(torch.from_numpy(features).float(), k1=k1, k2=k2, convention="cluster_contrast")
        np.testing.assert_allclose(ours.numpy(), reference_cluster_contrast_jaccard(features, k1, k2), atol=2e-6)
    # k1 = 2: each list is [itself, its nearest]; 0 and 1 are each other's nearest, so V_0 spreads over {0, 1} with
    # softmax(-[0, 2 - 2 cos 10deg]) and d(0, 1) = 1 - S / (2 - S) with S = sum min(V_0, V_1) = 2 min(w, 1 - w).
    w = 1 / (1 + math.exp(-(2 - 2 * math.cos(math.radians(10)))))
    shared = 2 * (1 - w)
    ours = jaccard_distance(torch.from_numpy(features).float(), k1=2, k2=1, convention="cluster_contrast")
    assert float(ours[0, 1]) == pytest.approx(1 - shared / (2 - shared), abs=1e-6)
    # Zhong's re-ranking looks at k1 + 1 neighbours and weights by exp(-d / row max): another matrix.
    classic = jaccard_distance(torch.from_numpy(features).float(), k1=2, k2=1, convention="reranking")
    assert not torch.allclose(classic, ours, atol=1e-3)


@pytest.mark.parametrize(
    ("recipe", "width"),
    [("market_usl_vit_small", 2), ("msmt17_usl_vit_small", 1), ("msmt17_to_market_vit_small", 2),
     ("market_to_msmt17_vit_small", 1)],
)
def test_usl_and_uda_necks(recipe, width):
    settings = RECIPES["usl"][recipe].settings
    config = pass_hub.PassViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, neck=settings.neck,
                                    feature_fusion=settings.feature_fusion, reid_feature=settings.reid_feature,
                                    normalize_neck_outputs=settings.normalize_neck_outputs)
    model = pass_hub.PassViTForReID(config).eval()
    with torch.no_grad():
        for module in model.neck_modules():  # non-trivial statistics, as after training
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2)
        tokens = model.pass_vit(torch.randn(3, 3, 64, 32)).last_hidden_state
        out = model(torch.randn(3, 3, 64, 32))
        after = model.neck_features(tokens)
    assert out.embeddings.shape == (3, 16 * width) == after.shape
    torch.testing.assert_close(out.embeddings.norm(dim=1), torch.ones(3))  # the feature is L2-normalised
    cls, parts = tokens[:, 0], tokens[:, 1:4].mean(dim=1)
    if settings.neck == "single":
        fused = torch.cat([cls, parts], dim=1) if settings.feature_fusion == "cat" else (cls + parts) / 2
        expected = model.fused_neck(fused)
        assert not hasattr(model, "cls_neck")
    else:  # four necks, each output L2-normalised, then fused
        outputs = [F.normalize(neck(tokens[:, k]), dim=1) for k, neck in enumerate(model.neck_modules())]
        cls_out, part_out = outputs[0], torch.stack(outputs[1:]).mean(dim=0)
        expected = torch.cat([cls_out, part_out], 1) if settings.feature_fusion == "cat" else (cls_out + part_out) / 2
        if settings.feature_fusion == "cat":
            torch.testing.assert_close(after[:, :16].norm(dim=1), torch.ones(3))
    torch.testing.assert_close(after, expected)
    assert all("bias" in dict(module.named_buffers()) for module in model.neck_modules())  # biases frozen at 0


def test_pretraining_position_table_is_resampled_on_every_view_as_the_original():
    # The original samples output row i of h at source row (i + 0.5) x 16 / (h + 0.1) - 0.5 (and likewise the
    # columns, x 8 / (w + 0.1)): grid_sample, given those coordinates, must agree.
    table = torch.cat([torch.randn(1, 4, 3), torch.randn(1, 128, 3)], dim=1)
    image = table[:, 4:].reshape(1, 16, 8, 3).permute(0, 3, 1, 2)
    for grid in ((16, 8), (8, 4)):
        resampled = original_pretraining_pos_embed(table, grid, (16, 8), num_prefix_tokens=4)
        assert resampled.shape == (1, 4 + grid[0] * grid[1], 3) and torch.equal(resampled[:, :4], table[:, :4])
        rows = (torch.arange(grid[0]) + 0.5) * 16 / (grid[0] + 0.1) - 0.5
        columns = (torch.arange(grid[1]) + 0.5) * 8 / (grid[1] + 0.1) - 0.5
        y, x = torch.meshgrid((rows + 0.5) / 16 * 2 - 1, (columns + 0.5) / 8 * 2 - 1, indexing="ij")
        sampled = F.grid_sample(image, torch.stack([x, y], dim=-1)[None], mode="bicubic", padding_mode="border",
                                align_corners=False)
        torch.testing.assert_close(resampled[:, 4:], sampled.permute(0, 2, 3, 1).reshape(1, -1, 3),
                                   atol=1e-5, rtol=0)
    assert not torch.allclose(original_pretraining_pos_embed(table, (16, 8), (16, 8), 4), table)  # even at 16 x 8
    # The backbone applies it to global views too, where the released models add the table as it is.
    backbones = {mode: PassVisionTransformer(img_size=(256, 128), embed_dim=16, depth=1, num_heads=2,
                                             pos_embed_resampling=mode) for mode in ("original", "as_needed")}
    backbones["original"].load_state_dict(backbones["as_needed"].state_dict())
    pixels = torch.randn(1, 3, 256, 128)
    assert torch.equal(backbones["as_needed"].pos_embed_for_grid((16, 8)), backbones["as_needed"].pos_embed)
    assert not torch.allclose(backbones["original"](pixels), backbones["as_needed"](pixels))


def test_original_token_initialisation():
    torch.manual_seed(0)
    backbone = PassVisionTransformer(img_size=(256, 128), embed_dim=384, depth=1, num_heads=6)
    assert backbone.reg_token.std() < 1e-5  # timm's N(0, 1e-6)
    init_tokens_as_original(backbone)
    assert torch.equal(backbone.pos_embed[0, 0], torch.zeros(384))  # cls_pos starts at zero
    for tensor in (backbone.cls_token.detach(), backbone.reg_token.detach(), backbone.pos_embed[:, 1:].detach()):
        assert 0.017 < float(tensor.std()) < 0.023 and float(tensor.abs().max()) <= 2.0


def test_pretraining_schedules_per_iteration_and_teacher_temperature_per_epoch():
    settings = RECIPES["pretrain"]["pass_vit_small_lup"].settings
    schedules = PretrainSchedules.from_settings(settings, steps_per_epoch=3)
    peak = 5e-4 * 1024 / 256
    lr = schedules.lr
    assert len(lr) == 300 and lr[0] == 0 and lr[29] == lr[30] == pytest.approx(peak)  # warm-up ends included
    assert lr[-1] > 1e-6 and lr[-1] == pytest.approx(1e-6 + 0.5 * (peak - 1e-6) * (1 + math.cos(math.pi * 269 / 270)))
    assert schedules.weight_decay[0] == pytest.approx(0.04) and schedules.weight_decay[150] == pytest.approx(0.22)
    assert schedules.momentum[0] == pytest.approx(0.996) and schedules.momentum[-1] < 1
    assert schedules.teacher_temp.tolist() == [0.04] * 100  # one per epoch
    warm = PretrainSchedules.from_settings(
        RECIPES["pretrain"]["cpu_demo"].settings.__class__(**{
            **vars(RECIPES["pretrain"]["cpu_demo"].settings), "warmup_teacher_temp": 0.02,
            "warmup_teacher_temp_epochs": 3}),
        steps_per_epoch=5,
    )
    assert warm.teacher_temp.tolist() == pytest.approx([0.02, 0.03, 0.04, 0.04, 0.04, 0.04])


def test_cluster_contrast_erasing_fills_a_constant_box():
    torch.manual_seed(1)
    eraser = ClusterContrastErasing(p=1.0)
    areas = []
    for _ in range(200):
        erased = eraser(torch.full((3, 256, 128), 5.0))
        box = erased[0] != 5
        assert box.any()
        assert torch.equal(erased[:, box], torch.tensor([0.485, 0.456, 0.406])[:, None].expand(3, int(box.sum())))
        areas.append(float(box.float().mean()))
    assert min(areas) > 0.015 and max(areas) < 0.41 and np.mean(areas) == pytest.approx(0.21, abs=0.03)
    assert torch.equal(ClusterContrastErasing(p=0.0)(torch.ones(3, 8, 4)), torch.ones(3, 8, 4))


def test_published_weights_are_the_final_ones_unless_the_recipe_selects_on_the_test_split(tmp_path):
    model = pass_hub.PassViTForReID(pass_hub.PassViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2))
    accelerator = Accelerator(cpu=True)
    scores = [0.5, 0.7, 0.6]  # mAP of three evaluations, the last at the end of the run

    def evaluations(selection: str) -> PublishedWeights:
        weights = PublishedWeights(tmp_path / selection, selection)
        for step, value in enumerate(scores, 1):
            metrics = dict(mAP=value, mINP=0.0, rank1=value, rank5=value, rank10=value, num_valid_queries=4)
            weights.consider(metrics, 10 * step, model, accelerator, final=step == len(scores))
        return weights

    final = evaluations("final")
    assert final.step == 30 and final.metrics["mAP"] == 0.6
    assert final.describe() == "The published weights are the final ones (step 30)."
    best = evaluations("best_test_evaluation")
    assert best.step == 20 and best.metrics["mAP"] == 0.7 and best.evaluations == 3
    assert "best of 3 evaluations on the test split (step 20" in best.describe()
    assert "leaks the test set" in best.describe()
    assert Counter(p.name for p in tmp_path.iterdir()) == Counter(["final", "best_test_evaluation"])
