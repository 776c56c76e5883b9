"""pass-hub's training steps beside the original PASS code's own steps, tensor by tensor, on the CPU.

    pip install yacs          # the original fine-tuning code's config library
    python benchmarks/parity_with_original.py --original /path/to/PASS-reID [--part pretrain|finetune|all]

``--original`` is a checkout of CASIA-IVA-Lab/PASS-reID; its code is imported from there at run time (see
``benchmarks/original_code.py`` for the run-time shims torch 2.x and a CPU need). For each part, both sides start
from the same random weights, written as an original checkpoint and read back by pass-hub's documented loader:

* pre-training: the original ``train_one_epoch`` (``PASS/main_pass.py``) takes one step from random weights, its
  state is saved as ``checkpoint.pth`` (student, teacher, optimizer, centers), and ``load_pretraining_start`` +
  ``PassPretrainer.step`` take the next two steps beside it, at the peak of the lr schedule. The original side runs
  the flags of ``PASS/script/vit-s_full_lup-pass.sh`` parsed by the original's own parser, pass-hub the recipe
  ``pass_vit_small_lup``; both with the sizes below changed alike.
* fine-tuning: the original ``make_model`` / ``make_loss`` / ``make_optimizer`` / ``create_scheduler`` of
  ``configs/market/vit_small.yml`` build a model whose random state is saved as ``transformer_120.pth``;
  ``load_finetuning_start`` + ``ReidFinetuner.step`` and the original ``do_train`` then take a step in the last
  warm-up epoch and one in the first cosine epoch. pass-hub runs the recipe ``market_vit_small_256``.

What differs from the released runs, alike on both sides: a small ViT (``--width``, ``--depth``, ``--heads``;
``--vit-s`` for the paper's ViT-S/16), small inputs and heads, fp32 (no GPU, so no autocast), no drop path (its
random masks are drawn differently), one iteration per pre-training epoch, the pre-training lr scaled to the small
batch so that the peak is the released run's (2e-3), and ``freeze_last_layer`` 11 so that the first compared
pre-training step has its prototype layers frozen and the second does not.

Printed: each loss term of both sides, the largest difference of the learning rates, weight decays and other
schedule values, and the largest absolute difference of every tensor after each step (original names), beside how
far the original's step moved it.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import functools
import io
import shlex
import sys
import tempfile
import types
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from original_code import OriginalCheckout, Wrapped, as_on_one_gpu, faiss_on_cpu  # noqa: E402

from pass_hub.evaluation.reranking import jaccard_distance  # noqa: E402
from pass_hub.models.convert import original_reid_pieces  # noqa: E402
from training import (  # noqa: E402
    ClusterContrastTrainer,
    PassPretrainer,
    ReidFinetuner,
    centers_to_original,
    load_finetuning_start,
    load_pretraining_start,
    load_usl_start,
    to_original_layout,
)
from training.engine.recipes import RECIPES  # noqa: E402

PRETRAINING_SCRIPT = "PASS/script/vit-s_full_lup-pass.sh"
# Pre-training: one original step at epoch 9 (the checkpoint), then epochs 10 and 11 at the peak lr; the prototype
# layers stay frozen until epoch 11, so that the first compared step has them frozen and the second does not.
PRETRAINING_EPOCHS = (9, 10, 11)
FROZEN_UNTIL = 11
# The released clipping limit (3.0 per tensor) never binds on a small random model; this one clips most tensors,
# each [PART] token and position row by its own norm as the original's separate tensors are.
CLIP_GRAD = 0.01
# Fine-tuning: the last warm-up epoch and the first cosine epoch (both at about the peak lr).
FINETUNING_EPOCHS = (19, 20)
FINETUNING_CONFIG = "market/vit_small.yml"
# Cluster-contrast: the last epoch at the full lr and the first after StepLR's decay; clustering sized for a few dozen
# images (the released k1 30 needs more images than that), DBSCAN's min_samples 4 as the original hard-codes it.
USL_EPOCHS = (19, 20)
USL_CLUSTERING = {"eps": 0.5, "min_samples": 4, "k1": 6, "k2": 2}
USL_PEOPLE, USL_COPIES, USL_BATCH = 8, 4, 16


@dataclasses.dataclass(frozen=True)
class Size:
    """The model and inputs both sides run."""

    width: int
    depth: int
    heads: int
    image_size: tuple[int, int]
    local_size: tuple[int, int]
    out_dim: int
    head_hidden: int
    head_bottleneck: int
    batch: int
    identities: int

    def describe(self) -> str:
        return (f"ViT width {self.width}, depth {self.depth}, {self.heads} heads; input {self.image_size[0]}x"
                f"{self.image_size[1]} (locals {self.local_size[0]}x{self.local_size[1]}); heads {self.head_hidden}-"
                f"{self.head_bottleneck}-{self.out_dim}; batch {self.batch}; fp32, no drop path")


class Report:
    """Loss terms, schedule values and per-tensor differences of both sides, step by step, each difference beside
    how far the original's step moved that tensor (a difference is only small next to a step that moves)."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.steps: list[str] = []
        self.losses: list[dict[str, tuple[float, float]]] = []
        self.schedules: list[dict[str, float]] = []
        self.tensors: list[dict[str, tuple[float, float]]] = []

    def add_step(self, name: str, losses: dict[str, tuple[float, float]], schedules: dict[str, float],
                 ours: Mapping[str, torch.Tensor], original: Mapping[str, torch.Tensor],
                 original_before: Mapping[str, torch.Tensor]) -> None:
        if ours.keys() != original.keys():
            raise AssertionError(f"the two sides name different tensors: only pass-hub {sorted(ours.keys() - original)}"
                                 f", only original {sorted(original.keys() - ours.keys())}")
        self.steps.append(name)
        self.losses.append(losses)
        self.schedules.append(schedules)
        # How far the step moved a tensor: floating-point tensors only (a batch counter moves by 1).
        self.tensors.append({key: (largest(ours[key], original[key]), largest(original[key], original_before[key])
                                   if original[key].is_floating_point() else 0.0) for key in original})

    def largest(self, step: int, prefix: str = "") -> tuple[float, float]:
        """The largest difference and the largest move of the tensors whose name starts with ``prefix``."""
        chosen = [value for key, value in self.tensors[step].items() if key.startswith(prefix)]
        return max(diff for diff, _ in chosen), max(moved for _, moved in chosen)

    def print(self, every_tensor: bool, groups: tuple[str, ...]) -> None:
        print(f"\n== {self.title} ==")
        for step, name in enumerate(self.steps):
            print(f"step {step + 1}: {name}")
            for term, (original, ours) in self.losses[step].items():
                print(f"  {term:<14} original {original:.7f}  pass-hub {ours:.7f}  |diff| {abs(original - ours):.1e}")
            for value, diff in self.schedules[step].items():
                print(f"  {value:<14} largest |diff| {diff:.1e}")
            for group in groups:
                diff, moved = self.largest(step, group)
                print(f"  {(group or 'all').rstrip('.') + ' tensors':<20} largest |diff| {diff:.1e}  (the original's "
                      f"step moved them by up to {moved:.1e})")
        if every_tensor:
            steps = " / ".join(map(str, range(1, len(self.steps) + 1)))
            print(f"\nlargest |difference| of every tensor after step {steps} (in brackets: moved by the step)")
            for key in self.tensors[0]:
                print(f"  {key:<50} " + "  ".join(f"{diff:.1e} ({moved:.0e})" for diff, moved in
                                                  (tensors[key] for tensors in self.tensors)))


