"""Fine-tuning as a unit: ``ReidFinetuner`` from an original ``transformer_N.pth`` against a loop written from
docs/recipes.md section 2, its parameter groups and learning rates, each loss term, and the original names both ways."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from reference_pass import (
    ReferencePassViT,
    ReferenceReID,
    original_finetuning_groups,
    original_finetuning_lr,
    reference_finetuning_step,
    reference_triplet,
)
from script_runs import ROOT, run_script

from training import ReidFinetuner, load_finetuning_start
from training.engine.recipes import RECIPES

NUM_IDS, WIDTH, HEADS = 4, 64, 2
# The paper's ViT-S recipe (SGD, biases at 2x, per-epoch warm-up + cosine) on a 2-block, 64-wide, 2-head ViT at
# 64x32, in fp32 without drop path so that both sides compute the same function.
SETTINGS = dataclasses.replace(RECIPES["finetune"]["market_vit_small_256"].settings, image_size=(64, 32),
                               drop_path_rate=0.0, mixed_precision="no")
EPOCHS = (0, 25)  # one step in the warm-up, one in the cosine


def original_model(seed: int = 0) -> ReferenceReID:
    torch.manual_seed(seed)
    return ReferenceReID(ReferencePassViT(dim=WIDTH, depth=2, heads=HEADS, grid=(4, 2)), NUM_IDS)


def batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(8, 3, 64, 32, generator=generator), torch.arange(NUM_IDS).repeat_interleave(2)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("original") / "transformer_120.pth"
    torch.save(original_model().state_dict(), path)
    return path


def test_a_width_64_does_not_divide_needs_its_head_count(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "narrow.pth"
    torch.save(ReferenceReID(ReferencePassViT(dim=48, depth=1, heads=2, grid=(4, 2)), 3).state_dict(), path)
    with pytest.raises(ValueError, match=r"narrow\.pth: .*width 48 is not a multiple of 64.*num_heads="):
        load_finetuning_start(path)
    assert load_finetuning_start(path, num_heads=2).backbone_config["num_attention_heads"] == 2


def test_two_steps_from_an_original_checkpoint_equal_the_loop_reference(checkpoint):
    start = load_finetuning_start(checkpoint, num_heads=HEADS)
    assert start.describe() == f"{checkpoint} (original fine-tuned ReID model, {NUM_IDS} identities)"
    settings = start.settings_for(SETTINGS)
    assert settings.preset == "embed_dim=64,depth=2,num_heads=2" and start.keeps_head(settings)
    finetuner = ReidFinetuner.build(settings, start.model(settings), Accelerator(cpu=True))

    reference = original_model()
    optimizer = torch.optim.SGD(original_finetuning_groups(reference, SETTINGS.lr, SETTINGS.weight_decay,
                                                           SETTINGS.bias_lr_factor, SETTINGS.weight_decay_bias),
                                lr=SETTINGS.lr, momentum=SETTINGS.momentum)
    for step, epoch in enumerate(EPOCHS):
        images, labels = batch(step)
        learning_rates = [original_finetuning_lr(SETTINGS.lr, group["peak"], epoch, SETTINGS.epochs,
                                                 SETTINGS.warmup_epochs) for group in optimizer.param_groups]
        cross_entropy, triplet = reference_finetuning_step(reference, optimizer, images, labels, learning_rates)
        outcome = finetuner.step(images, labels, epoch)
        assert outcome.optimizer_stepped
        assert outcome.cross_entropy.item() == pytest.approx(cross_entropy, rel=1e-5)
        assert outcome.triplet.item() == pytest.approx(triplet, rel=1e-5)
        assert outcome.loss.item() == pytest.approx(cross_entropy + triplet, rel=1e-5)
        # Every tensor of the original layout, after each step (the unused base.fc is not kept).
        expected = {k: v for k, v in reference.state_dict().items() if not k.startswith("base.fc.")}
        got = finetuner.original_state_dict()
        assert got.keys() == expected.keys()
        for key, tensor in expected.items():
            torch.testing.assert_close(got[key], tensor, rtol=1e-5, atol=1e-6, msg=f"step {step}: {key}")


def test_groups_learning_rates_and_frozen_tensors_are_the_originals():
    model = load_finetuning_start("pass_vit_tiny").model(SETTINGS, num_labels=NUM_IDS)
    finetuner = ReidFinetuner.build(SETTINGS, model, Accelerator(cpu=True))
    names = dict(model.named_parameters())
    for epoch in (0, 19, 20, 119):
        values = finetuner.parameter_hyperparameters(epoch)
        assert set(values) == set(names)  # every trainable tensor, none else
        for name, (lr, weight_decay) in values.items():
            peak = SETTINGS.lr * (2.0 if "bias" in name else 1.0)
            assert lr == pytest.approx(original_finetuning_lr(SETTINGS.lr, peak, epoch, 120, 20), rel=1e-9), name
            assert weight_decay == 1e-4
    # The necks' biases are frozen at 0: buffers, in no group; the classifier has no bias.
    for neck in model.neck_modules():
        assert "bias" not in dict(neck.named_parameters()) and torch.equal(neck.bias, torch.zeros_like(neck.bias))
    assert "classifier.bias" not in names
    with pytest.raises(ValueError, match="epoch 120 is outside the 120 epochs"):
        finetuner.group_learning_rates(120)


def test_each_loss_term_by_hand_and_the_weights():
    settings = dataclasses.replace(SETTINGS, preset="pass_vit_tiny", ce_weight=0.5, triplet_weight=2.0,
                                   triplet_margin=0.3)
    model = load_finetuning_start("pass_vit_tiny").model(settings, num_labels=NUM_IDS)
    images, labels = batch(7)
    model.train()
    with torch.no_grad():
        out = model(images)
    finetuner = ReidFinetuner.build(settings, model, Accelerator(cpu=True))
    outcome = finetuner.step(images, labels, epoch=3)
    assert outcome.cross_entropy.item() == pytest.approx(F.cross_entropy(out.logits, labels).item(), rel=1e-5)
    expected_triplet = reference_triplet(out.features_before_neck, labels, margin=0.3).item()
    assert outcome.triplet.item() == pytest.approx(expected_triplet, rel=1e-5)
    assert outcome.loss.item() == pytest.approx(0.5 * outcome.cross_entropy.item() + 2.0 * expected_triplet, rel=1e-6)


def test_original_names_round_trip(checkpoint):
    original = {k: v for k, v in torch.load(checkpoint).items() if not k.startswith("base.fc.")}
    start = load_finetuning_start(checkpoint, num_heads=HEADS)
    settings = start.settings_for(SETTINGS)
    finetuner = ReidFinetuner.build(settings, start.model(settings), Accelerator(cpu=True))
    state = finetuner.original_state_dict()
    assert state.keys() == original.keys()
    assert all(torch.equal(state[key], tensor) for key, tensor in original.items())
    # The single-neck layout of the original USL heads maps to one fused neck and back.
    single = dataclasses.replace(settings, neck="single")
    model = start.model(single, num_labels=0)
    assert not start.keeps_head(single, 0)
    assert sorted(k for k in ReidFinetuner.build(single, model, Accelerator(cpu=True)).original_state_dict()
                  if not k.startswith("base.")) == [f"bottleneck.{name}" for name in (
                      "bias", "num_batches_tracked", "running_mean", "running_var", "weight")]


def test_finetune_script_keeps_the_head_of_an_original_checkpoint_with_the_same_identities(tmp_path):
    torch.manual_seed(1)
    toy = ReferenceReID(ReferencePassViT(dim=192, depth=12, heads=3, grid=(4, 2)), 6)  # the toy data has 6 ids
    path = tmp_path / "transformer_120.pth"
    torch.save(toy.state_dict(), path)
    args = ["--dataset", "synthetic:train_ids=6,test_ids=4,distractors=3,unlabelled=0,image_size=64x32",
            "--image_size", "64", "32", "--global_batch_size", "8", "--num_instances", "2", "--num_workers", "0",
            "--report_to", "none", "--eval_batch_size", "16", "--max_steps", "1", "--init", str(path)]
    result = run_script(ROOT / "training" / "finetune.py", [*args, "--output_dir", str(tmp_path / "same")])
    assert f"--init {path} (original fine-tuned ReID model, 6 identities): backbone, necks and classifier kept" \
           in result.stdout
    other = tmp_path / "transformer_9.pth"
    torch.save(ReferenceReID(ReferencePassViT(dim=192, depth=12, heads=3, grid=(4, 2)), 9).state_dict(), other)
    args[-1] = str(other)
    result = run_script(ROOT / "training" / "finetune.py", [*args, "--output_dir", str(tmp_path / "other")])
    assert "backbone kept, new necks and classifier (the run has 6 identities, the checkpoint 9)" in result.stdout
