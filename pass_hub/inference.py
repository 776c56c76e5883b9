"""Inference with a PASS model: one way to resolve a MODEL argument, and batched image embedding.

A MODEL is any of (:func:`load_reid_model`):

* a pass-hub folder or hub id (``org/name``, ``hf-hub:org/name``); a ``PassViTForReID`` folder keeps its
  configured test-time feature (``reid_feature``) and normalisation (``normalize_embeddings``);
* a timm name of the ``pass_vit_*`` family (``pass_vit_small``, ``pass_vit_small.lup_pass``);
* an original PASS checkpoint (``.pth`` / ``.bin`` / ``.safetensors``, any layout :mod:`pass_hub.convert` reads);
* an ``nn.Module`` already in memory (``PassViTModel``, ``PassViTForReID`` or a timm ``PassVisionTransformer``),
  e.g. the model being trained;
* for :func:`embed` / :func:`embed_files` / :class:`pass_hub.GalleryIndex` only: an ONNX file written by
  :func:`pass_hub.export_onnx` (run with onnxruntime through :class:`pass_hub.OnnxReIDModel`).

Example:
    >>> import pass_hub  # doctest: +SKIP
    >>> model = pass_hub.load_reid_model("out/pass-vit-s16")  # doctest: +SKIP
    >>> features = pass_hub.embed(["a.jpg", crop], model=model)  # doctest: +SKIP
    >>> features.shape  # (2, 768), L2-normalised  # doctest: +SKIP
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import tempfile
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
from transformers.image_utils import PILImageResampling

from .atomic import atomic_file
from .backbone import PASS_POOLS, PassVisionTransformer, l2_normalize
from .configuration_pass_vit import IMAGENET_MEAN, IMAGENET_STD, PassViTConfig
from .image_processing_pass_vit import PassViTImageProcessorPil
from .modeling_pass_vit import PassViTForReID, PassViTModel, PassViTPreTrainedModel, describe_feature

if TYPE_CHECKING:
    from datasets import Dataset

    from .export import OnnxReIDModel

ImageInput = str | Path | Image.Image | np.ndarray
# A resolved model: PyTorch or onnxruntime; both map preprocessed pixels to embeddings.
Embedder = Union["ReIDEmbedder", "OnnxReIDModel"]
ModelSpec = Union[str, Path, nn.Module, "ReIDEmbedder", "OnnxReIDModel"]

EMBEDDING_SUFFIXES = (".safetensors", ".npy")
_NAMED_IN_WARNING = 20  # unreadable files named in a warning before "... and N more"


# ------------------------------------------------------------------------------------------- preprocessing
@dataclass(frozen=True)
class Preprocessing:
    """What a model expects of its input: RGB, resized to ``image_size``, rescaled to [0, 1], normalised.

    Attributes:
        image_size: (height, width) the images are resized to.
        mean: Per-channel mean subtracted after rescaling to [0, 1].
        std: Per-channel std divided by after subtracting the mean.
        interpolation: Resize filter (a ``PIL.Image.Resampling`` name in lower case).
        patch_size: Other input sizes must be multiples of it.
    """

    image_size: tuple[int, int]
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bilinear"
    patch_size: int = 16

    @classmethod
    def from_config(cls, config: PassViTConfig) -> Preprocessing:
        return cls(tuple(config.image_size), tuple(config.image_mean), tuple(config.image_std),
                   config.image_interpolation, config.patch_size)

    @classmethod
    def from_image_processor(cls, processor: Any, patch_size: int) -> Preprocessing:
        """From a transformers image processor (``preprocessor_config.json`` of a hub folder)."""
        size = processor.size
        return cls(
            (int(size["height"]), int(size["width"])),
            tuple(float(v) for v in processor.image_mean),
            tuple(float(v) for v in processor.image_std),
            PILImageResampling(processor.resample).name.lower(),
            patch_size,
        )

    @classmethod
    def from_timm(cls, model: PassVisionTransformer) -> Preprocessing:
        """From a timm model's ``pretrained_cfg`` (defaults: its construction size, ImageNet statistics)."""
        cfg = getattr(model, "pretrained_cfg", None) or {}
        height, width = cfg.get("input_size", (3, *model.patch_embed.img_size))[-2:]
        return cls(
            (int(height), int(width)),
            tuple(cfg.get("mean", IMAGENET_MEAN)),
            tuple(cfg.get("std", IMAGENET_STD)),
            cfg.get("interpolation", "bilinear"),
            int(model.patch_embed.patch_size[0]),
        )

    def image_processor(self) -> PassViTImageProcessorPil:
        """The PIL-backend processor doing this preprocessing (on batches of small person crops it is several
        times faster than the torchvision one, with the same output)."""
        height, width = self.image_size
        return PassViTImageProcessorPil(
            size={"height": height, "width": width},
            image_mean=list(self.mean),
            image_std=list(self.std),
            resample=PILImageResampling[self.interpolation.upper()],
        )