def largest(first: torch.Tensor, second: torch.Tensor) -> float:
    return (first.double() - second.double()).abs().max().item()


def snapshot(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: tensor.detach().clone() for key, tensor in state.items()}


# ---------------------------------------------------------------------------------------------- pre-training
def original_pretraining_args(checkout: OriginalCheckout, size: Size, clip_grad: float) -> argparse.Namespace:
    """The flags of the released ViT-S script, parsed by the original's parser, with the sizes of ``size``."""
    script = (checkout.folder / PRETRAINING_SCRIPT).read_text().replace("\\\n", " ")
    flags = shlex.split(script.split("main_pass.py", 1)[1])
    flags += ["--height", str(size.image_size[0]), "--width", str(size.image_size[1]), "--crop_height",
              str(size.local_size[0]), "--crop_width", str(size.local_size[1]), "--batch_size_per_gpu",
              str(size.batch), "--out_dim", str(size.out_dim), "--freeze_last_layer", str(FROZEN_UNTIL),
              "--use_fp16", "false", "--clip_grad", str(clip_grad)]
    args = checkout.pretraining.main_pass.get_args_parser().parse_args(flags)
    # The released run's peak lr (its lr x 1024 / 256) at this batch: steps that move the weights as the real ones.
    args.lr *= 1024 / size.batch
    args.arch = "parity"  # not one of the released ViTs: the checkpoint says so
    return args


