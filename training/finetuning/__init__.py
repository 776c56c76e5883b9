"""Supervised ReID fine-tuning: its losses and the step (:class:`~training.finetuning.step.ReidFinetuner`); the
model and its necks are pass-hub's ``PassViTForReID``."""
