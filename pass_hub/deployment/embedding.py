"""Batched image embedding with any resolved model, PyTorch or ONNX (:func:`embed`, :func:`embed_files`,
:class:`ImageEmbeddings`).

Example:
    >>> import pass_hub  # doctest: +SKIP
    >>> model = pass_hub.load_reid_model("out/pass-vit-s16")  # doctest: +SKIP
    >>> features = pass_hub.embed(["a.jpg", crop], model=model)  # doctest: +SKIP
    >>> features.shape  # (2, 768), L2-normalised  # doctest: +SKIP
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from ..atomic import atomic_file
from .embedder import ReIDEmbedder, load_reid_model
from .images import ImageInput, ImageList, dataset_images, list_image_paths, read_image
from .preprocessing import embedding_metadata

if TYPE_CHECKING:
    from datasets import Dataset

    from .export import OnnxReIDModel

# A resolved model: PyTorch or onnxruntime; both map preprocessed pixels to embeddings.
Embedder = Union["ReIDEmbedder", "OnnxReIDModel"]
ModelSpec = Union[str, Path, nn.Module, "ReIDEmbedder", "OnnxReIDModel"]

EMBEDDING_SUFFIXES = (".safetensors", ".npy")
_NAMED_IN_WARNING = 20  # unreadable files named in a warning before "... and N more"


def resolve_embedder(
    model: ModelSpec, *, device: str | torch.device | None = None, num_heads: int | None = None
) -> Embedder:
    """:func:`load_reid_model`, plus ONNX files (``*.onnx``) and :class:`pass_hub.OnnxReIDModel` objects."""
    from .export import OnnxReIDModel

    onnx = isinstance(model, OnnxReIDModel) or (isinstance(model, (str, Path)) and Path(model).suffix == ".onnx")
    if onnx and num_heads is not None:
        raise ValueError("num_heads (--num-heads) does not apply to an ONNX file: its graph fixed the heads")
    if isinstance(model, OnnxReIDModel):
        return model
    if onnx:
        return OnnxReIDModel(model)
    return load_reid_model(model, device=device, num_heads=num_heads)




@dataclass
class ImageEmbeddings:
    """Embeddings of named images, as :func:`embed_files` returns them and ``pass-hub embed`` writes them.

    Attributes:
        embeddings: (N, E) float32, row i belongs to ``names[i]``.
        names: Image names (file paths as given, or dataset ``path`` values).
        pids / camids: Identity and camera of each row when the images came from a labelled dataset.
        metadata: Strings describing the embedding (model, fingerprint, normalised, image size ...).
        skipped: ``(name, reason)`` of unreadable inputs; they have no row (not saved).

    Files: ``.safetensors`` holds tensors ``embeddings`` (+ ``pids``, ``camids``) with the names and metadata
    in its header; ``.npy`` holds the array, with ``<stem>.json`` beside it for names, ids and metadata.
    """

    embeddings: torch.Tensor
    names: list[str]
    pids: list[int] | None = None
    camids: list[int] | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @staticmethod
    def output_files(path: str | Path, *, overwrite: bool = False) -> list[Path]:
        """The files :meth:`save` writes for ``path``; raises before any work when one cannot be written."""
        path = Path(path)
        if path.suffix not in EMBEDDING_SUFFIXES:
            raise ValueError(f"embedding file {path} must end with {' or '.join(EMBEDDING_SUFFIXES)}")
        files = [path] + ([path.with_suffix(".json")] if path.suffix == ".npy" else [])
        existing = [str(file) for file in files if file.exists()]
        if existing and not overwrite:
            raise FileExistsError(f"{', '.join(existing)} already exist(s); pass overwrite=True (CLI: --overwrite)")
        return files

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write to ``.safetensors`` or ``.npy`` (+ ``.json`` of names), each file atomically."""
        path, *sidecar = self.output_files(path, overwrite=overwrite)
        ids = {key: value for key, value in (("pids", self.pids), ("camids", self.camids)) if value is not None}
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            tensors = {"embeddings": self.embeddings.float().contiguous()}
            tensors |= {key: torch.tensor(value, dtype=torch.int64) for key, value in ids.items()}
            header = {**self.metadata, "names": json.dumps(self.names)}
            with atomic_file(path) as temporary:
                save_file(tensors, temporary, metadata=header)
            return path
        with atomic_file(sidecar[0]) as temporary:
            temporary.write_text(json.dumps({"names": self.names, **ids, "metadata": self.metadata}))
        with atomic_file(path) as temporary, temporary.open("wb") as handle:
            np.save(handle, self.embeddings.float().numpy())
        return path

    @classmethod
    def load(cls, path: str | Path) -> ImageEmbeddings:
        """Read a file written by :meth:`save`."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"embedding file not found: {path}")
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(path, framework="pt") as handle:
                header = dict(handle.metadata() or {})
                tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
            if "embeddings" not in tensors or "names" not in header:
                raise ValueError(f"{path} is not a pass-hub embedding file (no 'embeddings' tensor / 'names')")
            names = json.loads(header.pop("names"))
            ids = {key: tensors[key].tolist() for key in ("pids", "camids") if key in tensors}
            return cls(tensors["embeddings"], names, metadata=header, **ids)
        if path.suffix == ".npy":
            sidecar = path.with_suffix(".json")
            if not sidecar.is_file():
                raise FileNotFoundError(f"{path} has no names file {sidecar}")
            info = json.loads(sidecar.read_text())
            return cls(torch.from_numpy(np.load(path)), info["names"], info.get("pids"), info.get("camids"),
                       info.get("metadata", {}))
        raise ValueError(f"embedding file {path} must end with {' or '.join(EMBEDDING_SUFFIXES)}")


def _pixels_to_embeddings(embedder: Embedder, pixel_values: torch.Tensor) -> torch.Tensor:
    if isinstance(embedder, nn.Module):
        device = next(embedder.parameters()).device
        return embedder(pixel_values.to(device)).float().cpu()
    return torch.from_numpy(embedder(pixel_values.numpy()))


def _embed_in_batches(
    embedder: Embedder,
    names: Sequence[str],
    images: Sequence[Any],
    *,
    batch_size: int,
    progress: bool,
    skip_unreadable: bool,
) -> tuple[torch.Tensor, list[int], list[tuple[str, str]]]:
    """Returns the embeddings, the indices of the inputs they belong to, and the skipped ``(name, reason)``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    processor = embedder.preprocessing.image_processor()
    chunks: list[torch.Tensor] = []
    kept: list[int] = []
    skipped: list[tuple[str, str]] = []
    batch: list[Image.Image] = []

    def flush() -> None:
        if batch:
            pixels = processor(batch, return_tensors="pt")["pixel_values"]
            chunks.append(_pixels_to_embeddings(embedder, pixels))
            batch.clear()

    if isinstance(embedder, nn.Module):
        embedder.eval()
    bar = tqdm(total=len(images), desc="embedding", unit="img", disable=not progress)
    with torch.inference_mode(), bar:
        for index, (name, image) in enumerate(zip(names, images, strict=True)):
            try:
                batch.append(read_image(image))
                kept.append(index)
            except ValueError as err:
                if not skip_unreadable:
                    raise ValueError(f"image {name}: {err}") from None
                skipped.append((name, str(err)))
            if len(batch) == batch_size:
                flush()
            bar.update()
        flush()
    dim = embedder.embedding_size
    return (torch.cat(chunks) if chunks else torch.empty(0, dim)), kept, skipped