class RecordedLoss:
    """The original ``DINOLoss``, remembering each loss it returns."""

    def __init__(self, loss: nn.Module) -> None:
        self.loss, self.values = loss, []

    def __call__(self, *args: Any) -> torch.Tensor:
        value = self.loss(*args)
        self.values.append(value.item())
        return value


def pretraining_views(size: Size, seed: int) -> list[torch.Tensor]:
    """2 global views then 9 local views, 3 per stripe (top first), as the original's loader gives them."""
    generator = torch.Generator().manual_seed(seed)
    return ([torch.randn(size.batch, 3, *size.image_size, generator=generator) for _ in range(2)]
            + [torch.randn(size.batch, 3, *size.local_size, generator=generator) for _ in range(9)])


class PretrainingPair:
    """The original pre-training (student, teacher, ``DINOLoss``, AdamW, schedules as ``train_dino`` builds them)
    after one step at ``first_epoch``, and pass-hub's ``PassPretrainer`` loaded from its ``checkpoint.pth``.

    Args:
        checkout: The original code.
        size: Model and inputs.
        folder: Where the checkpoint is written.
        clip_grad: Per-tensor clipping limit of both sides.
        drop_path_rate: Student stochastic depth of both sides (their masks differ: 0 for parity).
    """

    def __init__(self, checkout: OriginalCheckout, size: Size, folder: Path, clip_grad: float = CLIP_GRAD,
                 drop_path_rate: float = 0.0, first_epoch: int = PRETRAINING_EPOCHS[0]) -> None:
        original = checkout.pretraining
        self.main_pass, self.size = original.main_pass, size
        self.args = args = original_pretraining_args(checkout, size, clip_grad)
        torch.manual_seed(0)
        vits, utils = original.vision_transformer, original.utils

        def network(drop_path: float) -> nn.Module:
            backbone = vits.VisionTransformer(img_size=size.image_size, patch_size=16, embed_dim=size.width,
                                              depth=size.depth, num_heads=size.heads, mlp_ratio=4, qkv_bias=True,
                                              norm_layer=lambda dim: nn.LayerNorm(dim, eps=1e-6),
                                              drop_path_rate=drop_path)
            head = vits.DINOHead(size.width, args.out_dim, use_bn=args.use_bn_in_head,
                                 norm_last_layer=args.norm_last_layer, hidden_dim=size.head_hidden,
                                 bottleneck_dim=size.head_bottleneck)
            return utils.MultiCropWrapper(backbone, head)

        self.student, self.teacher = Wrapped(network(drop_path_rate)), network(0.0)  # as train_dino builds them
        self.teacher.load_state_dict(self.student.module.state_dict())
        self.teacher.requires_grad_(False)
        self.dino_loss = self.main_pass.DINOLoss(args.out_dim, args.local_crops_number + 2, args.warmup_teacher_temp,
                                                 args.teacher_temp, args.warmup_teacher_temp_epochs, args.epochs)
        self.recorded = RecordedLoss(self.dino_loss)
        self.optimizer = torch.optim.AdamW(utils.get_params_groups(self.student))
        scale = args.lr * args.batch_size_per_gpu / 256.0  # one process: the original's linear scaling rule
        self.schedules = {
            "lr": utils.cosine_scheduler(scale, args.min_lr, args.epochs, 1, warmup_epochs=args.warmup_epochs),
            "weight_decay": utils.cosine_scheduler(args.weight_decay, args.weight_decay_end, args.epochs, 1),
            "momentum": utils.cosine_scheduler(args.momentum_teacher, 1, args.epochs, 1),
        }
        self.original_step(first_epoch, pretraining_views(size, seed=100))  # moments and moved centers to load
        path = folder / "checkpoint.pth"
        torch.save({"student": self.student.state_dict(), "teacher": self.teacher.state_dict(),
                    "optimizer": self.optimizer.state_dict(), "epoch": first_epoch + 1, "args": args,
                    "dino_loss": self.dino_loss.state_dict()}, path)

        start = load_pretraining_start(str(path), num_heads=size.heads)
        recipe = RECIPES["pretrain"]["pass_vit_small_lup"].settings
        settings = start.settings_for(dataclasses.replace(
            recipe, image_size=size.image_size, local_image_size=size.local_size, global_batch_size=size.batch,
            lr=recipe.lr * 1024 / size.batch, drop_path_rate=drop_path_rate, mixed_precision="no",
            freeze_last_layer=FROZEN_UNTIL, clip_grad=clip_grad))
        networks = start.networks(settings)
        self.trainer = PassPretrainer.build(settings, 1, Accelerator(cpu=True), networks=networks[:2],
                                           centers=networks[2])
        start.load_optimizer(self.trainer.optimizer, self.trainer.student_network)

    def original_step(self, epoch: int, views: list[torch.Tensor]) -> float:
        """One iteration of the original ``train_one_epoch`` (one iteration per epoch); returns its loss."""
        with as_on_one_gpu():
            self.main_pass.train_one_epoch(self.student, self.teacher, self.teacher, self.recorded, [(views, None)],
                                           self.optimizer, self.schedules["lr"], self.schedules["weight_decay"],
                                           self.schedules["momentum"], epoch, None, self.args)
        return self.recorded.values[-1]

    def ours_step(self, epoch: int, views: list[torch.Tensor]) -> float:
        """One ``PassPretrainer.step`` at the same iteration; returns its loss."""
        return self.trainer.step(views[:2], views[2:], iteration=epoch).loss.item()

    def original_state(self) -> dict[str, torch.Tensor]:
        return {**{f"student.{k}": v for k, v in self.student.module.state_dict().items()},
                **{f"teacher.{k}": v for k, v in self.teacher.state_dict().items()},
                **{f"centers.{k}": v for k, v in self.dino_loss.state_dict().items()}}

    def ours_state(self) -> dict[str, torch.Tensor]:
        student, teacher = self.trainer.student_network, self.trainer.teacher
        return {**{f"student.{k}": v for k, v in to_original_layout(student.state_dict(), student).items()},
                **{f"teacher.{k}": v for k, v in to_original_layout(teacher.state_dict(), teacher).items()},
                **{f"centers.{k}": v for k, v in centers_to_original(self.trainer.centers.centers).items()}}

    def schedule_differences(self, epoch: int) -> dict[str, float]:
        """Largest difference of each schedule value the step used."""
        values = {"lr": 0.0, "weight_decay": 0.0}
        for theirs, ours in zip(self.optimizer.param_groups, self.trainer.optimizer.param_groups, strict=True):
            for name in values:
                values[name] = max(values[name], abs(theirs[name] - ours[name]))
        schedules = self.trainer.schedules
        values["momentum"] = abs(self.schedules["momentum"][epoch] - schedules.momentum[epoch])
        values["teacher_temp"] = abs(self.dino_loss.teacher_temp_schedule[epoch] - schedules.teacher_temp[epoch])
        return values


