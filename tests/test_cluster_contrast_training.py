"""ClusterContrastTrainer against a plain reference of the original cluster-contrast code (tests/reference_pass.py),
from an original USL / UDA checkpoint: the features it clusters, the Jaccard distances, the pseudo-labels, the
memory after initialisation and after each of two steps, the loss and every tensor after each step."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from reference_pass import (
    ReferenceClusterContrast,
    ReferencePassViT,
    original_cluster_centroids,
    original_cluster_contrast_optimizer,
    reference_cluster_contrast_jaccard,
    reference_cluster_contrast_step,
)
from sklearn.cluster import DBSCAN
from sklearn.metrics import adjusted_rand_score

import pass_hub
from training import ClusterContrastTrainer, load_usl_start
from training.cluster_contrast.clustering import cluster_centroids
from training.engine.recipes import RECIPES

DIM, DEPTH, HEADS, SIZE = 64, 2, 2, (64, 32)
# recipe -> (multi_neck, fusion) of the original model it trains
ORIGINAL_MODELS = {
    "market_usl_vit_small": (False, "cat"),
    "msmt17_usl_vit_small": (False, "mean"),
    "msmt17_to_market_vit_small": (True, "cat"),
    "market_to_msmt17_vit_small": (True, "mean"),
}


def original_checkpoint(tmp_path, recipe: str, seed: int = 0) -> tuple[ReferenceClusterContrast, str]:
    """A random original cluster-contrast model of the recipe's layout, saved as its script saves it."""
    torch.manual_seed(seed)
    multi_neck, fusion = ORIGINAL_MODELS[recipe]
    model = ReferenceClusterContrast(ReferencePassViT(DIM, DEPTH, HEADS, grid=(4, 2)), multi_neck, fusion)
    path = tmp_path / "checkpoint.pth.tar"
    torch.save({"state_dict": model.original_state_dict(), "epoch": 10, "best_mAP": 0.5}, path)
    return model, str(path)


def run_settings(recipe: str, **changes):
    settings = RECIPES["usl"][recipe].settings
    return dataclasses.replace(settings, image_size=SIZE, drop_path_rate=0.0, mixed_precision="no", eps=0.5,
                               min_samples=2, k1=5, k2=2, **changes)


def images(people: int = 6, copies: int = 4, seed: int = 1) -> torch.Tensor:
    """Several noisy copies of a few random images: copies of one image cluster together."""
    generator = torch.Generator().manual_seed(seed)
    base = torch.randn(people, 3, *SIZE, generator=generator)
    return base.repeat(copies, 1, 1, 1) + 0.6 * torch.randn(people * copies, 3, *SIZE, generator=generator)


