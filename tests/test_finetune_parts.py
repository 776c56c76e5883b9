"""Building blocks of supervised fine-tuning: P x K sampler, batch-hard triplet, transforms, SGD groups."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import torch
from accelerate.data_loader import BatchSamplerShard
from PIL import Image
from reference_pass import reference_triplet

from training.engine.optim import bias_lr_groups, reid_optimizer, set_hyperparameters
from training.engine.samplers import PKBatchSampler
from training.engine.transforms import reid_test_transform, reid_train_transform
from training.finetuning.losses import batch_hard_triplet_loss, euclidean_distances

LABELS = [0] * 10 + [1] * 3 + [2] * 1 + [3] * 8 + [4] * 4 + [5] * 6 + [6] * 2


def test_pk_batches_hold_p_identities_with_k_images_each():
    sampler = PKBatchSampler(LABELS, identities_per_batch=3, instances_per_identity=4, seed=5)
    for epoch in range(4):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler) == sampler.epoch_length(epoch) >= 1
        for batch in batches:
            counts = collections.Counter(LABELS[i] for i in batch)
            assert len(batch) == 12 and len(counts) == 3 and set(counts.values()) == {4}
    # The single image of identity 2 is resampled to fill its K slots whenever it is drawn.
    drawn = [b for e in range(10) for b in (sampler.set_epoch(e) or list(sampler)) if 13 in b]
    assert drawn and all(b.count(13) == 4 for b in drawn)


def test_pk_epochs_end_as_the_original_sampler_ends_them():
    # Identity 0: 12 images = 3 chunks of 4; identities 1 and 2: 6 images = 1 chunk each, the 2 left over unused.
    labels = [0] * 12 + [1] * 6 + [2] * 6
    sampler = PKBatchSampler(labels, identities_per_batch=2, instances_per_identity=4, seed=0)
    lengths = collections.Counter()
    for epoch in range(40):
        batches = sampler.batches(epoch)
        lengths[len(batches)] += 1
        used = collections.Counter(labels[i] for batch in batches for i in batch)
        assert used[1] <= 4 and used[2] <= 4  # the remainder of a chunking is dropped, never resampled
        # Drawing {1, 2} first leaves only identity 0: the epoch ends after 1 batch. Drawing 0 with one of them
        # leaves 0 and the other: a second batch, then only 0 is left. Never a third.
        first = {labels[i] for i in batches[0]}
        assert len(batches) == (1 if first == {1, 2} else 2)
    assert set(lengths) == {1, 2}  # the epoch length depends on the draw


def test_pk_order_depends_only_on_seed_and_epoch():
    first = PKBatchSampler(LABELS, 2, 2, seed=1)
    second = PKBatchSampler(LABELS, 2, 2, seed=1)
    assert list(first) == list(second)
    second.set_epoch(1)
    assert list(first) != list(second)
    assert list(PKBatchSampler(LABELS, 2, 2, seed=2)) != list(first)


def test_pk_batches_are_dealt_whole_to_processes():
    sampler = PKBatchSampler(LABELS, 2, 2, seed=0)
    batches = list(sampler)
    shards = [list(BatchSamplerShard(sampler, num_processes=2, process_index=rank)) for rank in (0, 1)]
    assert len(shards[0]) == len(shards[1])
    for rank, shard in enumerate(shards):
        for position, batch in enumerate(shard):
            assert batch == batches[(2 * position + rank) % len(batches)]


def test_pk_epoch_length_can_be_fixed():
    sampler = PKBatchSampler(LABELS, identities_per_batch=3, instances_per_identity=2, seed=0, num_batches=25)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 25  # several passes over the chunks, identities dealt new ones
    assert all(len(batch) == 6 and len({LABELS[i] for i in batch}) == 3 for batch in batches)
    assert batches[:3] == list(PKBatchSampler(LABELS, 3, 2, seed=0, num_batches=3))  # a longer epoch extends it
    with pytest.raises(ValueError, match="num_batches must be >= 1"):
        PKBatchSampler(LABELS, 3, 2, num_batches=0)


def test_pk_rejects_too_few_identities():
    with pytest.raises(ValueError, match="needs 4 identities; the data has 1"):
        PKBatchSampler([7, 7, 7], identities_per_batch=4, instances_per_identity=2)
    with pytest.raises(ValueError, match="P and K must be >= 1"):
        PKBatchSampler(LABELS, 0, 4)


@pytest.mark.parametrize("margin", [None, 0.3])
def test_triplet_matches_a_loop_over_anchors(margin):
    generator = torch.Generator().manual_seed(3)
    for _ in range(5):
        features = torch.randn(12, 16, generator=generator, dtype=torch.float64)
        labels = torch.arange(4).repeat_interleave(3)[torch.randperm(12, generator=generator)]
        got = batch_hard_triplet_loss(features, labels, margin=margin)
        assert torch.allclose(got, reference_triplet(features, labels, margin))


def test_triplet_is_differentiable_with_duplicate_features_and_checks_batches():
    features = torch.zeros(4, 3, requires_grad=True)
    batch_hard_triplet_loss(features, torch.tensor([0, 0, 1, 1])).backward()
    assert torch.isfinite(features.grad).all()
    assert torch.allclose(euclidean_distances(torch.eye(2)), torch.tensor([[1e-6, 2**0.5], [2**0.5, 1e-6]]))
    with pytest.raises(ValueError, match="positive and a negative"):
        batch_hard_triplet_loss(torch.randn(3, 2), torch.tensor([0, 1, 2]))


def test_train_and_test_transforms():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (150, 60, 3), dtype=np.uint8))
    test = reid_test_transform((256, 128))
    pixels = test(image)
    assert pixels.shape == (3, 256, 128) and torch.equal(pixels, test(image))
    expected = torch.from_numpy(np.asarray(image.resize((128, 256), Image.BILINEAR), dtype=np.float32)) / 255
    assert (pixels.permute(1, 2, 0) - (expected - 0.5) / 0.5).abs().mean() < 0.02
    assert reid_test_transform((384, 128))(image.convert("L")).shape == (3, 384, 128)
    torch.manual_seed(0)
    erased = reid_train_transform((64, 32), erasing_p=1.0)(Image.new("RGB", (32, 64), (255, 255, 255)))
    assert erased.shape == (3, 64, 32)
    # White normalises to 1 and the black padding to -1; the erased box holds normal noise: 2% of the area or more.
    noise = (erased != 1.0) & (erased != -1.0)
    assert noise.float().mean() >= 0.02


def test_bias_groups_get_twice_the_learning_rate():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    optimizer = torch.optim.SGD(bias_lr_groups(model), lr=0.1, momentum=0.9)
    set_hyperparameters(optimizer, lr=4e-4)
    weights, biases = optimizer.param_groups
    assert weights["lr"] == pytest.approx(4e-4) and biases["lr"] == pytest.approx(8e-4)
    assert len(biases["params"]) == 2 and len(weights["params"]) == 2


def test_reid_optimizers_treat_biases_as_the_recipe_says():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    sgd = reid_optimizer(model, "sgd", lr=0.1, weight_decay=1e-4, bias_lr_factor=2.0)
    assert isinstance(sgd, torch.optim.SGD) and [g["weight_decay"] for g in sgd.param_groups] == [1e-4, 1e-4]
    adamw = reid_optimizer(model, "adamw", lr=1e-3, weight_decay=0.05)
    set_hyperparameters(adamw, lr=2e-3)
    decayed, undecayed = adamw.param_groups
    assert isinstance(adamw, torch.optim.AdamW)
    assert decayed["params"] == [model[0].weight] and decayed["weight_decay"] == 0.05
    assert len(undecayed["params"]) == 3 and undecayed["weight_decay"] == 0.0  # Linear bias, BatchNorm weight/bias
    assert decayed["lr"] == undecayed["lr"] == pytest.approx(2e-3)
    with pytest.raises(ValueError, match="unknown optimizer 'adam'"):
        reid_optimizer(model, "adam", lr=1e-3, weight_decay=0.0)