def pretraining_parity(checkout: OriginalCheckout, size: Size, folder: Path) -> Report:
    pair = PretrainingPair(checkout, size, folder)
    report = Report("pre-training: original train_one_epoch vs PassPretrainer.step, from an original checkpoint.pth")
    for step, epoch in enumerate(PRETRAINING_EPOCHS[1:]):
        views = pretraining_views(size, seed=step)
        before = snapshot(pair.original_state())
        losses = {"loss": (pair.original_step(epoch, views), pair.ours_step(epoch, views))}
        report.add_step(f"epoch {epoch}" + (" (prototype layers frozen)" if epoch < FROZEN_UNTIL else ""), losses,
                        pair.schedule_differences(epoch), pair.ours_state(), pair.original_state(), before)
    return report


# ----------------------------------------------------------------------------------------------- fine-tuning
class LoaderOf(list):
    """A list of batches with the ``batch_size`` the original loop logs."""

    batch_size = 0


@torch.no_grad()
def randomize_original_reid_model(model: nn.Module) -> None:
    """Give an original ReID model's necks non-trivial statistics and its tokens and positions random values (the
    original starts some at zero), so that a swapped [PART] token or neck would show."""
    for key, tensor in model.state_dict().items():
        if key.startswith("bottleneck") and key.endswith(("weight", "running_var")):
            tensor.uniform_(0.5, 1.5)
        elif key.startswith("bottleneck") and key.endswith("running_mean"):
            tensor.normal_(0, 0.3)
        elif not key.startswith("bottleneck") and ("pos" in key or "token" in key):
            tensor.normal_(0, 0.02)