@pytest.mark.parametrize("recipe", sorted(ORIGINAL_MODELS))
def test_clustering_and_two_steps_from_an_original_checkpoint_are_the_originals(tmp_path, recipe):
    reference, path = original_checkpoint(tmp_path, recipe)
    start = load_usl_start(path, num_heads=HEADS)
    assert start.source_format == "original_usl" and start.fine_tuned and start.num_labels is None
    settings = start.settings_for(run_settings(recipe))
    multi_neck, fusion = ORIGINAL_MODELS[recipe]
    assert settings.neck == ("per_token" if multi_neck else "single") and settings.feature_fusion == fusion
    assert start.keeps_head(settings)  # an original USL model, trained further: its necks are kept
    trainer = ClusterContrastTrainer.build(settings, start.model(settings), Accelerator(cpu=True))
    state = trainer.original_state_dict()
    expected = {key.removeprefix("module."): value for key, value in reference.original_state_dict().items()}
    assert state.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(state[key], value), key

    # The epoch start: features in eval mode, Jaccard distances, DBSCAN, centroids.
    pixels = images()
    features = trainer.extract_cluster_features(pixels, batch_size=7)
    reference.eval()
    with torch.no_grad():
        expected_features = reference(pixels)
    torch.testing.assert_close(features, expected_features, rtol=1e-5, atol=1e-6)
    if multi_neck:  # the per-token necks' fusion is clustered as it is, not a unit vector
        assert (features.norm(dim=1) - 1).abs().max() > 0.01
    dense = reference_cluster_contrast_jaccard(expected_features.double().numpy(), settings.k1, settings.k2)
    expected_labels = DBSCAN(eps=settings.eps, min_samples=settings.min_samples,
                             metric="precomputed").fit_predict(dense)
    clustering = trainer.cluster(features, epoch=19)
    np.testing.assert_array_equal(clustering.pseudo_labels, expected_labels)
    assert clustering.num_clusters == expected_labels.max() + 1 >= 4
    stored = clustering.distances.tocoo()  # every distance <= eps, zeros included, and nothing else
    close = np.zeros_like(dense, dtype=bool)
    close[stored.row, stored.col] = True
    np.testing.assert_array_equal(close, dense <= settings.eps)
    np.testing.assert_allclose(stored.data, dense[stored.row, stored.col], atol=1e-6)
    memory = original_cluster_centroids(expected_features, expected_labels)
    torch.testing.assert_close(trainer.memory, memory, rtol=1e-5, atol=1e-6)

    # Two steps, across the StepLR boundary (epoch 19 at lr, epoch 20 at lr / 10), on the same kind of batch.
    optimizer = original_cluster_contrast_optimizer(reference, settings.lr, settings.weight_decay)
    kept = torch.as_tensor(clustering.pseudo_labels) >= 0
    batch, labels = pixels[kept][:12], torch.as_tensor(clustering.pseudo_labels)[kept][:12]
    for epoch in (19, 20):
        lr = settings.lr * (0.1 if epoch >= 20 else 1.0)
        assert trainer.learning_rate(epoch) == pytest.approx(lr, rel=1e-12)
        expected_loss = reference_cluster_contrast_step(reference, optimizer, memory, batch, labels, lr,
                                                        settings.temperature, settings.memory_momentum)
        outcome = trainer.step(batch, labels, epoch)
        assert outcome.loss.item() == pytest.approx(expected_loss, abs=1e-5) and outcome.optimizer_stepped
        torch.testing.assert_close(trainer.memory, memory, rtol=1e-5, atol=1e-6)
        state = trainer.original_state_dict()
        for key, value in reference.original_state_dict().items():
            torch.testing.assert_close(state[key.removeprefix("module.")], value, rtol=1e-5, atol=1e-6,
                                       msg=lambda message, key=key, epoch=epoch: f"{key}, epoch {epoch}: {message}")


def test_optimizer_is_one_rate_and_decay_for_every_tensor_and_step_lr(tmp_path):
    _, path = original_checkpoint(tmp_path, "msmt17_to_market_vit_small")
    start = load_usl_start(path, num_heads=HEADS)
    settings = start.settings_for(run_settings("msmt17_to_market_vit_small"))
    trainer = ClusterContrastTrainer.build(settings, start.model(settings), Accelerator(cpu=True))
    trained = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    network = trainer.network
    expected = {id(p) for name, p in network.named_parameters() if p.requires_grad}
    assert trained == expected and all(p.requires_grad for p in network.parameters())
    assert all(neck.bias is not None and "bias" in dict(neck.named_buffers()) for neck in network.neck_modules())
    assert {(group["weight_decay"], group.get("lr_scale", 1.0)) for group in trainer.optimizer.param_groups} == {
        (settings.weight_decay, 1.0)}
    assert [trainer.learning_rate(e) / settings.lr for e in (0, 19, 20, 39, 40, 49)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.01])
    with pytest.raises(ValueError, match="outside the 50 epochs"):
        trainer.learning_rate(50)


def test_every_instance_update_is_the_originals_without_use_hard(tmp_path):
    reference, path = original_checkpoint(tmp_path, "market_usl_vit_small", seed=3)
    start = load_usl_start(path, num_heads=HEADS)
    settings = start.settings_for(run_settings("market_usl_vit_small", memory_update="every_instance"))
    trainer = ClusterContrastTrainer.build(settings, start.model(settings), Accelerator(cpu=True))
    pixels = images(people=4, copies=3, seed=5)
    clustering = trainer.cluster(trainer.extract_cluster_features(pixels))
    memory = trainer.memory.clone()
    labels = torch.as_tensor(clustering.pseudo_labels)
    optimizer = original_cluster_contrast_optimizer(reference, settings.lr, settings.weight_decay)
    expected = reference_cluster_contrast_step(reference, optimizer, memory, pixels, labels, settings.lr,
                                               hard=False)
    assert trainer.step(pixels, labels, 0).loss.item() == pytest.approx(expected, abs=1e-5)
    torch.testing.assert_close(trainer.memory, memory, rtol=1e-5, atol=1e-6)


