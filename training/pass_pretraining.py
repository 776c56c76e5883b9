"""PASS pre-training: the student and teacher networks, their four centers, and one optimisation step.

:class:`PartAwareDINO` is a part-aware backbone with its four DINO heads. A forward batches the work: both global
views go through the backbone in one pass, all local views (of every stripe) in one more (their sequences have
the same length: CLS, PART_k, patches), and each head is applied once to the stacked outputs of its token type.
With ``use_parts=False`` the same network is plain DINO, the ablation of the method: no view carries a [PART]
token, only the CLS head exists and the loss keeps its CLS terms.

:class:`PassPretrainer` owns student, teacher, centers, optimizer and schedules, built from the settings a
``--recipe`` resolves to, and :meth:`PassPretrainer.step` is one iteration of the original's training loop.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
from accelerate import Accelerator
from torch import nn

from pass_hub.backbone import PassVisionTransformer, backbone_architecture
from pass_hub.convert import split_as_original

from .heads import PartAwareHeads
from .losses import centered_teacher_targets, part_aware_cross_entropy, sinkhorn_knopp_targets, updated_centers
from .optim import clip_gradients_per_tensor, ema_update, set_hyperparameters, weight_decay_groups
from .schedules import cosine_schedule, warmup_then_constant

if TYPE_CHECKING:
    from .recipes import PretrainSettings

NUM_STRIPES = 3


class StudentOutputs(NamedTuple):
    global_out: torch.Tensor  # (1 + S, 2B, K): CLS, PART1..S head outputs of both global views
    local_cls: torch.Tensor  # (L, K): CLS head outputs of the local views, in input order
    local_part: torch.Tensor | None  # (L, K): PART_k head outputs of the local views (k = each view's stripe)


class PartAwareDINO(nn.Module):
    """Backbone + per-token-type heads; the student sees global and local views, the teacher global views only.

    Example:
        >>> backbone = PassVisionTransformer(
        ...     img_size=(64, 32), embed_dim=32, depth=1, num_heads=1, dynamic_img_size=True
        ... )
        >>> model = PartAwareDINO(backbone, PartAwareHeads(32, 16, hidden_dim=8, bottleneck_dim=8))
        >>> out = model(torch.randn(4, 3, 64, 32), torch.randn(6, 3, 32, 16), torch.tensor([0, 0, 1, 1, 2, 2]))
        >>> out.global_out.shape, out.local_cls.shape, out.local_part.shape
        (torch.Size([4, 4, 16]), torch.Size([6, 16]), torch.Size([6, 16]))
    """

    def __init__(self, backbone: PassVisionTransformer, heads: PartAwareHeads, use_parts: bool = True) -> None:
        super().__init__()
        self.backbone = backbone
        self.heads = heads
        self.num_parts = backbone.num_parts if use_parts else 0
        if len(heads.heads) != 1 + self.num_parts:
            raise ValueError(f"{len(heads.heads)} heads for {self.num_parts} [PART] tokens; need 1 + num_parts")

    def forward(
        self,
        global_views: torch.Tensor,
        local_views: torch.Tensor | None = None,
        local_stripes: torch.Tensor | None = None,
    ) -> StudentOutputs | torch.Tensor:
        """Head outputs; with only ``global_views`` (the teacher) a (1 + S, 2B, K) tensor."""
        if self.num_parts:
            global_tokens = self.backbone.forward_features(global_views)[:, : 1 + self.num_parts]
        else:
            global_tokens = self.backbone.forward_local(global_views, None)[:, :1]
        if local_views is None:
            return torch.stack([self.heads.apply_head(t, global_tokens[:, t]) for t in range(1 + self.num_parts)])
        if local_stripes is None or local_stripes.shape[0] != local_views.shape[0]:
            raise ValueError("local_stripes must give the stripe of every local view")
        local_tokens = self.backbone.forward_local(local_views, local_stripes if self.num_parts else None)
        num_global = global_tokens.shape[0]
        cls_out = self.heads.apply_head(0, torch.cat([global_tokens[:, 0], local_tokens[:, 0]]))
        global_out = [cls_out[:num_global]]
        if not self.num_parts:
            return StudentOutputs(torch.stack(global_out), cls_out[num_global:], None)
        local_part = cls_out.new_empty(cls_out[num_global:].shape)
        for part in range(self.num_parts):
            rows = local_stripes == part
            out = self.heads.apply_head(1 + part, torch.cat([global_tokens[:, 1 + part], local_tokens[rows, 1]]))
            global_out.append(out[:num_global])
            local_part[rows] = out[num_global:]
        return StudentOutputs(torch.stack(global_out), cls_out[num_global:], local_part)


def init_tokens_as_original(backbone: PassVisionTransformer) -> None:
    """The token initialisation of the original pre-training code: CLS and [PART] tokens and every position
    vector truncated-normal with std 0.02, except the CLS position, which starts at zero (timm instead draws the
    tokens from N(0, 1e-6) and the whole position table, CLS position included, with std 0.02).

    Example:
        >>> backbone = PassVisionTransformer(img_size=(64, 32), embed_dim=16, depth=1, num_heads=1)
        >>> init_tokens_as_original(backbone)
        >>> bool(backbone.pos_embed[0, 0].eq(0).all()), 0.005 < float(backbone.reg_token.detach().std()) < 0.05
        (True, True)
    """
    with torch.no_grad():
        for tensor in (backbone.cls_token, backbone.reg_token, backbone.pos_embed):
            nn.init.trunc_normal_(tensor, std=0.02)
        backbone.pos_embed[:, 0].zero_()


def new_network(
    settings: PretrainSettings, drop_path_rate: float, trained_size: tuple[int, int] | None = None
) -> PartAwareDINO:
    """A student (or, with ``drop_path_rate=0``, teacher) network with fresh weights for ``settings``.

    ``trained_size`` is the input the position table is laid out for (default: the global views' size); a
    network continued from a checkpoint keeps the checkpoint's.
    """
    backbone = PassVisionTransformer(
        img_size=tuple(trained_size or settings.image_size),
        patch_size=16,
        num_classes=0,
        dynamic_img_size=True,
        drop_path_rate=drop_path_rate,
        pos_embed_resampling=settings.pos_embed_resampling,
        **backbone_architecture(settings.preset),
    )
    if settings.token_init == "original":
        init_tokens_as_original(backbone)
    num_parts = backbone.num_parts if settings.part_tokens else 0
    heads = PartAwareHeads(backbone.embed_dim, settings.out_dim, settings.head_hidden_dim,
                           settings.head_bottleneck_dim, num_parts)
    return PartAwareDINO(backbone, heads, use_parts=settings.part_tokens)


def new_networks(settings: PretrainSettings) -> tuple[PartAwareDINO, PartAwareDINO]:
    """Student and teacher for ``settings``; the teacher starts as a copy of the student and has no gradients."""
    student = new_network(settings, settings.drop_path_rate)
    teacher = new_network(settings, 0.0)
    teacher.load_state_dict(student.state_dict())
    teacher.requires_grad_(False)
    return student, teacher


def gradients_as_original_tensors(network: PartAwareDINO) -> list[torch.Tensor]:
    """The network's gradients cut as the original code's tensors, for per-tensor clipping: ``reg_token`` is
    ``part_token1..3`` and ``pos_embed`` is ``cls_pos``, ``part1_pos..part3_pos`` and the patch table there, so
    their gradients are clipped row by row (views); every other gradient whole.

    Example:
        >>> backbone = PassVisionTransformer(img_size=(32, 16), embed_dim=8, depth=1, num_heads=1)
        >>> network = PartAwareDINO(backbone, PartAwareHeads(8, 4, hidden_dim=4, bottleneck_dim=4))
        >>> network.backbone.pos_embed.grad = torch.ones_like(network.backbone.pos_embed)
        >>> [tuple(g.shape) for g in gradients_as_original_tensors(network)]
        [(1, 1, 8), (1, 1, 8), (1, 1, 8), (1, 1, 8), (1, 2, 8)]
    """
    parts = network.backbone.num_parts
    gradients = []
    for name, param in network.named_parameters():
        if param.grad is None:
            continue
        backbone_key = name.removeprefix("backbone.")
        gradients += split_as_original(backbone_key, param.grad, parts) if backbone_key != name else [param.grad]
    return gradients


class CentersState(nn.Module):
    """The four DINO centers (CLS, PART1-3), kept identical on every process and saved in checkpoints.

    They move once per optimiser step, on the teacher outputs of all its micro-batches, so that gradient
    accumulation uses the centers a batch of the whole size would (``collect`` each micro-batch, then ``update``).
    """

    def __init__(self, token_types: int, out_dim: int) -> None:
        super().__init__()
        self.register_buffer("centers", torch.zeros(token_types, out_dim))
        self.step_outputs: list[torch.Tensor] = []

    @torch.no_grad()
    def collect(self, teacher_out: torch.Tensor) -> None:
        self.step_outputs.append(teacher_out.detach())

    @torch.no_grad()
    def update(self, momentum: float, all_reduce_mean: Callable[[torch.Tensor], torch.Tensor] | None) -> None:
        step_out = torch.cat(self.step_outputs, dim=1)
        self.step_outputs.clear()
        self.centers.copy_(updated_centers(self.centers, step_out, momentum, all_reduce_mean))


@dataclass(frozen=True)
class PretrainSchedules:
    """The schedules of a run, computed up front as the original does: lr, weight decay and teacher momentum per
    iteration, the teacher temperature per epoch.

    Attributes:
        steps_per_epoch: Optimiser steps per epoch.
        lr: Peak ``settings.lr x global batch / 256``, warm-up from 0 (ends included), then cosine to ``min_lr``.
        weight_decay: Cosine from ``weight_decay`` to ``weight_decay_end``, no warm-up.
        momentum: Cosine from ``momentum_teacher`` to 1.
        teacher_temp: ``warmup_teacher_temp`` to ``teacher_temp`` over ``warmup_teacher_temp_epochs``, then constant.
    """

    steps_per_epoch: int
    lr: np.ndarray
    weight_decay: np.ndarray
    momentum: np.ndarray
    teacher_temp: np.ndarray

    @classmethod
    def from_settings(cls, settings: PretrainSettings, steps_per_epoch: int) -> PretrainSchedules:
        total = settings.epochs * steps_per_epoch
        peak = settings.lr * settings.global_batch_size / 256
        return cls(
            steps_per_epoch,
            lr=cosine_schedule(peak, settings.min_lr, total, settings.warmup_epochs * steps_per_epoch),
            weight_decay=cosine_schedule(settings.weight_decay, settings.weight_decay_end, total),
            momentum=cosine_schedule(settings.momentum_teacher, 1.0, total),
            teacher_temp=warmup_then_constant(settings.teacher_temp, settings.warmup_teacher_temp, settings.epochs,
                                              settings.warmup_teacher_temp_epochs),
        )


class StepOutcome(NamedTuple):
    loss: torch.Tensor  # this micro-batch's loss (detached)
    targets: torch.Tensor  # the teacher targets it was trained towards, (1 + S, 2B, K)
    optimizer_stepped: bool  # False inside a gradient-accumulation window


def _stacked(views: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    return views if isinstance(views, torch.Tensor) else torch.cat(list(views))


class PassPretrainer:
    """PASS pre-training: student, teacher, four centers, AdamW and the schedules, and one step of training.

    :meth:`step` is one iteration of the original's training loop, in its order: the iteration's lr and weight
    decay into the optimizer (weight decay on the first group only: weights, tokens and positions), the teacher
    on the two global views, the loss against the current centers at the epoch's teacher temperature, backward,
    gradient clipping per tensor of the original's layout (:func:`gradients_as_original_tensors`), the
    prototype layers' gradients set to None (so AdamW skips them) during the first ``freeze_last_layer`` epochs,
    the AdamW step, the centers' EMA on the raw teacher outputs, and the teacher's EMA over backbone and heads.
    Under gradient accumulation the optimizer, centers and teacher move once per ``gradient_accumulation_steps``
    calls, on every micro-batch's outputs.

    A test drives it without a script (``tests/test_pretrain_init.py`` does exactly this)::

        start = load_pretraining_start("checkpoint.pth")       # training.pretraining_checkpoints
        settings = start.settings_for(settings)                 # the checkpoint's architecture
        student, teacher, centers = start.networks(settings)
        trainer = PassPretrainer.build(settings, steps_per_epoch, Accelerator(cpu=True),
                                       networks=(student, teacher), centers=centers)
        start.load_optimizer(trainer.optimizer, trainer.student_network)   # the original's AdamW moments
        loss = trainer.step([global_1, global_2], local_views, iteration=1).loss
        to_original_layout(trainer.teacher.state_dict(), trainer.teacher)   # read back, original key names
        trainer.student_network, trainer.centers.centers                    # the student and the four centers

    where ``global_i`` are (B, 3, H, W) tensors and ``local_views`` the ``3 x C`` (B, 3, h, w) tensors of stripe 1,
    then 2, then 3 (the original's list of crops after the two globals), or the same as two stacked tensors.

    Args:
        settings: The run's settings (``training.recipes.PretrainSettings``).
        student: The student (prepared by ``accelerator``).
        teacher: The teacher.
        centers: The four centers.
        optimizer: AdamW over the student (prepared).
        schedules: The run's schedules.
        accelerator: The run's accelerator.
    """

    def __init__(
        self,
        settings: PretrainSettings,
        student: nn.Module,
        teacher: PartAwareDINO,
        centers: CentersState,
        optimizer: torch.optim.Optimizer,
        schedules: PretrainSchedules,
        accelerator: Accelerator,
    ) -> None:
        self.settings, self.student, self.teacher, self.centers = settings, student, teacher, centers
        self.optimizer, self.schedules, self.accelerator = optimizer, schedules, accelerator
        self.student_network: PartAwareDINO = accelerator.unwrap_model(student)

    @classmethod
    def build(
        cls,
        settings: PretrainSettings,
        steps_per_epoch: int,
        accelerator: Accelerator,
        *,
        networks: tuple[PartAwareDINO, PartAwareDINO] | None = None,
        centers: CentersState | None = None,
    ) -> PassPretrainer:
        """Networks (new ones, or ``networks`` = (student, teacher), e.g. loaded from a checkpoint), centers
        (zeros unless given), AdamW and the schedules of ``settings``; student and optimizer prepared."""
        student, teacher = networks or new_networks(settings)
        centers = centers or CentersState(1 + student.num_parts, student.heads.out_dim)
        optimizer = torch.optim.AdamW(weight_decay_groups(student))
        student, optimizer = accelerator.prepare(student, optimizer)
        teacher.to(accelerator.device)
        centers.to(accelerator.device)
        return cls(settings, student, teacher, centers, optimizer,
                   PretrainSchedules.from_settings(settings, steps_per_epoch), accelerator)

    def _all_reduce(self, operation: str) -> Callable[[torch.Tensor], torch.Tensor] | None:
        accelerator = self.accelerator
        if accelerator.num_processes == 1:
            return None
        return lambda tensor: accelerator.reduce(tensor, operation)

    def step(
        self,
        global_views: torch.Tensor | Sequence[torch.Tensor],
        local_views: torch.Tensor | Sequence[torch.Tensor],
        iteration: int,
    ) -> StepOutcome:
        """One micro-batch of iteration ``iteration`` (0-based over the run; its epoch follows).

        Raises:
            FloatingPointError: the loss is not finite.
        """
        settings, accelerator, optimizer = self.settings, self.accelerator, self.optimizer
        global_views, local_views = _stacked(global_views), _stacked(local_views)
        epoch = iteration // self.schedules.steps_per_epoch
        if local_views.shape[0] % (NUM_STRIPES * (global_views.shape[0] // 2)):
            raise ValueError(f"{local_views.shape[0]} local views do not split into {NUM_STRIPES} stripes of "
                             f"{global_views.shape[0] // 2} images")
        stripes = torch.arange(NUM_STRIPES, device=local_views.device).repeat_interleave(
            local_views.shape[0] // NUM_STRIPES)
        with accelerator.accumulate(self.student):
            set_hyperparameters(optimizer, float(self.schedules.lr[iteration]),
                                float(self.schedules.weight_decay[iteration]))
            teacher_temp = float(self.schedules.teacher_temp[epoch])
            with torch.no_grad(), accelerator.autocast():  # the student's precision (prepare() wraps only it)
                teacher_out = self.teacher(global_views).float()
                if settings.centering == "sinkhorn_knopp":
                    targets = sinkhorn_knopp_targets(teacher_out, teacher_temp, all_reduce_sum=self._all_reduce("sum"))
                else:
                    targets = centered_teacher_targets(teacher_out, self.centers.centers, teacher_temp)
            out = self.student(global_views, local_views, stripes)
            loss = part_aware_cross_entropy(targets, out.global_out, out.local_cls, out.local_part,
                                            student_temp=settings.student_temp)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at step {iteration}")
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                if settings.clip_grad:
                    accelerator.unscale_gradients(optimizer)
                    clip_gradients_per_tensor(gradients_as_original_tensors(self.student_network), settings.clip_grad)
                if epoch < settings.freeze_last_layer:
                    for param in self.student_network.heads.last_layer_parameters():
                        param.grad = None
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if settings.centering == "ema":
                self.centers.collect(teacher_out)
        if accelerator.sync_gradients:
            if settings.centering == "ema":
                self.centers.update(settings.center_momentum, self._all_reduce("mean"))
            ema_update(self.teacher, self.student_network, float(self.schedules.momentum[iteration]))
        return StepOutcome(loss.detach(), targets, accelerator.sync_gradients)
