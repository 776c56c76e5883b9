"""Reproducible per-sample augmentation for the training scripts.

Each item's random transform draws from an RNG seeded by (run seed, epoch, item index). The augmentations of a
sample therefore do not depend on which DataLoader worker or process loads it, nor on where a resumed run
starts, which is what makes a killed and resumed run bit-identical to an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 63-bit seed for one sample of one epoch."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, dtype=np.uint64)[0] >> 1)


class SeededTransformDataset(Dataset):
    """Wrap an indexable dataset of dicts; apply ``transform`` to ``image_column`` with a per-sample seeded RNG.

    Args:
        dataset: Items are mappings (e.g. a ``datasets.Dataset``) holding a PIL image under ``image_column``.
        transform: Maps the image to a dict of tensors (e.g. :class:`training.pretraining.views.PassViews`) or a tensor.
        seed: Run seed.
        keep_columns: Other columns copied into each item (e.g. ``("label",)``).

    Example:
        >>> from PIL import Image
        >>> data = SeededTransformDataset([{"image": Image.new("RGB", (8, 8))}], lambda im: torch.rand(2), seed=0)
        >>> torch.equal(data[0]["pixel_values"], data[0]["pixel_values"])
        True
    """

    def __init__(
        self,
        dataset: Sequence[dict[str, Any]],
        transform: Callable[[Any], torch.Tensor | dict[str, torch.Tensor]],
        seed: int,
        image_column: str = "image",
        keep_columns: Sequence[str] = (),
    ) -> None:
        self.dataset = dataset
        self.transform = transform
        self.seed = seed
        self.image_column = image_column
        self.keep_columns = tuple(keep_columns)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.dataset[index]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed(self.seed, self.epoch, index))
            output = self.transform(item[self.image_column])
        output = dict(output) if isinstance(output, dict) else {"pixel_values": output}
        output.update({column: item[column] for column in self.keep_columns})
        return output


def dataset_spec(spec: str, data_dir: str | None, needs: str = "") -> str:
    """The dataset spec a run loads: ``spec`` (``--dataset`` / ``--data``) with ``--data_dir`` as its folder.

    A loader name that needs a folder and has none ends the run with a message saying what the recipe needs.

    Example:
        >>> dataset_spec("market1501", "/data/Market-1501-v15.09.15")
        'market1501:/data/Market-1501-v15.09.15'
    """
    from pass_hub.data.spec import SPEC_NAMES, SYNTHETIC

    name, separator, _ = spec.partition(":")
    if data_dir:
        if separator and name.strip().lower() != SYNTHETIC:
            raise SystemExit(f"--data_dir {data_dir} and the folder in {spec!r} both name the data: give one")
        return f"{name}:{data_dir}"
    if not separator and name.strip().lower() in SPEC_NAMES and name.strip().lower() != SYNTHETIC:
        hint = f" (this recipe needs {needs})" if needs else ""
        raise SystemExit(f"{name} needs its folder: give --data_dir DIR{hint}")
    return spec
