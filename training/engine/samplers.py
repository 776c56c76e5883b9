"""Batches for metric learning: identity-balanced P x K batches, and the camera-aware stream of cluster-contrast.

Both follow the original code's rules (``docs/recipes.md`` §2 and §3) but draw from numpy generators
seeded by (seed, epoch), so every process of a distributed run, and a resumed run, computes the same batches.

Example:
    >>> sampler = PKBatchSampler([0, 0, 1, 1, 1, 2], identities_per_batch=2, instances_per_identity=2, seed=0)
    >>> batch = next(iter(sampler))
    >>> len(batch), len({[0, 0, 1, 1, 1, 2][i] for i in batch})
    (4, 2)
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


def _indices_by_label(labels: Sequence[int]) -> dict[int, list[int]]:
    indices_of: dict[int, list[int]] = defaultdict(list)
    for index, label in enumerate(labels):
        indices_of[int(label)].append(index)
    return dict(sorted(indices_of.items()))


class PKBatchSampler(Sampler[list[int]]):
    """Batches of ``P`` identities x ``K`` images each, as the original fine-tuning sampler makes them.

    Per epoch: an identity with fewer than K images is first filled to K by drawing its own images with
    replacement; every identity's images are shuffled and cut into chunks of K, a last incomplete chunk dropped;
    then each batch takes one chunk from each of P distinct identities drawn among those with chunks left, until
    fewer than P identities have chunks left. The number of batches per epoch depends on the draw
    (:meth:`epoch_length` computes it); ``num_batches`` fixes it instead, dealing every identity new chunks when
    fewer than P have some left (cluster-contrast re-labels the data every epoch but keeps a fixed number of
    steps). The order depends only on ``seed`` and the epoch set with :meth:`set_epoch`; handing whole batches to
    processes in turn (what ``accelerator.prepare`` does with a batch sampler) gives each process complete
    P x K batches.

    Args:
        labels: Identity label of every dataset item.
        identities_per_batch: P.
        instances_per_identity: K.
        seed: Shuffling seed.
        num_batches: Batches per epoch when it must not depend on the draw.
    """

    def __init__(
        self,
        labels: Sequence[int],
        identities_per_batch: int,
        instances_per_identity: int,
        seed: int = 0,
        num_batches: int | None = None,
    ) -> None:
        if identities_per_batch < 1 or instances_per_identity < 1:
            raise ValueError(f"P and K must be >= 1, got P={identities_per_batch}, K={instances_per_identity}")
        self.indices_of = _indices_by_label(labels)
        if len(self.indices_of) < identities_per_batch:
            raise ValueError(
                f"a P x K batch needs {identities_per_batch} identities; the data has {len(self.indices_of)}. "
                "Lower --global_batch_size (P = batch / num_instances) or use more identities."
            )
        if num_batches is not None and num_batches < 1:
            raise ValueError(f"num_batches must be >= 1, got {num_batches}")
        self.p, self.k, self.seed, self.epoch = identities_per_batch, instances_per_identity, seed, 0
        self.labels = list(self.indices_of)
        self.num_batches = num_batches
        self._lengths: dict[int, int] = {}

    @property
    def batch_size(self) -> int:
        return self.p * self.k

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _chunks(self, label: int, rng: np.random.Generator) -> list[list[int]]:
        indices = self.indices_of[label]
        if len(indices) < self.k:
            indices = rng.choice(indices, size=self.k, replace=True).tolist()
        indices = rng.permutation(indices).tolist()
        return [indices[i : i + self.k] for i in range(0, len(indices) - self.k + 1, self.k)]

    def batches(self, epoch: int) -> list[list[int]]:
        """The batches of ``epoch``."""
        rng = np.random.default_rng([self.seed, epoch])
        chunks = {label: self._chunks(label, rng) for label in self.labels}
        batches = []
        while self.num_batches is None or len(batches) < self.num_batches:
            available = [label for label in self.labels if chunks[label]]
            if len(available) < self.p:
                if self.num_batches is None:
                    break
                chunks = {label: chunks[label] or self._chunks(label, rng) for label in self.labels}
                available = self.labels
            chosen = rng.choice(available, size=self.p, replace=False).tolist()
            batches.append([index for label in chosen for index in chunks[label].pop(0)])
        return batches

    def epoch_length(self, epoch: int) -> int:
        """Number of batches of ``epoch`` (computed once per epoch)."""
        if self.num_batches is not None:
            return self.num_batches
        if epoch not in self._lengths:
            self._lengths[epoch] = len(self.batches(epoch))
        return self._lengths[epoch]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches(self.epoch))

    def __len__(self) -> int:
        return self.epoch_length(self.epoch)


class CameraAwareSampler(Sampler[list[int]]):
    """The cluster-contrast batches of the original USL / UDA code: pseudo-identities seen across cameras.

    A *pass* visits the clusters in a random order; for each it yields a random anchor image, then K - 1 other
    members whose camera differs from the anchor's, without replacement when at least K such members exist and
    with replacement otherwise; a cluster with no member on another camera gives K - 1 of its other images by the
    same rule, and a one-image cluster only its anchor. The passes, one after another, form a stream that is cut
    into global batches of ``global_batch_size`` consecutive images (a pass's incomplete last batch is dropped,
    and the next pass starts a new batch), and each global batch into ``global_batch_size / batch_size``
    consecutive micro-batches: handed to the processes in turn by ``accelerator.prepare``, they split a global
    batch as the original's DataParallel split its batch over GPUs. An epoch has ``num_batches`` micro-batches.

    Args:
        labels: Pseudo-label of every item (no outliers: they are left out of the dataset).
        camids: Camera of every item.
        instances_per_identity: K.
        batch_size: Images per micro-batch (a process's share of a global batch).
        global_batch_size: Images per optimiser step, a multiple of ``batch_size``.
        num_batches: Micro-batches per epoch.
        seed: Sampling seed.

    Example:
        >>> sampler = CameraAwareSampler([0, 0, 0, 1, 1], [1, 1, 2, 1, 1], instances_per_identity=2, batch_size=4,
        ...                              global_batch_size=4, num_batches=1, seed=0)
        >>> stream = sampler.stream(epoch=0, pass_index=0)
        >>> len(stream)  # 2 per cluster
        4
    """

    def __init__(
        self,
        labels: Sequence[int],
        camids: Sequence[int],
        instances_per_identity: int,
        batch_size: int,
        global_batch_size: int,
        num_batches: int,
        seed: int = 0,
    ) -> None:
        if len(labels) != len(camids):
            raise ValueError(f"{len(labels)} labels but {len(camids)} cameras")
        if global_batch_size % batch_size or num_batches < 1 or instances_per_identity < 1:
            raise ValueError(f"need K >= 1, num_batches >= 1 and global_batch_size ({global_batch_size}) a multiple "
                             f"of batch_size ({batch_size})")
        self.members = {label: np.asarray(indices) for label, indices in _indices_by_label(labels).items()}
        self.camids = np.asarray(camids)
        self.k, self.batch_size, self.global_batch_size = instances_per_identity, batch_size, global_batch_size
        self.num_batches, self.seed, self.epoch = num_batches, seed, 0
        if sum(len(members) for members in self.members.values()) == 0:
            raise ValueError("no clustered image to sample from")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _companions(self, candidates: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return rng.choice(candidates, size=self.k - 1, replace=len(candidates) < self.k)

    def stream(self, epoch: int, pass_index: int) -> list[int]:
        """The images of one pass over the clusters, in order."""
        rng = np.random.default_rng([self.seed, epoch, pass_index])
        clusters = list(self.members)
        out: list[int] = []
        for position in rng.permutation(len(clusters)):
            members = self.members[clusters[position]]
            anchor = members[rng.integers(len(members))]
            out.append(int(anchor))
            if self.k == 1:
                continue
            other_camera = members[self.camids[members] != self.camids[anchor]]
            others = other_camera if len(other_camera) else members[members != anchor]
            if len(others):
                out += self._companions(others, rng).tolist()
        return out

    def batches(self, epoch: int) -> list[list[int]]:
        """The ``num_batches`` micro-batches of ``epoch``."""
        micro: list[list[int]] = []
        pass_index = 0
        while len(micro) < self.num_batches:
            stream = self.stream(epoch, pass_index)
            usable = len(stream) // self.global_batch_size * self.global_batch_size
            if not usable:  # every pass has the same length: none would fill a batch
                raise ValueError(f"a pass over the clusters gives {len(stream)} images, fewer than a global batch "
                                 f"of {self.global_batch_size}: lower --global_batch_size or cluster more images")
            micro += [stream[i : i + self.batch_size] for i in range(0, usable, self.batch_size)]
            pass_index += 1
        return micro[: self.num_batches]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches(self.epoch))

    def __len__(self) -> int:
        return self.num_batches