class FinetuningPair:
    """The original fine-tuning (config of ``configs/market/vit_small.yml`` at ``size``; ``make_model``,
    ``make_loss``, ``make_optimizer``, ``create_scheduler``) and pass-hub's ``ReidFinetuner`` loaded from the
    original model's ``transformer_120.pth``. Random weights, with no tensor left at zero (a swapped [PART] token
    or neck would show)."""

    def __init__(self, checkout: OriginalCheckout, size: Size, folder: Path, drop_path_rate: float = 0.0) -> None:
        code = checkout.finetuning
        self.do_train = code.processor.do_train
        name = "parity_vit"
        checkout.register_vit(name, size.width, size.depth, size.heads)
        self.cfg = checkout.finetuning_config(
            FINETUNING_CONFIG, "MODEL.TRANSFORMER_TYPE", name, "MODEL.PRETRAIN_CHOICE", "none", "MODEL.DROP_PATH",
            drop_path_rate, "INPUT.SIZE_TRAIN", list(size.image_size), "INPUT.SIZE_TEST", list(size.image_size),
            "SOLVER.IMS_PER_BATCH", size.batch, "SOLVER.LOG_PERIOD", 10**6, "SOLVER.CHECKPOINT_PERIOD", 10**6,
            "SOLVER.EVAL_PERIOD", 10**6,
        )
        self.one_epoch = self.cfg.clone()
        self.one_epoch.SOLVER.MAX_EPOCHS = 1  # do_train's loop: one epoch of the one batch given
        torch.manual_seed(0)
        with as_on_one_gpu():
            self.model = code.model_make_model.make_model(self.cfg, num_class=size.identities, camera_num=0,
                                                          view_num=0)
            self.loss_fn, self.center_criterion = code.loss.make_loss(self.cfg, num_classes=size.identities)
        self.optimizer, self.optimizer_center = code.solver.make_optimizer(self.cfg, self.model,
                                                                            self.center_criterion)
        self.scheduler = code.solver_scheduler_factory.create_scheduler(self.cfg, self.optimizer)
        self.triplet = code.loss_triplet_loss.TripletLoss()  # the soft-margin loss NO_MARGIN selects
        self.terms: list[tuple[float, float, float]] = []
        randomize_original_reid_model(self.model)
        path = folder / "transformer_120.pth"
        torch.save(self.model.state_dict(), path)

        start = load_finetuning_start(path, num_heads=size.heads)
        recipe = RECIPES["finetune"]["market_vit_small_256"].settings
        settings = start.settings_for(dataclasses.replace(recipe, image_size=size.image_size,
                                                          drop_path_rate=drop_path_rate, mixed_precision="no"),
                                      size.identities)
        self.finetuner = ReidFinetuner.build(settings, start.model(settings, size.identities), Accelerator(cpu=True))

    def recorded_loss(self, score: torch.Tensor, feat: torch.Tensor, target: torch.Tensor,
                      cam: torch.Tensor) -> torch.Tensor:
        """The original loss function, remembering its terms (each as the original computes it)."""
        loss = self.loss_fn(score, feat, target, cam)
        with torch.no_grad():
            self.terms.append((F.cross_entropy(score, target).item(), self.triplet(feat, target)[0].item(),
                               loss.item()))
        return loss

    def original_step(self, epoch: int, images: torch.Tensor, labels: torch.Tensor) -> dict[str, tuple[float, float]]:
        """One iteration of the original ``do_train`` in epoch ``epoch`` (0-based); returns the learning rate and
        weight decay of every parameter, by name."""
        self.scheduler.step(epoch)  # what do_train's scheduler.step at the end of the epoch before sets
        names = {id(param): name for name, param in self.model.named_parameters()}
        used = {names[id(group["params"][0])]: (group["lr"], group["weight_decay"])
                for group in self.optimizer.param_groups}
        zeros = torch.zeros_like(labels)
        with as_on_one_gpu():
            self.do_train(self.one_epoch, self.model, self.center_criterion, LoaderOf([(images, labels, zeros, zeros)]),
                          None, self.optimizer, self.optimizer_center, self.scheduler, self.recorded_loss, 0, "cpu")
        return used

    def ours_step(self, epoch: int, images: torch.Tensor, labels: torch.Tensor) -> Any:
        return self.finetuner.step(images, labels, epoch)

    def original_state(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.model.state_dict().items() if not k.startswith("base.fc.")}  # unused, not kept


