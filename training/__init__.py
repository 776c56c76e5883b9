"""pass-hub's training package: PASS pre-training, supervised ReID fine-tuning and cluster-contrast USL / UDA, each
step the original code's, over accelerate. The scripts (``pretrain.py``, ``finetune.py``, ``usl.py``) are thin
loops over the units exported here; these names stay wherever the modules move.

Example:
    >>> from training import PassPretrainer, ReidFinetuner, ClusterContrastTrainer, load_usl_start
"""

from training.cluster_contrast.step import ClusterContrastOutcome, ClusterContrastTrainer, Clustering
from training.engine.reid_start import ReidStart, load_finetuning_start, load_usl_start
from training.finetuning.step import FinetuneOutcome, ReidFinetuner
from training.pretraining.checkpoints import centers_to_original, load_pretraining_start, to_original_layout
from training.pretraining.step import PassPretrainer

__all__ = [
    "ClusterContrastOutcome",
    "ClusterContrastTrainer",
    "Clustering",
    "FinetuneOutcome",
    "PassPretrainer",
    "ReidFinetuner",
    "ReidStart",
    "centers_to_original",
    "load_finetuning_start",
    "load_pretraining_start",
    "load_usl_start",
    "to_original_layout",
]
