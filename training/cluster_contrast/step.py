"""Cluster-contrast (USL / UDA) as a unit: the model, its optimiser and learning rates, the cluster memory, the
clustering that starts each epoch and one step of training.

:class:`ClusterContrastTrainer` is the original ``PASS_cluster_contrast_reid`` training.
:meth:`~ClusterContrastTrainer.extract_cluster_features` and :meth:`~ClusterContrastTrainer.cluster` are the start of
an epoch of ``examples/cluster_contrast_train_usl.py`` (``main_worker``): the training images embedded in eval mode
with the test transform, k-reciprocal Jaccard distances as ``compute_jaccard_distance``
(``clustercontrast/utils/faiss_rerank.py``) computes them, DBSCAN on them, and the normalised mean feature of each
cluster into the memory. :meth:`~ClusterContrastTrainer.step` is one iteration of ``ClusterContrastTrainer.train``
(``clustercontrast/trainers.py``, ``clustercontrast/models/cm.py``): forward, the memory loss, backward, the SGD
step at the epoch's ``StepLR`` rate (one rate for every tensor, weight decay on all of them), and the memory update
with the batch's features.

The feature clustered, trained against the memory and tested is the original model's output: the after-neck
feature, each neck's output L2-normalised and fused as it is (``normalize_neck_outputs``, the original's per-token
necks), or L2-normalised as a whole (its single neck; and any feature pass-hub adds, such as ``before_neck``).

Example:
    >>> import dataclasses
    >>> from accelerate import Accelerator
    >>> from training.engine.recipes import RECIPES
    >>> from training.engine.reid_start import load_usl_start
    >>> settings = dataclasses.replace(RECIPES["usl"]["market_usl_vit_small"].settings, image_size=(64, 32),
    ...                                preset="embed_dim=64,depth=1,num_heads=1", eps=0.7, min_samples=2, k1=4, k2=2)
    >>> start = load_usl_start(settings.preset)
    >>> trainer = ClusterContrastTrainer.build(settings, start.model(settings), Accelerator(cpu=True))
    >>> pixels = torch.randn(4, 3, 64, 32).repeat(3, 1, 1, 1) + 0.01 * torch.randn(12, 3, 64, 32)
    >>> clustering = trainer.cluster(trainer.extract_cluster_features(pixels))
    >>> clustering.num_clusters, tuple(trainer.memory.shape)
    (4, (4, 128))
    >>> outcome = trainer.step(pixels[:8], torch.as_tensor(clustering.pseudo_labels[:8]), epoch=0)
    >>> bool(outcome.loss > 0), round(trainer.learning_rate(20), 12)
    (True, 3.5e-05)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from torch import nn

from pass_hub.deployment.preprocessing import Preprocessing
from pass_hub.evaluation.protocol import extract_features, preprocessing_transform
from pass_hub.models.convert import reid_model_to_original
from training.cluster_contrast.clustering import center_per_camera, cluster_centroids, cluster_with_distances
from training.cluster_contrast.memory import ClusterMemory
from training.engine.optim import reid_optimizer, set_hyperparameters
from training.engine.reid import sync_buffers
from training.engine.schedules import step_schedule

if TYPE_CHECKING:
    import scipy.sparse

    import pass_hub
    from training.engine.recipes import ClusterContrastSettings


class Clustering(NamedTuple):
    """The clustering of one epoch.

    Attributes:
        pseudo_labels: (N,) int64 cluster of every image, ``0..C-1`` in DBSCAN's order of discovery, -1 for outliers.
        num_clusters: C.
        distances: (N, N) sparse matrix of every Jaccard distance <= eps (what DBSCAN's neighbourhoods are made of;
            an absent entry is farther): the dense matrix of the original would take N^2 x 4 bytes (670 MB for
            Market-1501). ``pass_hub.reranking.jaccard_distance(features, convention="cluster_contrast",
            normalize=False)`` gives it dense.
    """

    pseudo_labels: np.ndarray
    num_clusters: int
    distances: scipy.sparse.csr_matrix


class ClusterContrastOutcome(NamedTuple):
    """One micro-batch of cluster-contrast training."""

    loss: torch.Tensor  # the memory loss (detached)
    optimizer_stepped: bool  # False inside a gradient-accumulation window


def keeps_feature_as_is(config: pass_hub.PassViTConfig) -> bool:
    """Whether the model's feature is clustered as it is: the after-neck feature of necks that L2-normalise their
    outputs (the original's per-token necks); any other feature is L2-normalised first."""
    return config.reid_feature == "after_neck" and config.normalize_neck_outputs


def as_original_feature(feature: torch.Tensor, config: pass_hub.PassViTConfig) -> torch.Tensor:
    """The run's feature (``config.reid_feature``) as the original clusters and trains it (module docstring)."""
    return feature if keeps_feature_as_is(config) else F.normalize(feature, dim=1)


class _OriginalFeature(nn.Module):
    """The feature the original clusters, trains and tests, from pixels."""

    def __init__(self, network: pass_hub.PassViTForReID) -> None:
        super().__init__()
        self.network = network

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return as_original_feature(self.network.test_features(pixel_values), self.network.config)


class ClusterContrastTrainer:
    """The model, its optimiser, learning rates and cluster memory; :meth:`cluster` and :meth:`step` (module
    docstring).

    Args:
        settings: The run's settings (``training.engine.recipes.ClusterContrastSettings``).
        model: The ``PassViTForReID`` (prepared by ``accelerator``), without a classifier.
        optimizer: Its optimiser (prepared).
        cluster_memory: The centroid memory (on the accelerator's device).
        accelerator: The run's accelerator.
    """

    def __init__(
        self,
        settings: ClusterContrastSettings,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        cluster_memory: ClusterMemory,
        accelerator: Accelerator,
    ) -> None:
        self.settings, self.model, self.optimizer, self.accelerator = settings, model, optimizer, accelerator
        self.cluster_memory = cluster_memory
        self.network: pass_hub.PassViTForReID = accelerator.unwrap_model(model)
        self.learning_rates = step_schedule(settings.lr, settings.epochs, settings.lr_step_epochs)

    @classmethod
    def build(
        cls, settings: ClusterContrastSettings, model: pass_hub.PassViTForReID, accelerator: Accelerator | None = None
    ) -> ClusterContrastTrainer:
        """The optimiser and memory of ``settings`` for ``model``, prepared by ``accelerator`` (default: a new one
        at the settings' precision)."""
        accelerator = accelerator or Accelerator(mixed_precision=settings.mixed_precision)
        if settings.reid_feature == "before_neck":  # unused necks would get no gradient and stall DDP
            for neck in model.neck_modules():
                neck.requires_grad_(False)
        optimizer = reid_optimizer(model, settings.optimizer, lr=settings.lr, weight_decay=settings.weight_decay,
                                   momentum=settings.momentum)
        memory = ClusterMemory(model.config.embedding_size, settings.temperature, settings.memory_momentum,
                               settings.memory_update)
        model, optimizer = accelerator.prepare(model, optimizer)
        return cls(settings, model, optimizer, memory.to(accelerator.device), accelerator)

    @property
    def memory(self) -> torch.Tensor:
        """(C, D) L2-normalised cluster centroids of the current epoch."""
        return self.cluster_memory.centroids

    def learning_rate(self, epoch: int) -> float:
        """The learning rate of every tensor during ``epoch`` (0-based), the original's ``StepLR``."""
        if not 0 <= epoch < len(self.learning_rates):
            raise ValueError(f"epoch {epoch} is outside the {len(self.learning_rates)} epochs of the schedule")
        return float(self.learning_rates[epoch])

    def extract_cluster_features(
        self, images: torch.Tensor | Any, batch_size: int = 64, num_workers: int = 0, progress: bool = True
    ) -> torch.Tensor:
        """(N, D) features of ``images`` as the original clusters them (module docstring), in eval mode, on every
        process (each embeds a shard).

        Args:
            images: A ``datasets`` split (columns ``image``, ``pid``, ``camid``), embedded with the test transform
                (resize with the settings' ``test_resize``, mean = std = 0.5), or (N, 3, H, W) pixels already so.
            batch_size: Images per forward pass (per process).
            num_workers: DataLoader workers (splits only).
            progress: Show a progress bar.
        """
        sync_buffers(self.accelerator, self.model)
        embedder = _OriginalFeature(self.network)
        self.network.eval()
        try:
            if isinstance(images, torch.Tensor):
                device = next(self.network.parameters()).device
                with torch.inference_mode():
                    return torch.cat([embedder(chunk.to(device)).float().cpu() for chunk in images.split(batch_size)])
            transform = preprocessing_transform(Preprocessing.from_config(self.network.config))
            return extract_features(embedder, images, transform, batch_size=batch_size, num_workers=num_workers,
                                    accelerator=self.accelerator, progress=progress,
                                    description="clustering features").features
        finally:
            self.network.train()

    def cluster(
        self, features: torch.Tensor, camera_ids: Sequence[int] | np.ndarray | None = None, epoch: int = -1
    ) -> Clustering:
        """Cluster ``features`` (from :meth:`extract_cluster_features`) and put their centroids into the memory.

        Jaccard distances with the settings' ``k1``, ``k2`` and ``jaccard`` convention on the features as given
        (``camera_centering``: minus their camera's mean, ``camera_ids`` then required), DBSCAN with ``eps`` and
        ``min_samples``, the normalised mean feature of each cluster. Computed on the main process and given to
        every process.

        Args:
            features: (N, D) features.
            camera_ids: (N,) camera of every image, for ``camera_centering``.
            epoch: The epoch the clusters are for (kept in the memory, so a run resumed mid-epoch keeps them).
        """
        settings = self.settings
        if settings.camera_centering and camera_ids is None:
            raise ValueError("camera_centering clusters features minus their camera's mean: pass camera_ids")
        payload: list[Any] = [None]
        if self.accelerator.is_main_process:
            clustered = center_per_camera(features, camera_ids) if settings.camera_centering else features
            labels, distances = cluster_with_distances(
                clustered, eps=settings.eps, min_samples=settings.min_samples, k1=settings.k1, k2=settings.k2,
                jaccard=settings.jaccard, normalize=False)
            payload = [(labels, cluster_centroids(features, labels), distances)]
        labels, centroids, distances = broadcast_object_list(payload)[0]
        self.cluster_memory.reset(centroids, labels, epoch)
        return Clustering(labels, int(labels.max(initial=-1)) + 1, distances)

    def feature(self, output: Any) -> torch.Tensor:
        """The feature of a ``PassViTForReID`` output that is trained against the memory (module docstring)."""
        config = self.network.config
        feature = output.features_after_neck if config.reid_feature == "after_neck" else output.features_before_neck
        return as_original_feature(feature, config)

    def step(self, pixel_values: torch.Tensor, pseudo_labels: torch.Tensor, epoch: int) -> ClusterContrastOutcome:
        """One micro-batch of epoch ``epoch`` (0-based): ``pixel_values`` (B, 3, H, W) normalised with mean = std =
        0.5, ``pseudo_labels`` (B,) their clusters (no outliers).

        Raises:
            FloatingPointError: the loss is not finite.
        """
        accelerator, optimizer = self.accelerator, self.optimizer
        with accelerator.accumulate(self.model):
            set_hyperparameters(optimizer, self.learning_rate(epoch))
            with accelerator.autocast():
                features = self.feature(self.model(pixel_values))
                loss = self.cluster_memory(features, pseudo_labels)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} in epoch {epoch}")
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            # Every process applies the update of the whole batch: the memories stay identical.
            self.cluster_memory.update(accelerator.gather(features.detach()), accelerator.gather(pseudo_labels))
        return ClusterContrastOutcome(loss.detach(), accelerator.sync_gradients)

    def original_state_dict(self) -> dict[str, torch.Tensor]:
        """The model's state in the original cluster-contrast model's names (``cls_token``, ``part_token1..3``,
        ``cls_pos`` ..., ``bottleneck``, ``bottleneck_pt1..3``): ``torch.save({"state_dict": ...})`` and the
        original ``test.py --resume`` loads it."""
        original = reid_model_to_original(self.network.state_dict(), self.network.config.num_part_tokens,
                                          layout="original_usl")
        return {key: tensor.detach().clone() for key, tensor in original.items()}