# ------------------------------------------------------------------------------------------------- models
# The feature search and tracking thresholds: after the BatchNorm necks, cosines of different people spread out
# (README, "Deployment": measured on the demo's models), where before the necks they all sit near 1.
DEPLOYMENT_FEATURE = "after_neck"
FEATURE_CHOICES = ("evaluation", "deployment", "before_neck", "after_neck")


def resolve_feature(model: nn.Module, feature: str) -> str:
    """``before_neck`` or ``after_neck`` for what ``feature`` asks of ``model`` (see :class:`ReIDEmbedder`).

    Example:
        >>> import pass_hub
        >>> config = pass_hub.PassViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=1, num_labels=2)
        >>> resolve_feature(pass_hub.PassViTForReID(config), "evaluation"), resolve_feature(
        ...     pass_hub.PassViTForReID(config), "deployment")
        ('before_neck', 'after_neck')
    """
    if feature not in FEATURE_CHOICES:
        raise ValueError(f"feature={feature!r}; expected one of {FEATURE_CHOICES}")
    has_necks = isinstance(model, PassViTForReID)
    if feature == "evaluation":
        return model.config.reid_feature if has_necks else "before_neck"
    if feature == "deployment":
        return DEPLOYMENT_FEATURE if has_necks else "before_neck"
    if feature == "after_neck" and not has_necks:
        raise ValueError(f"a {type(model).__name__} has no BatchNorm necks, so no after-neck feature")
    return feature


