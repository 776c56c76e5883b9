"""Image inputs: paths, globs, bytes, PIL images, arrays and dataset splits, read as RGB ``PIL`` images."""

from __future__ import annotations

import glob
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from datasets import Dataset

ImageInput = str | Path | Image.Image | np.ndarray


def read_image(image: ImageInput | bytes) -> Image.Image:
    """An RGB ``PIL.Image`` from a path, encoded bytes, a PIL image or a uint8 (H, W[, 3]) RGB array.

    Raises ``ValueError`` saying why when the input is not a readable image.
    """
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
            raise ValueError(
                f"numpy images must be uint8 (H, W) or (H, W, 3) RGB, got {image.dtype} {image.shape} "
                "(OpenCV frames are BGR: pass frame[..., ::-1])"
            )
        return Image.fromarray(image).convert("RGB")
    from ..data.files import check_image_file

    # The dataset loaders' definition of a usable image, so the reasons read the same everywhere; decoding
    # twice costs far less than the model's forward pass.
    def source() -> io.BytesIO | Path:  # a fresh stream each time: a read consumes it
        return io.BytesIO(image) if isinstance(image, bytes) else Path(image)

    check_image_file(source(), verify="full")
    with Image.open(source()) as opened:
        return opened.convert("RGB")


@dataclass
class ImageList:
    """Images to embed, with the name each keeps in the output (file path, dataset ``path``, or row index)."""

    names: list[str]
    images: list[Any]  # anything read_image accepts
    pids: list[int] | None = None
    camids: list[int] | None = None


def _is_glob(text: str) -> bool:
    return any(char in text for char in "*?[")


def list_image_paths(sources: str | Path | Sequence[str | Path]) -> list[Path]:
    """Files named by ``sources``: files as given, folders recursively (image extensions, sorted), globs (sorted).

    A file named twice (a folder and a glob inside it) is listed once, where it first appears.
    Raises ``FileNotFoundError`` for a missing file, an unmatched glob or a folder without images.
    """
    from ..data.files import list_image_files

    paths: list[Path] = []
    for source in [sources] if isinstance(sources, (str, Path)) else sources:
        path = Path(source)
        if path.is_dir():
            found = list_image_files(path, recursive=True)
            if not found:
                raise FileNotFoundError(f"no image files in folder {path}")
            paths += found
        elif path.is_file():
            paths.append(path)
        elif _is_glob(str(source)):
            matches = sorted(Path(match) for match in glob.glob(str(source), recursive=True) if Path(match).is_file())
            if not matches:
                raise FileNotFoundError(f"no file matches {source}")
            paths += matches
        else:
            raise FileNotFoundError(f"no such file or folder: {source}")
    unique: dict[Path, Path] = {}
    for path in paths:
        unique.setdefault(path.resolve(), path)
    return list(unique.values())


def dataset_images(dataset: Dataset) -> ImageList:
    """The rows of a ``datasets.Dataset`` with an ``image`` column (pass-hub splits also carry path/pid/camid).

    Images are read undecoded so that a broken one is skipped instead of failing the whole run.
    """
    from datasets import Image as ImageFeature

    if "image" not in dataset.column_names:
        raise ValueError(f"the dataset has no 'image' column (columns: {dataset.column_names})")
    raw = dataset.cast_column("image", ImageFeature(decode=False))
    images = [entry["bytes"] or entry["path"] for entry in raw["image"]]
    columns = dataset.column_names
    paths = dataset["path"] if "path" in columns else [None] * len(images)
    names = [path or str(row) for row, path in enumerate(paths)]
    return ImageList(
        names,
        images,
        list(dataset["pid"]) if "pid" in columns else None,
        list(dataset["camid"]) if "camid" in columns else None,
    )


def load_dataset_split(spec: str, split: str | None = None) -> Dataset:
    """A split of a dataset spec (:func:`pass_hub.data.load_dataset_spec`) or of a ``save_to_disk`` folder.

    ``split`` may be omitted when there is only one.
    """
    from datasets import Dataset, load_from_disk

    from ..data import load_dataset_spec

    path = Path(spec)
    saved = path.is_dir() and any((path / name).is_file() for name in ("dataset_dict.json", "state.json"))
    data = load_from_disk(spec) if saved else load_dataset_spec(spec)
    if isinstance(data, Dataset):
        return data
    if split is None:
        if len(data) != 1:
            raise ValueError(f"dataset {spec} has splits {sorted(data)}; choose one (CLI: --split)")
        split = next(iter(data))
    if split not in data:
        raise ValueError(f"dataset {spec} has no split {split!r}; it has {sorted(data)}")
    return data[split]
