"""Supervised ReID fine-tuning: the model, its optimiser and per-epoch schedule, and one step of training.

:class:`ReidFinetuner` is the original ``PASS_transreid`` fine-tuning as a unit: :meth:`ReidFinetuner.step` is one
iteration of its ``do_train`` loop (``processor/processor.py``), in its order: the epoch's learning rates (set by
the original's ``CosineLRScheduler`` at the end of the previous epoch), forward under autocast, the loss of
``loss/make_loss.py`` (identity cross-entropy on the classifier's scores of the after-neck feature plus the
batch-hard soft-margin triplet on the before-neck feature ``cat(CLS, mean(PARTs))``, weighted and summed),
backward and the SGD step. The parameter groups are those of ``solver/make_optimizer.py``: a tensor whose name holds
"bias" at ``bias_lr_factor`` x lr with ``weight_decay_bias``, every other trainable tensor at lr with
``weight_decay``; the necks' frozen biases are buffers, in no group.

Example:
    >>> import dataclasses
    >>> from accelerate import Accelerator
    >>> from training.engine.recipes import RECIPES
    >>> from training.engine.reid_start import load_finetuning_start
    >>> settings = dataclasses.replace(RECIPES["finetune"]["market_vit_small_256"].settings,
    ...                                image_size=(64, 32), preset="embed_dim=64,depth=1,num_heads=1")
    >>> start = load_finetuning_start(settings.preset)
    >>> finetuner = ReidFinetuner.build(settings, start.model(settings, num_labels=4), Accelerator(cpu=True))
    >>> outcome = finetuner.step(torch.randn(8, 3, 64, 32), torch.arange(4).repeat_interleave(2), epoch=0)
    >>> sorted(outcome._fields), [round(lr, 8) for lr in finetuner.group_learning_rates(0)]
    (['cross_entropy', 'loss', 'optimizer_stepped', 'triplet'], [4e-06, 4e-06])
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
from accelerate import Accelerator

from pass_hub.models.convert import reid_model_to_original
from training.engine.optim import reid_optimizer, set_hyperparameters
from training.engine.schedules import warmup_cosine_per_epoch
from training.finetuning.losses import batch_hard_triplet_loss

if TYPE_CHECKING:
    import pass_hub
    from training.engine.recipes import FinetuneSettings


class FinetuneOutcome(NamedTuple):
    """One micro-batch of fine-tuning: ``loss = ce_weight x cross_entropy + triplet_weight x triplet`` (detached)."""

    loss: torch.Tensor
    cross_entropy: torch.Tensor
    triplet: torch.Tensor
    optimizer_stepped: bool  # False inside a gradient-accumulation window


def learning_rate_table(settings: FinetuneSettings, optimizer: torch.optim.Optimizer) -> np.ndarray:
    """(epochs, groups) learning rates: each group peaks at its ``lr_scale`` x lr; warm-up start and cosine floor
    are shared by all groups (as the original's scheduler shares them)."""
    return np.stack(
        [
            warmup_cosine_per_epoch(settings.lr * group.get("lr_scale", 1.0), settings.epochs, settings.warmup_epochs,
                                    warmup_start=settings.lr * settings.warmup_start_factor,
                                    floor=settings.lr * settings.final_lr_factor)
            for group in optimizer.param_groups
        ],
        axis=1,
    )


class ReidFinetuner:
    """The ReID model, its optimiser and learning-rate table, and :meth:`step` (module docstring).

    Args:
        settings: The run's settings (``training.engine.recipes.FinetuneSettings``).
        model: The ``PassViTForReID`` (prepared by ``accelerator``).
        optimizer: Its optimiser (prepared).
        accelerator: The run's accelerator.
    """

    def __init__(
        self,
        settings: FinetuneSettings,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        accelerator: Accelerator,
    ) -> None:
        self.settings, self.model, self.optimizer, self.accelerator = settings, model, optimizer, accelerator
        self.network: pass_hub.PassViTForReID = accelerator.unwrap_model(model)
        self.learning_rates = learning_rate_table(settings, optimizer)

    @classmethod
    def build(
        cls, settings: FinetuneSettings, model: pass_hub.PassViTForReID, accelerator: Accelerator | None = None
    ) -> ReidFinetuner:
        """The optimiser of ``settings`` over ``model``; model and optimiser prepared by ``accelerator`` (default: a
        new one at the settings' precision)."""
        accelerator = accelerator or Accelerator(mixed_precision=settings.mixed_precision)
        optimizer = reid_optimizer(model, settings.optimizer, lr=settings.lr, weight_decay=settings.weight_decay,
                                   momentum=settings.momentum, bias_lr_factor=settings.bias_lr_factor,
                                   weight_decay_bias=settings.weight_decay_bias)
        model, optimizer = accelerator.prepare(model, optimizer)
        return cls(settings, model, optimizer, accelerator)

    def group_learning_rates(self, epoch: int) -> list[float]:
        """The learning rate of each parameter group during ``epoch`` (0-based: the original's epoch 1 is 0)."""
        if not 0 <= epoch < len(self.learning_rates):
            raise ValueError(f"epoch {epoch} is outside the {len(self.learning_rates)} epochs of the schedule")
        return [float(lr) for lr in self.learning_rates[epoch]]

    def parameter_hyperparameters(self, epoch: int) -> dict[str, tuple[float, float]]:
        """(learning rate, weight decay) of every trained parameter during ``epoch``, by name: the values the
        original's one-group-per-tensor optimiser holds."""
        names = {id(param): name for name, param in self.network.named_parameters()}
        return {
            names[id(param)]: (lr, float(group["weight_decay"]))
            for group, lr in zip(self.optimizer.param_groups, self.group_learning_rates(epoch), strict=True)
            for param in group["params"]
        }

    def step(self, pixel_values: torch.Tensor, labels: torch.Tensor, epoch: int) -> FinetuneOutcome:
        """One micro-batch of epoch ``epoch`` (0-based): ``pixel_values`` (B, 3, H, W) normalised with mean = std =
        0.5, ``labels`` (B,) identity indices, P identities x K images each.

        Raises:
            FloatingPointError: the loss is not finite.
        """
        settings, accelerator, optimizer = self.settings, self.accelerator, self.optimizer
        with accelerator.accumulate(self.model):
            set_hyperparameters(optimizer, self.group_learning_rates(epoch))
            with accelerator.autocast():  # the original computes its loss under autocast too
                out = self.model(pixel_values, labels=labels)
                triplet = batch_hard_triplet_loss(out.features_before_neck, labels, settings.triplet_margin)
                loss = settings.ce_weight * out.loss + settings.triplet_weight * triplet
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} in epoch {epoch}")
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return FinetuneOutcome(loss.detach(), out.loss.detach(), triplet.detach(), accelerator.sync_gradients)

    def original_state_dict(self) -> dict[str, torch.Tensor]:
        """The model's state in the original fine-tuned model's names (``base.*``, ``bottleneck``,
        ``bottleneck_1..3``, ``classifier.weight``): ``torch.save`` it and the original ``test.py`` loads it."""
        original = reid_model_to_original(self.network.state_dict(), self.network.config.num_part_tokens)
        return {key: tensor.detach().clone() for key, tensor in original.items()}