def finetuning_batch(size: Size, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(size.batch, 3, *size.image_size, generator=generator)
    return images, (torch.arange(size.batch) % size.identities).sort().values  # P identities x K images


def finetuning_parity(checkout: OriginalCheckout, size: Size, folder: Path) -> Report:
    pair = FinetuningPair(checkout, size, folder)
    finetuner = pair.finetuner
    parts = finetuner.network.config.num_part_tokens
    report = Report("fine-tuning: original do_train vs ReidFinetuner.step, from an original transformer_120.pth")
    for step, epoch in enumerate(FINETUNING_EPOCHS):
        images, labels = finetuning_batch(size, seed=step)
        before = snapshot(pair.original_state())
        used = pair.original_step(epoch, images, labels)
        outcome = pair.ours_step(epoch, images, labels)
        lr_diff = wd_diff = 0.0
        for name, (lr, decay) in finetuner.parameter_hyperparameters(epoch).items():
            for piece in original_reid_pieces(name, parts):
                lr_diff = max(lr_diff, abs(used[piece][0] - lr))
                wd_diff = max(wd_diff, abs(used[piece][1] - decay))
        ce, tri, total = pair.terms[-1]
        report.add_step(
            f"epoch {epoch} ({'warm-up' if epoch < pair.cfg.SOLVER.WARMUP_EPOCHS else 'cosine'})",
            {"cross_entropy": (ce, outcome.cross_entropy.item()), "triplet": (tri, outcome.triplet.item()),
             "loss": (total, outcome.loss.item())},
            {"lr": lr_diff, "weight_decay": wd_diff},
            finetuner.original_state_dict(), pair.original_state(), before,
        )
    return report


class ClusterContrastPair:
    """The original cluster-contrast model (``clustercontrast/models/vision_transformer.py``'s ``TransReID`` with the
    recipe's necks), ``ClusterMemory`` (``--use-hard``), trainer, optimizer and ``StepLR`` as ``main_worker`` builds
    them, and pass-hub's ``ClusterContrastTrainer`` loaded from the original model's ``checkpoint.pth.tar``."""

    def __init__(self, checkout: OriginalCheckout, size: Size, folder: Path, recipe: str) -> None:
        self.code = code = checkout.cluster_contrast
        settings = dataclasses.replace(RECIPES["usl"][recipe].settings, image_size=size.image_size,
                                       drop_path_rate=0.0, mixed_precision="no", **USL_CLUSTERING)
        multi_neck = settings.neck == "per_token"
        empty = folder / "no_weights.pth"
        torch.save({}, empty)  # the original's model always loads a file: this one loads nothing
        torch.manual_seed(0)
        with contextlib.redirect_stdout(io.StringIO()):
            self.model = code.vision_transformer.TransReID(
                img_size=size.image_size, patch_size=16, stride_size=16, embed_dim=size.width, depth=size.depth,
                num_heads=size.heads, mlp_ratio=4, qkv_bias=True, drop_path_rate=0.0,
                norm_layer=functools.partial(nn.LayerNorm, eps=1e-6), pretrained_path=str(empty), hw_ratio=2,
                feat_fusion=settings.feature_fusion, multi_neck=multi_neck)
        randomize_original_reid_model(self.model)
        path = folder / "checkpoint.pth.tar"
        torch.save({"state_dict": {f"module.{k}": v for k, v in self.model.state_dict().items()}, "epoch": 10}, path)
        params = [{"params": [value]} for _, value in self.model.named_parameters() if value.requires_grad]
        self.optimizer = torch.optim.SGD(params, lr=settings.lr, momentum=settings.momentum,
                                         weight_decay=settings.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=settings.lr_step_epochs, gamma=0.1)
        self.scheduler_epoch = 0
        self.trainer = code.trainers.ClusterContrastTrainer(self.model)

        start = load_usl_start(path, num_heads=size.heads)
        self.settings = start.settings_for(settings)
        self.ours = ClusterContrastTrainer.build(self.settings, start.model(self.settings), Accelerator(cpu=True))

    def original_features(self, images: torch.Tensor) -> torch.Tensor:
        """``main_worker``'s epoch start: ``extract_features`` over the images, in their order."""
        names = [f"{index:05d}.jpg" for index in range(len(images))]
        loader = [(images[i:i + 8], names[i:i + 8], torch.zeros(len(names[i:i + 8])), None, None)
                  for i in range(0, len(images), 8)]
        with as_on_one_gpu(), contextlib.redirect_stdout(io.StringIO()):
            features, _ = self.code.evaluators.extract_features(self.model, loader, print_freq=10**6)
        return torch.stack([features[name] for name in names])

    def original_clustering(self, features: torch.Tensor) -> tuple[Any, Any, torch.Tensor]:
        """Jaccard distances, DBSCAN labels and the normalised centroids, as ``main_worker`` computes them (its
        nested ``generate_cluster_features``: the mean feature of each label in sorted order)."""
        from sklearn.cluster import DBSCAN

        with faiss_on_cpu(self.code.faiss_rerank), contextlib.redirect_stdout(io.StringIO()):
            distances = self.code.faiss_rerank.compute_jaccard_distance(features, k1=self.settings.k1,
                                                                        k2=self.settings.k2)
        labels = DBSCAN(eps=self.settings.eps, min_samples=4, metric="precomputed", n_jobs=-1).fit_predict(distances)
        centers: dict[int, list[torch.Tensor]] = collections.defaultdict(list)
        for index, label in enumerate(labels):
            if label != -1:
                centers[label].append(features[index])
        centroids = torch.stack([torch.stack(centers[label]).mean(0) for label in sorted(centers)])
        return distances, labels, F.normalize(centroids, dim=1)

    def make_memory(self, centroids: torch.Tensor) -> None:
        memory = self.code.cm.ClusterMemory(self.model.num_features, len(centroids), temp=self.settings.temperature,
                                            momentum=self.settings.memory_momentum,
                                            use_hard=self.settings.memory_update == "hardest")
        memory.features = centroids.clone()
        self.trainer.memory = memory

    def original_step(self, epoch: int, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
        """One iteration of the original ``ClusterContrastTrainer.train`` in epoch ``epoch``; returns (loss, lr)."""
        while self.scheduler_epoch < epoch:  # main_worker steps StepLR at the end of every epoch
            with warnings.catch_warnings():  # stepped before any optimizer step: the epochs not run here
                warnings.simplefilter("ignore")
                self.scheduler.step()
            self.scheduler_epoch += 1
        losses: list[float] = []
        memory_loss = self.trainer.memory

        def recorded(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            loss = memory_loss(inputs, targets)
            losses.append(loss.item())
            return loss

        self.trainer.memory = recorded
        batches = iter([(images, None, labels, None, torch.arange(len(labels)))])
        loader = types.SimpleNamespace(next=lambda: next(batches), __len__=lambda: 1)
        try:
            with as_on_one_gpu():
                self.trainer.train(epoch, loader, self.optimizer, print_freq=10**6, train_iters=1)
        finally:
            self.trainer.memory = memory_loss
        return losses[0], self.optimizer.param_groups[0]["lr"]

    def original_state(self) -> dict[str, torch.Tensor]:
        return {**{f"model.{k}": v for k, v in self.model.state_dict().items()}, "memory": self.trainer.memory.features}

    def our_state(self) -> dict[str, torch.Tensor]:
        return {**{f"model.{k}": v for k, v in self.ours.original_state_dict().items()}, "memory": self.ours.memory}


def usl_images(size: Size) -> torch.Tensor:
    """Noisy copies of a few random images (copies of one image are what clusters)."""
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(USL_PEOPLE, 3, *size.image_size, generator=generator)
    return base.repeat(USL_COPIES, 1, 1, 1) + 0.6 * torch.randn(USL_PEOPLE * USL_COPIES, 3, *size.image_size,
                                                                   generator=generator)


def cluster_contrast_parity(checkout: OriginalCheckout, size: Size, folder: Path, recipe: str) -> Report:
    pair = ClusterContrastPair(checkout, size, folder, recipe)
    images = usl_images(size)
    features = pair.original_features(images)
    ours_features = pair.ours.extract_cluster_features(images)
    distances, labels, centroids = pair.original_clustering(features)
    clustering = pair.ours.cluster(ours_features, epoch=USL_EPOCHS[0])
    ours_dense = jaccard_distance(ours_features, k1=pair.settings.k1, k2=pair.settings.k2,
                                  convention="cluster_contrast", normalize=False).numpy()
    stored = clustering.distances.tocoo()
    print(f"\n== cluster-contrast ({recipe}): main_worker's epoch start vs ClusterContrastTrainer.cluster ==")
    print(f"  features       largest |diff| {largest(ours_features, features):.1e}  (norms "
          f"{features.norm(dim=1).min():.3f} to {features.norm(dim=1).max():.3f})")
    print(f"  Jaccard        largest |diff| {abs(ours_dense - distances).max():.1e} (dense), "
          f"{abs(stored.data - distances[stored.row, stored.col]).max():.1e} (the {stored.nnz} distances <= eps "
          "that cluster() keeps)")
    same = np.array_equal(clustering.pseudo_labels, labels)
    print(f"  pseudo-labels  {'identical' if same else 'DIFFERENT'}: {clustering.num_clusters} clusters, "
          f"{int((labels < 0).sum())} outliers among {len(labels)} images")
    print(f"  memory         largest |diff| {largest(pair.ours.memory, centroids):.1e}")
    pair.make_memory(centroids)

    report = Report(f"cluster-contrast ({recipe}): original ClusterContrastTrainer.train vs "
                    "ClusterContrastTrainer.step, from an original checkpoint.pth.tar")
    kept = np.flatnonzero(labels >= 0)
    for step, epoch in enumerate(USL_EPOCHS):
        chosen = kept[step * USL_BATCH:(step + 1) * USL_BATCH]
        batch, batch_labels = images[chosen], torch.as_tensor(labels[chosen])
        before = snapshot(pair.original_state())
        loss, lr = pair.original_step(epoch, batch, batch_labels)
        outcome = pair.ours.step(batch, batch_labels, epoch)
        report.add_step(f"epoch {epoch} (lr {lr:.2e})", {"loss": (loss, outcome.loss.item())},
                        {"lr": abs(lr - pair.ours.learning_rate(epoch))}, pair.our_state(), pair.original_state(),
                        before)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--original", required=True, help="a checkout of CASIA-IVA-Lab/PASS-reID")
    parser.add_argument("--part", choices=("pretrain", "finetune", "usl", "all"), default="all")
    parser.add_argument("--usl-recipe", "--usl_recipe", dest="usl_recipe", default="market_usl_vit_small",
                        choices=sorted(name for name in RECIPES["usl"] if name != "cpu_demo"),
                        help="the cluster-contrast recipe whose model (neck, fusion) --part usl compares")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--vit-s", "--vit_s", dest="vit_s", action="store_true",
                        help="the paper's ViT-S/16 at 256x128 (locals 128x64), its 2048-256-65536 heads")
    parser.add_argument("--summary", action="store_true", help="print the largest difference per part only")
    args = parser.parse_args(argv)
    if args.vit_s:
        size = Size(384, 12, 6, (256, 128), (128, 64), 65536, 2048, 256, batch=4, identities=2)
    else:
        size = Size(args.width, args.depth, args.heads, (64, 32), (32, 16), 64, 32, 16, batch=4, identities=2)
    checkout = OriginalCheckout(args.original)
    print(f"original: {checkout.folder}; {size.describe()}")
    with tempfile.TemporaryDirectory(prefix="pass-parity-") as scratch:
        if args.part in ("pretrain", "all"):
            pretraining_parity(checkout, size, Path(scratch)).print(
                not args.summary, ("student.", "teacher.", "centers."))
        if args.part in ("finetune", "all"):
            finetuning_parity(checkout, size, Path(scratch)).print(not args.summary, ("",))
        if args.part in ("usl", "all"):
            cluster_contrast_parity(checkout, size, Path(scratch), args.usl_recipe).print(
                not args.summary, ("model.", "memory"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
