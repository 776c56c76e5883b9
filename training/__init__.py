"""pass-hub's training package: PASS pre-training, supervised ReID fine-tuning and cluster-contrast USL / UDA, each
step the original code's, over accelerate. The scripts (``pretrain.py``, ``finetune.py``, ``usl.py``) are thin
loops over the units exported here; these names stay wherever the modules move.

Example:
    >>> from training import PassPretrainer, ReidFinetuner, ClusterContrastTrainer, load_usl_start
"""

from .cluster_contrast_training import ClusterContrastOutcome, ClusterContrastTrainer, Clustering
from .finetuning import FinetuneOutcome, ReidFinetuner
from .pass_pretraining import PassPretrainer
from .pretraining_checkpoints import centers_to_original, load_pretraining_start, to_original_layout
from .reid_start import ReidStart, load_finetuning_start, load_usl_start

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