def embed(
    images: ImageInput | Sequence[ImageInput],
    model: ModelSpec,
    *,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """ReID embeddings of images, one row per image in order: the call a tracker makes for its crops.

    Args:
        images: One image or a sequence: file paths, PIL images, uint8 RGB arrays (H, W, 3).
        model: A MODEL (module docstring) or a model already resolved with :func:`load_reid_model` /
            :class:`pass_hub.OnnxReIDModel`; resolve it once and pass the object when calling repeatedly.
        batch_size: Images per forward pass.
        device: Device of a PyTorch model (moved there); ignored for ONNX.
        progress: Show a progress bar.

    Returns:
        (N, E) float32 on the CPU, L2-normalised unless the model was loaded with ``normalize=False``.

    Raises:
        ValueError: naming the first unreadable image (use :func:`embed_files` to skip those instead).

    Example:
        >>> import numpy as np, pass_hub
        >>> model = pass_hub.load_reid_model("pass_vit_tiny", pretrained=False)
        >>> crops = [np.zeros((120, 50, 3), np.uint8), np.full((90, 40, 3), 200, np.uint8)]
        >>> pass_hub.embed(crops, model=model).shape
        torch.Size([2, 384])
    """
    items = [images] if isinstance(images, (str, Path, Image.Image, np.ndarray)) else list(images)
    embedder = resolve_embedder(model, device=device)
    names = [str(item) if isinstance(item, (str, Path)) else f"image {i}" for i, item in enumerate(items)]
    embeddings, _, _ = _embed_in_batches(
        embedder, names, items, batch_size=batch_size, progress=progress, skip_unreadable=False
    )
    return embeddings


def warn_skipped(skipped: Sequence[tuple[str, str]], total: int) -> None:
    """One warning naming the unreadable images (the category the dataset loaders use too)."""
    from ..data import SkippedFilesWarning

    if not skipped:
        return
    named = ", ".join(f"{name} ({reason})" for name, reason in skipped[:_NAMED_IN_WARNING])
    more = len(skipped) - _NAMED_IN_WARNING
    warnings.warn(
        f"skipped {len(skipped)} of {total} image(s) that could not be read: {named}"
        + (f" ... and {more} more" if more > 0 else ""),
        SkippedFilesWarning,
        stacklevel=3,
    )


def embed_files(
    sources: str | Path | Sequence[str | Path] | Dataset | ImageList,
    model: ModelSpec,
    *,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> ImageEmbeddings:
    """Embed files (paths, folders, globs) or a ``datasets.Dataset``, keeping names and skipping bad images.

    Unreadable images get no row; one ``pass_hub.data.SkippedFilesWarning`` names them and
    ``result.skipped`` lists them. Raises ``ValueError`` when no image at all could be read.

    Example:
        >>> result = pass_hub.embed_files(["gallery/", "extra/*.jpg"], model="out/pass-vit-s16")  # doctest: +SKIP
        >>> result.embeddings.shape, result.names[:2]  # doctest: +SKIP
        (torch.Size([1510, 768]), ['gallery/0001_c1s1_000151_01.jpg', 'gallery/0001_c1s1_001051_03.jpg'])
        >>> result.save("gallery.safetensors")  # doctest: +SKIP
    """
    if isinstance(sources, ImageList):
        listing = sources
    elif hasattr(sources, "column_names"):  # a datasets.Dataset
        listing = dataset_images(sources)
    else:
        paths = list_image_paths(sources)
        listing = ImageList([str(path) for path in paths], paths)
    embedder = resolve_embedder(model, device=device)
    embeddings, kept, skipped = _embed_in_batches(
        embedder, listing.names, listing.images, batch_size=batch_size, progress=progress, skip_unreadable=True
    )
    warn_skipped(skipped, len(listing.names))
    if not kept:
        raise ValueError(f"none of the {len(listing.names)} image(s) could be read (first: {skipped[0][0]})")
    return ImageEmbeddings(
        embeddings,
        [listing.names[i] for i in kept],
        [listing.pids[i] for i in kept] if listing.pids is not None else None,
        [listing.camids[i] for i in kept] if listing.camids is not None else None,
        embedding_metadata(embedder),
        skipped,
    )
