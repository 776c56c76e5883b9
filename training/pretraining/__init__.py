"""PASS pre-training (part-aware DINO): the views, the networks and heads, the losses, the original checkpoint
layout and the step (:class:`~training.pretraining.step.PassPretrainer`)."""