def test_a_fine_tuned_source_gives_its_backbone_only(tmp_path):
    # UDA: an original fine-tuned model (751 identities) starts a run without a classifier; the original's
    # load_param skips its necks and classifier.
    from reference_pass import ReferenceReID

    torch.manual_seed(0)
    source = ReferenceReID(ReferencePassViT(DIM, DEPTH, HEADS, grid=(4, 2)), num_ids=751)
    torch.save(source.state_dict(), tmp_path / "transformer_120.pth")
    start = load_usl_start(tmp_path / "transformer_120.pth", num_heads=HEADS)
    settings = start.settings_for(run_settings("msmt17_to_market_vit_small"))
    assert start.num_labels == 751 and not start.keeps_head(settings)
    model = start.model(settings)
    assert model.classifier is None and model.config.normalize_neck_outputs
    assert "backbone kept, new necks (the run has 0 identities, the checkpoint 751)" in start.kept(settings)


@pytest.mark.parametrize("camera_centering", [False, True])
def test_clustering_uses_camera_centred_features_only_when_asked(camera_centering):
    # Camera offsets dominate the person signatures: only centred features cluster by person.
    rng = np.random.default_rng(4)
    pids, camids = np.divmod(np.arange(6 * 3 * 4) // 4, 3)
    features = rng.normal(size=(6, 32))[pids] + 3 * rng.normal(size=(3, 32))[camids]
    features = F.normalize(torch.from_numpy((features + 0.1 * rng.normal(size=features.shape)).astype(np.float32)))
    settings = dataclasses.replace(RECIPES["usl"]["cpu_demo"].settings, preset="embed_dim=16,depth=1,num_heads=1",
                                   eps=0.6, min_samples=3, k1=10, k2=2, camera_centering=camera_centering,
                                   jaccard="cluster_contrast")
    trainer = ClusterContrastTrainer.build(settings, load_usl_start(settings.preset).model(settings),
                                           Accelerator(cpu=True))
    if camera_centering:
        with pytest.raises(ValueError, match="pass camera_ids"):
            trainer.cluster(features)
    clustering = trainer.cluster(features, camids, epoch=0)
    labels = clustering.pseudo_labels
    assert (adjusted_rand_score(pids, labels) == 1.0) is camera_centering
    memory = trainer.cluster_memory
    assert torch.equal(memory.labels, torch.as_tensor(labels)) and int(memory.epoch) == 0
    torch.testing.assert_close(trainer.memory, cluster_centroids(features, labels))  # from the raw features


@pytest.mark.parametrize("recipe", ["market_usl_vit_small", "msmt17_to_market_vit_small"])
def test_convert_reads_an_original_cluster_contrast_model(tmp_path, recipe):
    reference, path = original_checkpoint(tmp_path, recipe, seed=2)
    folder = pass_hub.convert_checkpoint(path, tmp_path / "converted", num_heads=HEADS)
    model = pass_hub.PassViTForReID.from_pretrained(folder).eval()
    assert model.config.architectures == ["PassViTForReID"] and model.config.num_labels == 0
    assert model.config.normalize_neck_outputs == ORIGINAL_MODELS[recipe][0]
    pixels = images(people=2, copies=2)
    reference.eval()
    with torch.no_grad():
        expected = reference(pixels)
        feature = model(pixels).features_after_neck
    if not ORIGINAL_MODELS[recipe][0]:  # the single neck's output, normalised by the original's model
        feature = F.normalize(feature, dim=1)
    torch.testing.assert_close(feature, expected, rtol=1e-5, atol=1e-6)
