"""Continuing pre-training from the original checkpoints: loading every source strictly, and two steps of
``PassPretrainer`` from an original-layout checkpoint against a loop written from docs/recipes.md section 1."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import timm
import torch
from accelerate import Accelerator
from reference_pass import (
    ReferenceMultiHead,
    ReferencePassDINO,
    ReferencePassViT,
    original_param_groups,
    original_pretraining_checkpoint,
    reference_pretraining_step,
)
from script_runs import ROOT, run_script
from transformers import AutoModel

from training.engine.optim import clip_gradients_per_tensor
from training.engine.recipes import RECIPES
from training.pretraining.checkpoints import (
    centers_to_original,
    load_pretraining_start,
    original_checkpoint,
    to_original_layout,
)
from training.pretraining.networks import gradients_as_original_tensors, new_networks
from training.pretraining.step import PassPretrainer, PretrainSchedules

BATCH, OUT, HIDDEN, BOTTLENECK = 2, 64, 32, 16
# The paper's ViT-S recipe on a ViT-tiny at 64x32 (locals 32x16): every original behaviour, CPU-sized. A clipping
# limit this low clips most tensors, the position rows and [PART] tokens among them, each by its own norm.
CLIP = 0.02
SETTINGS = dataclasses.replace(
    RECIPES["pretrain"]["pass_vit_small_lup"].settings, image_size=(64, 32), local_image_size=(32, 16),
    drop_path_rate=0.0, global_batch_size=BATCH, warmup_epochs=0, mixed_precision="no", clip_grad=CLIP,
)
STEPS_PER_EPOCH = 2


def reference_networks(
    seed: int = 0, dim: int = 192, depth: int = 12, heads: int = 3
) -> tuple[ReferencePassDINO, ReferencePassDINO]:
    def network() -> ReferencePassDINO:
        backbone = ReferencePassViT(dim=dim, depth=depth, heads=heads, grid=(4, 2), pretraining_positions=True)
        return ReferencePassDINO(backbone, ReferenceMultiHead(dim, OUT, HIDDEN, BOTTLENECK))

    torch.manual_seed(seed)
    student, teacher = network(), network()
    teacher.load_state_dict(student.state_dict())  # old-style weight norm cannot be deep-copied
    return student, teacher.requires_grad_(False)


def views(seed: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return ([torch.randn(BATCH, 3, 64, 32, generator=generator) for _ in range(2)],
            [torch.randn(BATCH, 3, 32, 16, generator=generator) for _ in range(9)])


@pytest.fixture(scope="module")
def original_run(tmp_path_factory):
    """An original-layout checkpoint after one reference step (iteration 0), and the reference state."""
    student, teacher = reference_networks()
    centers = [torch.randn(1, OUT) * 0.1 for _ in range(4)]
    optimizer = torch.optim.AdamW(original_param_groups(student))
    schedules = PretrainSchedules.from_settings(SETTINGS, STEPS_PER_EPOCH)

    def step(iteration: int) -> float:
        nonlocal centers
        loss, centers = reference_pretraining_step(
            # numpy scalars, as the original writes them into its optimizer (and so into checkpoint.pth)
            student, teacher, centers, optimizer, *views(iteration), lr=schedules.lr[iteration],
            weight_decay=float(schedules.weight_decay[iteration]), momentum=float(schedules.momentum[iteration]),
            teacher_temp=float(schedules.teacher_temp[iteration // STEPS_PER_EPOCH]),
            epoch=iteration // STEPS_PER_EPOCH, clip_grad=CLIP,
        )
        return loss

    step(0)
    path = tmp_path_factory.mktemp("original") / "checkpoint.pth"
    torch.save(original_pretraining_checkpoint(student, teacher, centers, optimizer, epoch=0), path)
    losses = [step(1), step(2)]  # iteration 1: epoch 0, last layers frozen; iteration 2: epoch 1
    return path, {"student": student, "teacher": teacher, "centers": centers, "losses": losses}


def test_two_steps_from_an_original_checkpoint_equal_the_loop_reference(original_run):
    path, reference = original_run
    start = load_pretraining_start(str(path))
    assert start.describe() == f"{path} (original pre-training checkpoint, epoch 0): student, teacher, 4 heads and " \
                               "centers loaded"
    settings = start.settings_for(SETTINGS)
    assert (settings.preset, settings.out_dim, settings.head_hidden_dim, settings.head_bottleneck_dim) == (
        "pass_vit_tiny", OUT, HIDDEN, BOTTLENECK)
    student, teacher, centers = start.networks(settings)
    trainer = PassPretrainer.build(settings, STEPS_PER_EPOCH, Accelerator(cpu=True), networks=(student, teacher),
                                   centers=centers)
    start.load_optimizer(trainer.optimizer, trainer.student_network)
    losses = [trainer.step(*views(iteration), iteration=iteration).loss.item() for iteration in (1, 2)]

    assert losses == pytest.approx(reference["losses"], rel=1e-5)
    for role, ours in (("student", trainer.student_network), ("teacher", trainer.teacher)):
        expected = reference[role].state_dict()
        got = to_original_layout(ours.state_dict(), ours)
        assert got.keys() == expected.keys()
        for key, tensor in expected.items():
            torch.testing.assert_close(got[key], tensor, rtol=1e-5, atol=1e-6, msg=f"{role} {key}")
    expected_centers = centers_to_original(torch.cat(reference["centers"]))
    for key, tensor in centers_to_original(trainer.centers.centers).items():
        torch.testing.assert_close(tensor, expected_centers[key], rtol=1e-5, atol=1e-6)


def test_the_frozen_last_layers_are_skipped_not_zeroed(original_run):
    # At iteration 1 (epoch 0) the prototype layers have no gradient: AdamW neither moves nor decays them.
    path, _ = original_run
    start = load_pretraining_start(str(path))
    settings = start.settings_for(SETTINGS)
    student, teacher, centers = start.networks(settings)
    before = student.heads.heads[2].last_layer.parametrizations.weight.original1.detach().clone()
    trainer = PassPretrainer.build(settings, STEPS_PER_EPOCH, Accelerator(cpu=True), networks=(student, teacher),
                                   centers=centers)
    start.load_optimizer(trainer.optimizer, trainer.student_network)
    trainer.step(*views(1), iteration=1)
    layer = trainer.student_network.heads.heads[2].last_layer.parametrizations.weight.original1
    assert torch.equal(layer.detach(), before) and layer not in trainer.optimizer.state


def _broken(path: Path, tmp_path: Path, change) -> str:
    checkpoint = torch.load(path, weights_only=False)
    change(checkpoint)
    broken = tmp_path / "broken.pth"
    torch.save(checkpoint, broken)
    return str(broken)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c["teacher"].pop("head.mlp_pt2.2.weight"), r"missing keys \(1\): head\.mlp_pt2\.2\.weight"),
        (lambda c: c["student"].update({"module.head.extra.weight": torch.zeros(1)}),
         r"\(student\).*unexpected keys \(1\): head\.extra\.weight"),
        (lambda c: c["teacher"].update({"backbone.part_token2": torch.zeros(1, 1, 100)}),
         r"mis-shaped \(1\): backbone\.part_token2: checkpoint \(1, 1, 100\) vs model \(1, 1, 192\)"),
        (lambda c: c["dino_loss"].pop("center_pt3"), r"'dino_loss' lacks \['center_pt3'\]"),
        (lambda c: c.pop("teacher"), "needs a 'teacher' state dict"),
    ],
)
def test_bad_checkpoints_are_refused_naming_the_key(original_run, tmp_path, change, message):
    with pytest.raises(ValueError, match=message):
        load_pretraining_start(_broken(original_run[0], tmp_path, change))


def test_a_pickle_outside_the_allow_list_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"student": {}, "teacher": {}, "hook": Path("x")}, path)
    with pytest.raises(ValueError, match="refusing to unpickle"):
        load_pretraining_start(str(path))


def test_a_flat_backbone_starts_new_heads(tmp_path):
    student, _ = reference_networks(1)
    path = tmp_path / "pass_vit_tiny_full.pth"
    torch.save(student.backbone.state_dict(), path)
    start = load_pretraining_start(str(path))
    assert start.describe().endswith("(backbone): backbone loaded into student and teacher; new heads and centers")
    settings = start.settings_for(SETTINGS)
    ours, teacher, centers = start.networks(settings)
    assert centers is None and settings.out_dim == SETTINGS.out_dim  # heads from the settings
    expected = student.backbone.state_dict()
    got = to_original_layout(ours.state_dict(), ours)
    for key, tensor in expected.items():
        assert torch.equal(got[f"backbone.{key}"], tensor), key
    assert torch.equal(teacher.backbone.cls_token, ours.backbone.cls_token)


def test_original_checkpoint_round_trip(original_run, tmp_path):
    start = load_pretraining_start(str(original_run[0]))
    student, teacher, centers = start.networks(start.settings_for(SETTINGS))
    written = tmp_path / "again.pth"
    torch.save(original_checkpoint(student, teacher, centers.centers, epoch=3), written)
    again = load_pretraining_start(str(written))
    assert again.epoch == 3 and torch.equal(again.centers, start.centers)
    assert all(torch.equal(again.teacher[k], v) for k, v in start.teacher.items())


SCRIPT = ROOT / "training" / "pretrain.py"
TOY = ["--data", "synthetic:train_ids=2,test_ids=1,unlabelled=16,distractors=0,image_size=64x32",
       "--image_size", "64", "32", "--local_image_size", "32", "16", "--global_batch_size", "4", "--num_workers",
       "0", "--report_to", "none", "--skip_frozen_eval"]


def test_any_vit_shape_continues_and_its_model_loads(tmp_path):
    # A 48-wide, 2-block, 2-head ViT: no preset, and a width 64 does not divide.
    student, teacher = reference_networks(2, dim=48, depth=2, heads=2)
    centers = [torch.randn(1, OUT) * 0.1 for _ in range(4)]
    optimizer = torch.optim.AdamW(original_param_groups(student))
    path = tmp_path / "checkpoint.pth"
    torch.save(original_pretraining_checkpoint(student, teacher, centers, optimizer, epoch=0, arch="custom"), path)
    with pytest.raises(ValueError, match=r"width 48 is not a multiple of 64.*--num_heads"):
        load_pretraining_start(str(path))
    start = load_pretraining_start(str(path), num_heads=2)
    settings = start.settings_for(SETTINGS)
    assert settings.preset == "embed_dim=48,depth=2,num_heads=2"
    networks = start.networks(settings)
    assert networks[0].backbone.blocks[0].attn.num_heads == 2
    out = tmp_path / "run"
    result = run_script(SCRIPT, [*TOY, "--recipe", "pass_vit_small_lup", "--init", str(path), "--num_heads", "2",
                                 "--max_steps", "1", "--output_dir", str(out)])
    assert "preset pass_vit_small -> embed_dim=48,depth=2,num_heads=2 (from --init)" in result.stdout
    folder = out / "pass-vit-pretrained"
    model = AutoModel.from_pretrained(folder)
    assert (model.config.hidden_size, model.config.num_hidden_layers, model.config.num_attention_heads) == (48, 2, 2)
    timm_model = timm.create_model(f"local-dir:{folder}", pretrained=True)
    assert timm_model.blocks[0].attn.num_heads == 2 and timm_model(torch.randn(1, 3, 64, 32)).shape == (1, 96)
    failed = run_script(SCRIPT, [*TOY, "--init", str(path), "--max_steps", "1", "--output_dir", str(tmp_path / "x")],
                        check=False)
    assert failed.returncode != 0 and "--num_heads" in failed.stderr and "Traceback" not in failed.stderr


def test_clipping_is_per_tensor_of_the_original_layout():
    # Rows of reg_token / pos_embed are the original's separate tensors: each is clipped by its own norm.
    network, _ = new_networks(dataclasses.replace(SETTINGS, preset="pass_vit_tiny", out_dim=OUT,
                                                  head_hidden_dim=HIDDEN, head_bottleneck_dim=BOTTLENECK))
    pos_embed = network.backbone.pos_embed
    pos_embed.grad = torch.zeros_like(pos_embed)
    pos_embed.grad[:, 0] = 10.0  # the CLS position: far over the limit
    pos_embed.grad[:, 1] = 1e-4  # PART1's position: under it
    gradients = gradients_as_original_tensors(network)
    assert [tuple(g.shape) for g in gradients] == [(1, 1, 192)] * 4 + [(1, 8, 192)]
    clip_gradients_per_tensor(gradients, max_norm=3.0)
    assert pos_embed.grad[:, 0].norm().item() == pytest.approx(3.0, rel=1e-5)
    assert torch.all(pos_embed.grad[:, 1] == 1e-4)  # one merged norm would have scaled it down too


def test_pretrain_continues_an_original_checkpoint_and_a_pass_hub_run(original_run, tmp_path):
    out = tmp_path / "continued"
    result = run_script(SCRIPT, [*TOY, "--recipe", "pass_vit_small_lup", "--init", str(original_run[0]),
                                 "--init_optimizer", "--epochs", "2", "--warmup_epochs", "0",
                                 "--output_dir", str(out)])
    assert "student, teacher, 4 heads and centers loaded" in result.stdout
    assert "preset pass_vit_small -> pass_vit_tiny (from --init)" in result.stdout
    assert "continuing at epoch 0 (step 0)" in result.stdout
    results = json.loads((out / "results.json").read_text())
    assert results["steps"] == 8 and results["overridden"]["out_dim"] == {"recipe": 65536, "given": 64,
                                                                            "by": "--init"}
    # The run's own folder continues in turn: its latest checkpoint, heads and centers included.
    again = tmp_path / "again"
    result = run_script(SCRIPT, [*TOY, "--init", str(out), "--max_steps", "1", "--output_dir", str(again)])
    assert f"--init {out} (pass-hub pre-training run, epoch 2): student, teacher, 4 heads and centers" in result.stdout
    result = run_script(SCRIPT, [*TOY, "--init", str(tmp_path / "missing.pth"), "--output_dir",
                                 str(tmp_path / "x")], check=False)
    assert result.returncode != 0 and "no such file" in result.stderr and "Traceback" not in result.stderr


def test_a_start_at_another_grid_is_resampled_once_where_it_is_loaded(original_run):
    # The original checkpoint is laid out for 64x32 inputs (4x2 patches); the run trains at 128x64 (8x4).
    start = load_pretraining_start(str(original_run[0]))
    settings = dataclasses.replace(start.settings_for(SETTINGS), image_size=(128, 64), local_image_size=(64, 32))
    assert start.grid_change(settings) == ("4x2", "8x4") and start.grid_change(start.settings_for(SETTINGS)) is None
    student, teacher, _ = start.networks(settings)
    for network, state in ((student, start.student), (teacher, start.teacher)):
        table = network.backbone.pos_embed
        assert table.shape[1] == 4 + 8 * 4 and network.backbone.patch_embed.grid_size == (8, 4)
        assert torch.equal(table[:, :4], state["backbone.pos_embed"][:, :4])  # CLS and PART positions kept
    with pytest.raises(ValueError, match=r"laid out for 64x32 inputs \(4x2 patches\).*--image_size 64 32.*"
                                         r"drop --init_optimizer"):
        start.check_run(settings, init_optimizer=True)
    start.check_run(settings, init_optimizer=False)


def test_pretrain_at_another_size_writes_a_model_of_that_size(original_run, tmp_path):
    out = tmp_path / "bigger"
    bigger = ["--image_size", "96", "48"]
    result = run_script(SCRIPT, [*TOY, *bigger, "--recipe", "pass_vit_small_lup", "--init", str(original_run[0]),
                                 "--max_steps", "2", "--output_dir", str(out)])
    assert "its position table resampled from 4x2 to 6x3 patches (--image_size 96 48)" in result.stdout
    folder = out / "pass-vit-pretrained"
    model = AutoModel.from_pretrained(folder).eval()
    assert model.config.image_size == (96, 48) and model.vit.pos_embed.shape[1] == 4 + 6 * 3
    timm_model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    pixels = torch.randn(2, 3, 96, 48)
    with torch.no_grad():
        torch.testing.assert_close(timm_model(pixels), model(pixels).pooler_output, rtol=1e-4, atol=1e-5)
    # A true resume keeps the checkpoint's grid: refused before the first step, in one line.
    failed = run_script(SCRIPT, [*TOY, *bigger, "--init", str(original_run[0]), "--init_optimizer",
                                 "--output_dir", str(tmp_path / "refused")], check=False)
    assert failed.returncode != 0 and "Traceback" not in failed.stderr
    assert "resume it at --image_size 64 32, or drop --init_optimizer" in failed.stderr
    assert not (tmp_path / "refused").exists()
