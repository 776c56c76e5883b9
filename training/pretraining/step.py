"""PASS pre-training, one step: :class:`PassPretrainer` owns student, teacher, centers, optimizer and schedules,
built from the settings a ``--recipe`` resolves to, and :meth:`PassPretrainer.step` is one iteration of the
original's training loop (``PASS/main_pass.py``, ``train_one_epoch``).
"""


from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
from accelerate import Accelerator
from torch import nn

from training.engine.optim import clip_gradients_per_tensor, ema_update, set_hyperparameters, weight_decay_groups
from training.engine.schedules import cosine_schedule, warmup_then_constant
from training.pretraining.losses import (
    centered_teacher_targets,
    part_aware_cross_entropy,
    sinkhorn_knopp_targets,
    updated_centers,
)

if TYPE_CHECKING:
    from training.engine.recipes import PretrainSettings

from training.pretraining.networks import PartAwareDINO, gradients_as_original_tensors, new_networks

NUM_STRIPES = 3


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

        start = load_pretraining_start("checkpoint.pth")       # training.pretraining.checkpoints
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
        settings: The run's settings (``training.engine.recipes.PretrainSettings``).
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