class ReIDEmbedder(nn.Module):
    """Preprocessed pixels (B, 3, H, W) -> ReID embeddings (B, 2D), L2-normalised when ``normalize``.

    The embedding is ``cat(CLS, mean(PART1..3))`` of the backbone, or for a ``PassViTForReID`` the feature
    ``feature`` names (``before_neck``: the same; ``after_neck``: after the BatchNorm necks). This is the module
    :func:`pass_hub.export_onnx` exports and :func:`embed` runs. Sizes other than ``preprocessing.image_size``
    (multiples of the patch size) resample the patch position table.

    Args:
        model: ``PassViTModel``, ``PassViTForReID`` or a timm ``PassVisionTransformer`` (``global_pool="pass"``).
        preprocessing: Input the weights expect; derived from ``model`` when None.
        normalize: L2-normalise the embedding; default: the ReID config's ``normalize_embeddings``, else True.
        source: What the model was loaded from (written into exported files and embedding metadata).
        feature: ``"deployment"`` (default): the one whose cosine similarities can be thresholded, the after-neck
            feature of a model with BatchNorm necks (:data:`DEPLOYMENT_FEATURE`); ``"evaluation"``: the feature the
            paper tests, ``config.reid_feature`` of a ReID model (the before-neck one unless configured otherwise);
            or ``"before_neck"`` / ``"after_neck"``. A backbone without necks has only the before-neck feature.

    Example:
        >>> import torch, pass_hub
        >>> config = pass_hub.PassViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2)
        >>> embedder = ReIDEmbedder(pass_hub.PassViTModel(config)).eval()
        >>> embedder(torch.randn(2, 3, 256, 128)).shape, embedder.normalize
        (torch.Size([2, 128]), True)
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        preprocessing: Preprocessing | None = None,
        normalize: bool | None = None,
        source: str = "",
        feature: str = "deployment",
    ) -> None:
        super().__init__()
        self.feature = resolve_feature(model, feature)
        if isinstance(model, PassViTPreTrainedModel):
            config = model.config
            default_preprocessing = Preprocessing.from_config(config)
            self.embedding_size = config.embedding_size
        elif isinstance(model, PassVisionTransformer):
            if model.global_pool not in PASS_POOLS:
                raise ValueError(f"the timm model pools with {model.global_pool!r}; create it with global_pool='pass'")
            default_preprocessing = Preprocessing.from_timm(model)
            self.embedding_size = model.head_hidden_size
        else:
            raise ValueError(
                f"expected a PassViTModel, PassViTForReID or PassVisionTransformer, got {type(model).__name__}"
            )
        self.model = model
        self.preprocessing = preprocessing or default_preprocessing
        if normalize is None:
            normalize = model.config.normalize_embeddings if isinstance(model, PassViTForReID) else True
        self.normalize = bool(normalize)
        self.source = source or type(model).__name__

    @property
    def feature_description(self) -> str:
        """Which feature the embedding is, in words (for metadata)."""
        if isinstance(self.model, PassViTPreTrainedModel):
            return describe_feature(self.model.config, self.feature)
        fusion = "cat(CLS, mean(PART_1..PART_n))" if self.model.global_pool == "pass" else "(CLS + mean(PARTs)) / 2"
        return f"{fusion} of the final-norm tokens"

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        model = self.model
        if isinstance(model, PassViTForReID):
            features = model.test_features(pixel_values, self.feature)
        elif isinstance(model, PassViTModel):
            features = model(pixel_values).pooler_output
        else:
            features = model.forward_head(model.forward_features(pixel_values), pre_logits=True)
        return l2_normalize(features) if self.normalize else features

    def fingerprint(self) -> str:
        """SHA-256 of the weights, preprocessing and output choice: equal fingerprints give equal embeddings."""
        digest = hashlib.sha256(repr((self.preprocessing, self.normalize, self.feature_description)).encode())
        for name, tensor in sorted(self.model.state_dict().items()):
            digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()


def _load_pass_hub_folder(spec: str) -> tuple[PassViTPreTrainedModel, Preprocessing]:
    """A local folder or hub id holding a pass-hub ``config.json``."""
    from transformers import AutoConfig, AutoImageProcessor

    config = AutoConfig.from_pretrained(spec)
    if not isinstance(config, PassViTConfig):
        raise ValueError(f"{spec} holds a {config.model_type!r} model, not a PASS ({PassViTConfig.model_type!r}) one")
    # A fine-tuned folder loads as PassViTForReID so that its configured test-time feature is used.
    model_class = PassViTForReID if "PassViTForReID" in (config.architectures or ()) else PassViTModel
    model = model_class.from_pretrained(spec, config=config)
    try:
        processor = AutoImageProcessor.from_pretrained(spec)
    except OSError:  # no preprocessor_config.json: the config's size and statistics are the truth
        return model, Preprocessing.from_config(config)
    return model, Preprocessing.from_image_processor(processor, config.patch_size)


def _load_timm(name: str, pretrained: bool) -> PassVisionTransformer:
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    # timm would warn and hand back random weights; a ReID model without weights must not pass silently.
    if pretrained and not (cfg and (cfg.hf_hub_id or cfg.url or cfg.file)):
        raise ValueError(
            f"timm model {name!r} has no published weights; give a folder or checkpoint, "
            "or pretrained=False for a randomly initialised model"
        )
    return timm.create_model(name, pretrained=pretrained, dynamic_img_size=True)


def load_reid_model(
    spec: str | Path | nn.Module,
    *,
    normalize: bool | None = None,
    pretrained: bool = True,
    device: str | torch.device | None = None,
    feature: str | None = None,
) -> ReIDEmbedder:
    """Resolve a MODEL argument (module docstring) to a :class:`ReIDEmbedder` in eval mode.

    Args:
        spec: Folder, hub id, timm ``pass_vit_*`` name, original checkpoint file, or a model object.
        normalize: L2-normalise embeddings; default: the ReID config's choice, otherwise True.
        feature: Which embedding (:class:`ReIDEmbedder`): ``"deployment"`` (default; the scores search and
            tracking threshold), ``"evaluation"`` (the paper's test feature, what :func:`pass_hub.evaluate_model`
            uses), ``"before_neck"`` or ``"after_neck"``; None keeps the feature of a :class:`ReIDEmbedder` passed
            as ``spec``.
        pretrained: For timm names: load the published weights (False: random initialisation, for benchmarks).
        device: Where to put the model (default: where it is, the CPU for loaded ones).

    Raises:
        FileNotFoundError / ValueError: naming the spec when it is none of the accepted forms.

    Example:
        >>> embedder = load_reid_model("pass_vit_tiny", pretrained=False)
        >>> embedder.embedding_size, embedder.preprocessing.image_size
        (384, (256, 128))
    """
    if isinstance(spec, ReIDEmbedder):
        embedder = spec
        wanted = spec.feature if feature is None else resolve_feature(spec.model, feature)
        if (normalize is not None and normalize != spec.normalize) or wanted != spec.feature:
            embedder = ReIDEmbedder(spec.model, preprocessing=spec.preprocessing,
                                    normalize=spec.normalize if normalize is None else normalize,
                                    source=spec.source, feature=wanted)
    elif isinstance(spec, nn.Module):
        embedder = ReIDEmbedder(spec, normalize=normalize, feature=feature or "deployment")
    else:
        embedder = _embedder_from_spec(str(spec), normalize=normalize, pretrained=pretrained,
                                       feature=feature or "deployment")
    if device is not None:
        embedder.to(device)
    return embedder.eval()


def _embedder_from_spec(spec: str, *, normalize: bool | None, pretrained: bool, feature: str) -> ReIDEmbedder:
    import timm

    path = Path(spec)
    if path.suffix == ".onnx":
        raise ValueError(f"{spec} is an ONNX file; run it with pass_hub.OnnxReIDModel (embed/search accept it)")
    if path.is_dir() and (path / "config.json").is_file():
        model, preprocessing = _load_pass_hub_folder(spec)
        return ReIDEmbedder(model, preprocessing=preprocessing, normalize=normalize, source=spec, feature=feature)
    if path.exists():
        # An original checkpoint (or a bare weights folder): convert it once to a temporary pass-hub folder,
        # which picks the backbone or ReID model and the matching normalisation exactly as `convert` does.
        from .convert import convert_checkpoint

        with tempfile.TemporaryDirectory(prefix="pass-hub-convert-") as scratch:
            folder = convert_checkpoint(path, Path(scratch) / "model")
            model, preprocessing = _load_pass_hub_folder(str(folder))
        return ReIDEmbedder(model, preprocessing=preprocessing, normalize=normalize, source=spec, feature=feature)
    name = spec.removeprefix("timm:")
    if name.split(".")[0] in timm.list_models("pass_vit*"):
        return ReIDEmbedder(_load_timm(name, pretrained), normalize=normalize, source=spec, feature=feature)
    hub_id = spec.removeprefix("hf-hub:")
    if hub_id.count("/") == 1 and not spec.startswith((".", "/")):
        try:
            model, preprocessing = _load_pass_hub_folder(hub_id)
        except OSError:  # not on the hub, offline, or not cached
            from huggingface_hub import constants

            where = "not in the local hub cache (offline)" if constants.HF_HUB_OFFLINE else "not found on the hub"
            raise FileNotFoundError(
                f"model {spec}: no such folder or file, and as a hub id {where}"
            ) from None
        return ReIDEmbedder(model, preprocessing=preprocessing, normalize=normalize, source=spec, feature=feature)
    raise FileNotFoundError(
        f"model {spec}: no such folder or file, and not a timm name ({', '.join(timm.list_models('pass_vit*'))}) "
        "or a hub id (org/name)"
    )


def resolve_embedder(model: ModelSpec, *, device: str | torch.device | None = None) -> Embedder:
    """:func:`load_reid_model`, plus ONNX files (``*.onnx``) and :class:`pass_hub.OnnxReIDModel` objects."""
    from .export import OnnxReIDModel

    if isinstance(model, OnnxReIDModel):
        return model
    if isinstance(model, (str, Path)) and Path(model).suffix == ".onnx":
        return OnnxReIDModel(model)
    return load_reid_model(model, device=device)


# ------------------------------------------------------------------------------------------------- images
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
    from .data.files import check_image_file

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
    from .data.files import list_image_files

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

    from .data import load_dataset_spec

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


# ---------------------------------------------------------------------------------------------- embedding
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


def embedding_metadata(embedder: Embedder) -> dict[str, str]:
    """Strings describing an embedder's output (stored with embedding files and gallery indexes)."""
    from . import __version__

    height, width = embedder.preprocessing.image_size
    return {
        "model": embedder.source,
        "model_fingerprint": embedder.fingerprint(),
        "embedding_dim": str(embedder.embedding_size),
        "feature": embedder.feature,
        "feature_description": embedder.feature_description,
        "normalized": str(embedder.normalize).lower(),
        "image_size": f"{height}x{width}",
        "pass_hub_version": __version__,
    }


def warn_skipped(skipped: Sequence[tuple[str, str]], total: int) -> None:
    """One warning naming the unreadable images (the category the dataset loaders use too)."""
    from .data import SkippedFilesWarning

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
