"""Identity-balanced (P x K) batches for metric learning.

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


class PKBatchSampler(Sampler[list[int]]):
    """Batches of ``P`` identities x ``K`` images each (spec §4: P=16, K=4).

    Per epoch, every identity's images are shuffled and cut into chunks of K (an identity with fewer than K
    images, or a last incomplete chunk, is filled by resampling its own images), and batches are built by
    drawing P distinct identities that still have chunks; an epoch has ``total chunks // P`` batches, or
    ``num_batches`` (identities left without chunks are dealt new ones when fewer than P remain). The order
    depends only on ``seed`` and the epoch set with :meth:`set_epoch`, so every process of a distributed run
    computes the same list of batches; handing whole batches to processes in turn (what ``accelerator.prepare``
    does with a batch sampler) gives each process complete P x K batches.

    Args:
        labels: Identity label of every dataset item.
        identities_per_batch: P.
        instances_per_identity: K.
        seed: Shuffling seed.
        num_batches: Batches per epoch when it must not depend on the labels (cluster-contrast re-labels the
            data every epoch but keeps a fixed number of steps); default: one pass over the chunks.
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
        self.indices_of: dict[int, list[int]] = defaultdict(list)
        for index, label in enumerate(labels):
            self.indices_of[int(label)].append(index)
        if len(self.indices_of) < identities_per_batch:
            raise ValueError(
                f"a P x K batch needs {identities_per_batch} identities; the data has {len(self.indices_of)}. "
                "Lower --batch_size (P = batch_size / num_instances) or use more identities."
            )
        self.p, self.k, self.seed, self.epoch = identities_per_batch, instances_per_identity, seed, 0
        self.labels = sorted(self.indices_of)
        total_chunks = sum(-(-len(indices) // self.k) for indices in self.indices_of.values())
        self.num_batches = max(total_chunks // self.p, 1) if num_batches is None else num_batches
        if self.num_batches < 1:
            raise ValueError(f"num_batches must be >= 1, got {num_batches}")

    @property
    def batch_size(self) -> int:
        return self.p * self.k

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _chunks(self, label: int, rng: np.random.Generator) -> list[list[int]]:
        indices = rng.permutation(self.indices_of[label]).tolist()
        indices += rng.choice(self.indices_of[label], size=-len(indices) % self.k, replace=True).tolist()
        return [indices[i : i + self.k] for i in range(0, len(indices), self.k)]

    def _batches(self, epoch: int) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, epoch])
        chunks = {label: self._chunks(label, rng) for label in self.labels}
        batches = []
        while len(batches) < self.num_batches:
            available = [label for label in self.labels if chunks[label]]
            if len(available) < self.p:  # the rest would not fill a batch: deal those identities new chunks
                for label in self.labels:
                    chunks[label] = chunks[label] or self._chunks(label, rng)
                available = self.labels
            chosen = rng.choice(available, size=self.p, replace=False).tolist()
            batches.append([index for label in chosen for index in chunks[label].pop()])
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches(self.epoch))

    def __len__(self) -> int:
        return self.num_batches
