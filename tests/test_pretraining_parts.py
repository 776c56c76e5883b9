"""Building blocks of PASS pre-training: views, loss, centers, heads, schedules, optimiser helpers, seeding."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from pass_hub.models.backbone import PassVisionTransformer
from training.engine.data import SeededTransformDataset, sample_seed
from training.engine.optim import clip_gradients_per_tensor, ema_update, set_hyperparameters, weight_decay_groups
from training.engine.schedules import cosine_schedule, step_schedule, warmup_then_constant
from training.pretraining.heads import DINOHead, PartAwareHeads
from training.pretraining.losses import (
    centered_teacher_targets,
    part_aware_cross_entropy,
    part_aware_dino_loss,
    sinkhorn_knopp_targets,
    teacher_collapse_stats,
    updated_centers,
)
from training.pretraining.networks import PartAwareDINO
from training.pretraining.views import PassViews, ViewConfig, stripe_bounds


def reference_loss(teacher_global, student_global, local_cls, local_part, centers, stripes, crops, st, tt):
    """Spec §3 written as an explicit loop over (teacher view, student view) pairs; no part terms without parts."""
    batch = teacher_global.shape[1] // 2
    teacher = F.softmax((teacher_global - centers[:, None]) / tt, dim=-1)

    def global_view(tensor, t, v):
        return tensor[t, v * batch : (v + 1) * batch]

    def local_view(tensor, stripe, crop):
        start = (stripe * crops + crop) * batch
        return tensor[start : start + batch]

    def term(t, s):
        return -(t * F.log_softmax(s / st, dim=-1)).sum(-1).mean()

    terms = []
    for i in range(2):
        t_cls = global_view(teacher, 0, i)
        terms += [term(t_cls, global_view(student_global, 0, j)) for j in range(2) if j != i]
        terms += [term(t_cls, local_view(local_cls, s, c)) for s in range(stripes) for c in range(crops)]
        for k in range(stripes if local_part is not None else 0):
            t_part = global_view(teacher, 1 + k, i)
            terms += [term(t_part, global_view(student_global, 1 + k, j)) for j in range(2) if j != i]
            terms += [term(t_part, local_view(local_part, k, c)) for c in range(crops)]
    return torch.stack(terms).mean(), len(terms)


@pytest.mark.parametrize(("stripes", "crops", "batch"), [(3, 3, 4), (3, 1, 2), (3, 5, 3), (2, 2, 1)])
def test_loss_matches_the_double_loop_reference(stripes, crops, batch):
    generator = torch.Generator().manual_seed(stripes * 100 + crops * 10 + batch)
    k = 32
    teacher = torch.randn(1 + stripes, 2 * batch, k, generator=generator) * 3
    student = torch.randn(1 + stripes, 2 * batch, k, generator=generator) * 3
    local_cls = torch.randn(stripes * crops * batch, k, generator=generator) * 3
    local_part = torch.randn(stripes * crops * batch, k, generator=generator) * 3
    centers = torch.randn(1 + stripes, k, generator=generator)
    for st, tt in ((0.1, 0.04), (0.2, 0.07)):
        got = part_aware_dino_loss(teacher, student, local_cls, local_part, centers, student_temp=st, teacher_temp=tt)
        expected, count = reference_loss(teacher, student, local_cls, local_part, centers, stripes, crops, st, tt)
        assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5)
    if (stripes, crops) == (3, 3):
        assert count == 44  # 20 CLS terms + 24 part terms, as in the paper


def test_dino_ablation_loss_keeps_the_20_cls_terms():
    generator = torch.Generator().manual_seed(7)
    batch, k = 3, 16
    teacher, student = (torch.randn(1, 2 * batch, k, generator=generator) * 3 for _ in range(2))
    local_cls = torch.randn(9 * batch, k, generator=generator) * 3
    centers = torch.randn(1, k, generator=generator)
    got = part_aware_dino_loss(teacher, student, local_cls, None, centers)
    expected, count = reference_loss(teacher, student, local_cls, None, centers, 3, 3, 0.1, 0.04)
    assert count == 20
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="student_local_part is None"):
        part_aware_dino_loss(torch.zeros(4, 6, 8), torch.zeros(4, 6, 8), torch.zeros(27, 8), None, torch.zeros(4, 8))


def test_loss_rejects_mismatched_locals():
    with pytest.raises(ValueError, match="do not fit 3 stripes"):
        part_aware_dino_loss(
            torch.zeros(4, 4, 8), torch.zeros(4, 4, 8), torch.zeros(7, 8), torch.zeros(7, 8), torch.zeros(4, 8)
        )


def test_centers_are_an_ema_of_the_teacher_mean_per_token_type():
    teacher = torch.randn(4, 6, 8)
    centers = torch.randn(4, 8)
    expected = centers * 0.9 + teacher.mean(dim=1) * 0.1
    assert torch.allclose(updated_centers(centers, teacher), expected)
    halved = updated_centers(centers, teacher, all_reduce_mean=lambda t: t / 2)
    assert torch.allclose(halved, centers * 0.9 + teacher.mean(dim=1) * 0.05)


def test_the_cross_entropy_takes_any_targets_and_the_loss_is_it_on_centred_ones():
    generator = torch.Generator().manual_seed(3)
    teacher, student = (torch.randn(4, 6, 16, generator=generator) for _ in range(2))
    local_cls, local_part = (torch.randn(27, 16, generator=generator) for _ in range(2))
    centers = torch.randn(4, 16, generator=generator)
    # Arbitrary targets: the loop reference turns log-probabilities x T with zero centers back into the same ones.
    targets = F.softmax(torch.randn(4, 6, 16, generator=generator) * 3, dim=-1)
    expected, _ = reference_loss(targets.log() * 0.04, student, local_cls, local_part, torch.zeros(4, 16), 3, 3,
                                 0.1, 0.04)
    got = part_aware_cross_entropy(targets, student, local_cls, local_part)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5)
    centred = centered_teacher_targets(teacher, centers, 0.04)
    expected = part_aware_dino_loss(teacher, student, local_cls, local_part, centers)
    assert torch.equal(part_aware_cross_entropy(centred, student, local_cls, local_part), expected)


def test_sinkhorn_knopp_spreads_a_batch_that_centering_sends_to_one_prototype():
    generator = torch.Generator().manual_seed(0)
    # Every image prefers prototype 0 and differs from the others only a little: a batch about to collapse.
    teacher = torch.randn(2, 16, 8, generator=generator) * 0.01
    teacher[..., 0] += 0.5
    centred = centered_teacher_targets(teacher, torch.zeros(2, 8), 0.04)
    assert (centred.argmax(dim=-1) == 0).all()
    assert teacher_collapse_stats(centred)["teacher_batch_entropy"] < 0.01
    spread = sinkhorn_knopp_targets(teacher, 0.04, iterations=100)
    assert torch.allclose(spread.sum(dim=-1), torch.ones(2, 16), atol=1e-5)
    assert torch.allclose(spread.sum(dim=1), torch.full((2, 8), 16 / 8), atol=1e-3)  # every prototype gets 2
    assert teacher_collapse_stats(spread)["teacher_batch_entropy"] == pytest.approx(math.log(8), abs=1e-3)
    # Sinkhorn-Knopp only rescales rows and columns of exp(output / T): the log-ratio is a row term + a column term.
    ratio = spread.double().log() - teacher.double() / 0.04
    interaction = ratio - ratio.mean(dim=1, keepdim=True) - ratio.mean(dim=2, keepdim=True) + ratio.mean((1, 2), True)
    assert interaction.abs().max() < 1e-6


def test_sinkhorn_knopp_over_two_processes_equals_one_process_with_the_whole_batch():
    generator = torch.Generator().manual_seed(1)
    teacher = torch.randn(4, 12, 10, generator=generator)
    whole = sinkhorn_knopp_targets(teacher, 0.1)
    barrier, shared, results = threading.Barrier(2), [None, None], [None, None]

    def run(rank: int) -> None:
        def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
            shared[rank] = tensor
            barrier.wait()
            total = shared[0] + shared[1]
            barrier.wait()  # both have read before either writes its next tensor
            return total

        own_half = teacher[:, rank * 6 : (rank + 1) * 6]
        results[rank] = sinkhorn_knopp_targets(own_half, 0.1, all_reduce_sum=all_reduce_sum)

    threads = [threading.Thread(target=run, args=(rank,)) for rank in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert torch.allclose(torch.cat(results, dim=1), whole, atol=1e-6)


def test_collapse_stats_tell_the_two_collapses_apart():
    uniform = torch.full((4, 8, 16), 1 / 16)
    one_prototype = F.one_hot(torch.zeros(4, 8, dtype=torch.long), 16).float()
    healthy = F.one_hot(torch.arange(8).expand(4, 8), 16).float()
    stats = {name: teacher_collapse_stats(t) for name, t in [("uniform", uniform), ("one", one_prototype),
                                                             ("healthy", healthy)]}
    assert stats["uniform"] == pytest.approx({"teacher_entropy": math.log(16), "teacher_batch_entropy": math.log(16)})
    assert stats["one"] == pytest.approx({"teacher_entropy": 0.0, "teacher_batch_entropy": 0.0}, abs=1e-6)
    assert stats["healthy"] == pytest.approx({"teacher_entropy": 0.0, "teacher_batch_entropy": math.log(8)}, abs=1e-6)


def test_stripes_and_views_geometry():
    assert stripe_bounds(256, 3) == [(0, 128), (64, 192), (128, 256)]
    assert stripe_bounds(100, 2) == [(0, 66), (33, 99)]  # rounded down, as the original crops
    config = ViewConfig(image_size=(128, 64), local_crops_per_stripe=2)
    views = PassViews(config)(Image.new("L", (40, 90)))
    assert views["global_views"].shape == (2, 3, 128, 64) and views["local_views"].shape == (6, 3, 64, 32)


def test_local_crops_come_from_their_stripe():
    # An image whose rows encode their height: a local crop's values reveal the rows it was taken from.
    rows = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 128, axis=1)
    image = Image.fromarray(np.stack([rows] * 3, axis=-1))
    views = PassViews(ViewConfig(local_crops_per_stripe=4))
    torch.manual_seed(0)
    for _ in range(5):
        _, locals_ = views.crops(image)
        for index, crop in enumerate(locals_):
            top, bottom = stripe_bounds(256, 3)[index // 4]
            values = np.asarray(crop)[..., 0]
            assert top - 1 <= values.min() and values.max() <= bottom  # bicubic may overshoot by one level


def test_colour_jitter_and_grayscale_can_be_turned_off():
    image = Image.new("RGB", (64, 128), (200, 40, 40))
    torch.manual_seed(0)
    plain = PassViews(ViewConfig(image_size=(128, 64), colour_jitter=0.0, grayscale_p=0.0))(image)["local_views"]
    jittered = PassViews(ViewConfig(image_size=(128, 64)))(image)["local_views"]
    colour = plain.mean(dim=(-2, -1))
    assert torch.allclose(colour, colour[:1].expand_as(colour), atol=1e-4)  # every local view keeps the red
    spread = jittered.mean(dim=(-2, -1)).std(dim=0)
    assert spread.max() > 0.1


def test_seeded_views_are_reproducible_and_vary_with_epoch_and_index():
    rng = np.random.default_rng(0)
    images = [{"image": Image.fromarray(rng.integers(0, 255, (64, 32, 3), np.uint8))} for _ in range(3)]
    data = SeededTransformDataset(images, PassViews(ViewConfig(image_size=(64, 32))), seed=7)
    first = data[1]["local_views"]
    torch.manual_seed(123)  # the global RNG must not matter
    assert torch.equal(data[1]["local_views"], first)
    data.set_epoch(1)
    assert not torch.equal(data[1]["local_views"], first)
    assert sample_seed(7, 0, 1) != sample_seed(7, 0, 2) != sample_seed(8, 0, 1)


def test_dino_head_normalises_and_freezes_the_prototype_norm():
    head = DINOHead(16, 32, hidden_dim=8, bottleneck_dim=4)
    out = head(torch.randn(5, 16))
    assert out.shape == (5, 32)
    weight = head.last_layer.weight
    assert torch.allclose(weight.norm(dim=1), torch.ones(32), atol=1e-5)
    frozen = head.last_layer.parametrizations.weight.original0
    assert not frozen.requires_grad
    heads = PartAwareHeads(16, 32, hidden_dim=8, bottleneck_dim=4, num_parts=3)
    assert len(heads.heads) == 4 and len(heads.last_layer_parameters()) == 4


def test_batched_student_forward_equals_per_stripe_calls():
    backbone = PassVisionTransformer(img_size=(64, 32), embed_dim=32, depth=2, num_heads=2, dynamic_img_size=True)
    model = PartAwareDINO(backbone, PartAwareHeads(32, 16, hidden_dim=8, bottleneck_dim=8)).eval()
    global_views, local_views = torch.randn(4, 3, 64, 32), torch.randn(12, 3, 32, 16)
    stripes = torch.arange(3).repeat_interleave(4)
    with torch.no_grad():
        out = model(global_views, local_views, stripes)
        tokens = backbone.forward_features(global_views)
        for t in range(4):
            assert torch.allclose(out.global_out[t], model.heads.apply_head(t, tokens[:, t]), atol=1e-6)
        for k in range(3):
            rows = slice(4 * k, 4 * k + 4)
            local = backbone.forward_local(local_views[rows], k)
            assert torch.allclose(out.local_cls[rows], model.heads.apply_head(0, local[:, 0]), atol=1e-6)
            assert torch.allclose(out.local_part[rows], model.heads.apply_head(1 + k, local[:, 1]), atol=1e-6)
        assert torch.allclose(model(global_views), out.global_out, atol=1e-6)


def test_dino_ablation_never_uses_the_part_tokens():
    backbone = PassVisionTransformer(img_size=(64, 32), embed_dim=32, depth=2, num_heads=2, dynamic_img_size=True)
    heads = PartAwareHeads(32, 16, hidden_dim=8, bottleneck_dim=8, num_parts=0)
    model = PartAwareDINO(backbone, heads, use_parts=False)
    global_views, local_views = torch.randn(4, 3, 64, 32), torch.randn(12, 3, 32, 16)
    out = model(global_views, local_views, torch.arange(3).repeat_interleave(4))
    assert out.global_out.shape == (1, 4, 16) and out.local_cls.shape == (12, 16) and out.local_part is None
    assert backbone.forward_local(global_views, None).shape == (4, 1 + 8, 32)  # CLS + 4x2 patches, no [PART]
    (out.global_out.sum() + out.local_cls.sum()).backward()
    assert backbone.reg_token.grad is None and backbone.cls_token.grad is not None
    with pytest.raises(ValueError, match="1 \\+ num_parts"):
        PartAwareDINO(backbone, PartAwareHeads(32, 16, hidden_dim=8, bottleneck_dim=8), use_parts=False)


def test_schedules():
    lr = cosine_schedule(2e-3, 1e-6, total_steps=100, warmup_steps=10)
    assert len(lr) == 100 and lr[0] == 0 and lr[10] == pytest.approx(2e-3) and lr[-1] == pytest.approx(1e-6, abs=1e-6)
    assert np.all(np.diff(lr[:10]) > 0) and np.all(np.diff(lr[10:]) <= 0)
    momentum = cosine_schedule(0.996, 1.0, total_steps=50)
    assert momentum[0] == pytest.approx(0.996) and momentum[-1] < 1.0 and np.all(np.diff(momentum) >= 0)
    assert warmup_then_constant(0.04, 0.02, 5, 3).tolist() == pytest.approx([0.02, 0.03, 0.04, 0.04, 0.04])
    with pytest.raises(ValueError, match="warmup_steps"):
        cosine_schedule(1, 0, total_steps=5, warmup_steps=6)
    # Cluster-contrast: x0.1 every 20 epochs of 200 steps.
    lr = step_schedule(3.5e-4, total_steps=50 * 200, steps_per_decay=20 * 200)
    assert lr[3999] == pytest.approx(3.5e-4) and lr[4000] == pytest.approx(3.5e-5) and lr[-1] == pytest.approx(3.5e-6)


def test_optimizer_helpers():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    decay, no_decay = weight_decay_groups(model)
    assert [p.shape for p in decay["params"]] == [(3, 4)] and len(no_decay["params"]) == 3
    optimizer = torch.optim.AdamW([decay, no_decay])
    set_hyperparameters(optimizer, lr=0.1, weight_decay=0.4)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.4, 0.0]
    model[0].weight.grad = torch.full((3, 4), 10.0)
    model[0].bias.grad = torch.full((3,), 0.1)
    norms = clip_gradients_per_tensor([p.grad for p in model.parameters() if p.grad is not None], max_norm=3.0)
    assert norms[0] == pytest.approx(np.sqrt(12) * 10, rel=1e-5)
    assert model[0].weight.grad.norm() == pytest.approx(3.0, rel=1e-4)
    assert torch.allclose(model[0].bias.grad, torch.full((3,), 0.1))  # under the limit: untouched
    teacher = torch.nn.Linear(2, 2)
    student = torch.nn.Linear(2, 2)
    expected = teacher.weight.detach() * 0.9 + student.weight.detach() * 0.1
    ema_update(teacher, student, 0.9)
    assert torch.allclose(teacher.weight, expected)
