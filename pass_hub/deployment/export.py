"""ONNX export of the ReID embedding, and an onnxruntime runner that checks its input against the file's metadata.

The graph maps preprocessed pixels ``pixel_values`` (B, 3, H, W), float32 RGB normalised with the model's
mean/std, to ``embeddings`` (B, E); the batch is always dynamic, the image size fixed (the model's, or
``image_size``) or dynamic (``dynamic_size=True``: any multiple of the patch size, the position-table resampling
is part of the graph). Everything a runtime needs to feed it is in the model's ``metadata_props``
(:data:`METADATA_FORMAT`): input size, mean/std, resize filter, embedding width, whether it is L2-normalised,
the source model.

Exporter: ``torch.onnx.export(dynamo=True)`` (torch.export + onnxscript). The TorchScript tracer cannot serve
the dynamic-size graph: timm's resampling skips itself when the traced size equals the learned grid, so the
traced graph adds a fixed-length position table and fails at any other size. torch.export keeps the sizes
symbolic (timm disables that shortcut under export). Opset 23 is the first with a fused ``Attention`` operator,
which onnxruntime (1.23 or newer) runs as one kernel per block instead of MatMul / Softmax / MatMul; at opset 18
the exporter spells attention out in those primitives (the file then runs on onnxruntime 1.14 or newer).

``quantize="int8"`` writes the dynamically quantised model instead: the weights of the linear layers (every
MatMul with a constant operand) are int8, per output channel; activations are quantised on the fly per batch;
attention itself, the normalisations and the patch embedding stay float32. The quantised file is checked
against PyTorch by cosine similarity (:data:`INT8_MIN_COSINE`) rather than by absolute difference.

Example:
    >>> import pass_hub  # doctest: +SKIP
    >>> pass_hub.export_onnx("out/pass-vit-s16", "pass-vit-s16.onnx")  # doctest: +SKIP
    >>> runner = pass_hub.OnnxReIDModel("pass-vit-s16.onnx")  # doctest: +SKIP
    >>> pass_hub.embed(["a.jpg", "b.jpg"], model=runner).shape  # doctest: +SKIP
    torch.Size([2, 768])
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from ..atomic import atomic_file
from ..extras import require_extra
from .embedder import ReIDEmbedder, load_reid_model
from .preprocessing import Preprocessing, embedding_metadata

DEFAULT_OPSET = 23
INPUT_NAME = "pixel_values"
OUTPUT_NAME = "embeddings"
METADATA_FORMAT = "pass-hub-reid-embedding/1"
PARITY_TOLERANCE = 1e-4
# Lowest cosine similarity between an int8 file's embedding and PyTorch's on the check's random pixels.
INT8_MIN_COSINE = 0.99
QUANTIZATIONS = ("int8",)


class OnnxExport(NamedTuple):
    """What :func:`export_onnx` wrote: the file, the onnxruntime-vs-PyTorch max abs difference per image size, and
    for a quantised file the lowest cosine similarity between its embeddings and PyTorch's per image size."""

    path: Path
    max_abs_diff: dict[tuple[int, int], float]
    min_cosine: dict[tuple[int, int], float] | None = None


def parse_image_size(text: str) -> tuple[int, int]:
    """``"256x128"`` -> ``(256, 128)``; ``ValueError`` otherwise."""
    try:
        height, width = (int(side) for side in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"expected HEIGHTxWIDTH such as 256x128, got {text!r}") from None
    return height, width


def _check_image_size(size: Sequence[int], patch_size: int) -> tuple[int, int]:
    if len(size) != 2 or any(side < patch_size or side % patch_size for side in size):
        raise ValueError(f"image size {tuple(size)} must be (height, width), positive multiples of {patch_size}")
    return int(size[0]), int(size[1])


def onnx_metadata(embedder: ReIDEmbedder, image_size: tuple[int, int], dynamic_size: bool) -> dict[str, str]:
    """The ``metadata_props`` written into an exported file (all values are strings)."""
    prep = embedder.preprocessing
    height, width = image_size
    resize = "any size with sides that are multiples of" if dynamic_size else f"{height}x{width}, a multiple of"
    return {
        **embedding_metadata(embedder),
        "format": METADATA_FORMAT,
        "image_size": f"{height}x{width}",
        "dynamic_size": str(dynamic_size).lower(),
        "patch_size": str(prep.patch_size),
        "image_mean": json.dumps(list(prep.mean)),
        "image_std": json.dumps(list(prep.std)),
        "interpolation": prep.interpolation,
        "input": f"{INPUT_NAME}: float32 (batch, 3, height, width), RGB",
        "preprocessing": (
            f"convert to RGB, resize to {height}x{width} ({prep.interpolation}; the graph takes {resize} "
            f"{prep.patch_size}), scale to [0, 1], subtract image_mean, divide by image_std"
        ),
        "embedding": embedder.feature_description,
    }


# What each ONNX step needs, all installed by the package's ``onnx`` extra.
EXPORT_MODULES = ("onnx", "onnxscript")
RUNTIME_MODULES = ("onnxruntime",)


def export_onnx(
    model: str | Path | nn.Module,
    out: str | Path,
    *,
    image_size: Sequence[int] | None = None,
    dynamic_size: bool = False,
    normalize: bool | None = None,
    opset: int = DEFAULT_OPSET,
    overwrite: bool = False,
    verify: bool = True,
    feature: str = "deployment",
    quantize: str | None = None,
    num_heads: int | None = None,
) -> OnnxExport:
    """Export a model's ReID embedding to ONNX (dynamic batch), written atomically with metadata.

    Args:
        model: A MODEL (see :func:`pass_hub.load_reid_model`) or a loaded :class:`pass_hub.ReIDEmbedder`.
        out: Destination ``.onnx`` file (weights inside it, no external data file).
        image_size: (height, width) of the input; default: the size the model was trained at.
        dynamic_size: Accept any height and width that are multiples of the patch size.
        normalize: Export the L2-normalised embedding (default: the model's choice, True for backbones) or,
            with False, the raw one.
        opset: ONNX opset (default 23, see the module docstring).
        overwrite: Replace an existing ``out``.
        verify: Compare onnxruntime with PyTorch (:func:`check_onnx_parity`) before the file is put in place;
            ``ValueError`` when they differ by more than :data:`PARITY_TOLERANCE` (a quantised file: when a cosine
            similarity falls below :data:`INT8_MIN_COSINE`).
        feature: Which embedding (see :class:`pass_hub.ReIDEmbedder`): the deployment one by default.
        quantize: ``"int8"``: dynamic int8 quantisation of the linear layers (module docstring); None: float32.
        num_heads: Attention heads of an original checkpoint that does not have 64 values per head.

    Example:
        >>> import pass_hub, tempfile
        >>> config = pass_hub.PassViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2)
        >>> result = export_onnx(pass_hub.PassViTModel(config), tempfile.mkdtemp() + "/tiny.onnx")
        >>> result.path.name, max(result.max_abs_diff.values()) < PARITY_TOLERANCE
        ('tiny.onnx', True)
    """
    needs_runtime = verify or quantize is not None
    require_extra("onnx", [*EXPORT_MODULES, *(RUNTIME_MODULES if needs_runtime else ())], "exporting to ONNX")
    if quantize not in (None, *QUANTIZATIONS):
        raise ValueError(f"quantize={quantize!r}; expected None or one of {QUANTIZATIONS}")
    out = Path(out)
    if out.suffix != ".onnx":
        raise ValueError(f"ONNX output {out} must end with .onnx")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; pass overwrite=True (CLI: --overwrite) to replace it")
    embedder = load_reid_model(model, normalize=normalize, device="cpu", feature=feature, num_heads=num_heads)
    patch = embedder.preprocessing.patch_size
    height, width = _check_image_size(image_size or embedder.preprocessing.image_size, patch)
    dims: dict[int, object] = {0: torch.export.Dim("batch", min=1)}
    if dynamic_size:
        # Sizes are patch multiples: the exported input dims read "16*height_patches" / "16*width_patches".
        dims[2] = patch * torch.export.Dim("height_patches", min=1)
        dims[3] = patch * torch.export.Dim("width_patches", min=1)
    example = torch.randn(2, 3, height, width)
    with warnings.catch_warnings():
        # torch.export reports every specialisation it considers; the graph is checked against onnxruntime instead.
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            embedder,
            (example,),
            dynamo=True,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes={"pixel_values": dims},
            external_data=False,
            verbose=False,
        )
    metadata = onnx_metadata(embedder, (height, width), dynamic_size)
    if quantize:
        metadata["quantization"] = "int8 dynamic: linear-layer weights per channel, activations per batch"
    program.model.metadata_props.update(metadata)
    parity: dict[tuple[int, int], float] = {}
    cosines: dict[tuple[int, int], float] | None = None
    with atomic_file(out, overwrite=overwrite) as temporary:
        program.save(temporary, external_data=False)
        if quantize:
            _quantize_int8(temporary)
        if verify:
            measured = _parity(temporary, embedder)
            parity = {size: values["max_abs_diff"] for size, values in measured.items()}
            if quantize:
                cosines = {size: values["min_cosine"] for size, values in measured.items()}
                size, worst = min(cosines.items(), key=lambda item: item[1])
                if worst < INT8_MIN_COSINE:
                    raise ValueError(
                        f"the int8 model's embeddings reach only cosine {worst:.4f} (< {INT8_MIN_COSINE}) with "
                        f"PyTorch's at {size[0]}x{size[1]}; {out} was not written (export it without quantize)"
                    )
            else:
                size, worst = max(parity.items(), key=lambda item: item[1])
                if worst > PARITY_TOLERANCE:
                    raise ValueError(
                        f"onnxruntime differs from PyTorch by {worst:.2e} (> {PARITY_TOLERANCE:.0e}) at "
                        f"{size[0]}x{size[1]}; {out} was not written"
                    )
    return OnnxExport(out, parity, cosines)


def _quantize_int8(path: Path) -> None:
    """Replace the float32 file ``path`` by its dynamically int8-quantised version, metadata kept."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    metadata = {entry.key: entry.value for entry in onnx.load(str(path), load_external_data=False).metadata_props}
    quantized = path.with_name(path.stem + ".int8" + path.suffix)
    root = logging.getLogger()
    level = root.level
    try:
        # The quantiser logs advice to pre-process the graph (shape inference), which a static export does not need.
        root.setLevel(logging.ERROR)
        # MatMul only: the quantiser mistakes opset 23's Attention for onnxruntime's own contrib operator.
        quantize_dynamic(path, quantized, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"],
                         per_channel=True, reduce_range=True)
        model = onnx.load(str(quantized))
        model.metadata_props.clear()
        for key, value in metadata.items():
            model.metadata_props.add(key=key, value=value)
        onnx.save(model, str(path))
    finally:
        root.setLevel(level)
        quantized.unlink(missing_ok=True)


class OnnxReIDModel:
    """An exported ReID embedding run with onnxruntime; inputs are checked against the file's metadata.

    Accepted wherever a MODEL is (``pass_hub.embed``, ``embed_files``, ``GalleryIndex``, the CLI with a
    ``.onnx`` path), which preprocess images as :attr:`preprocessing` says.

    Args:
        path: A file written by :func:`export_onnx`.
        providers: onnxruntime execution providers.
        threads: Intra-op threads (default: onnxruntime's choice, the physical cores).

    Example:
        >>> runner = OnnxReIDModel("pass-vit-s16.onnx")  # doctest: +SKIP
        >>> runner(np.zeros((4, 3, 256, 128), np.float32)).shape  # doctest: +SKIP
        (4, 768)
        >>> runner(np.zeros((1, 3, 384, 128), np.float32))  # doctest: +SKIP
        ValueError: pass-vit-s16.onnx takes pixel_values of shape (batch, 3, 256, 128) ...
    """

    def __init__(
        self,
        path: str | Path,
        *,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        threads: int | None = None,
    ) -> None:
        require_extra("onnx", RUNTIME_MODULES, "running an ONNX file")
        import onnxruntime

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"ONNX file not found: {self.path}")
        options = onnxruntime.SessionOptions()  # all graph optimisations, attention fusion among them (default)
        if threads is not None:
            options.intra_op_num_threads = threads
        self.session: onnxruntime.InferenceSession = onnxruntime.InferenceSession(
            str(self.path), options, providers=list(providers)
        )
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)
        if self.metadata.get("format") != METADATA_FORMAT:
            raise ValueError(
                f"{self.path} has no pass-hub metadata (format {METADATA_FORMAT!r}); export it with "
                "pass_hub.export_onnx / pass-hub export-onnx"
            )
        self.preprocessing = Preprocessing(
            parse_image_size(self.metadata["image_size"]),
            tuple(json.loads(self.metadata["image_mean"])),
            tuple(json.loads(self.metadata["image_std"])),
            self.metadata["interpolation"],
            int(self.metadata["patch_size"]),
        )
        self.dynamic_size = self.metadata["dynamic_size"] == "true"
        self.normalize = self.metadata["normalized"] == "true"
        self.embedding_size = int(self.metadata["embedding_dim"])
        self.feature = self.metadata.get("feature", "")  # files of pass-hub 0.1 before this field: unknown
        self.feature_description = self.metadata.get("feature_description", self.metadata.get("embedding", ""))
        self.quantization = self.metadata.get("quantization", "")  # empty: float32
        self.source = str(self.path)
        self._fingerprint: str | None = None

    def check_input(self, shape: Sequence[int]) -> None:
        """Raise ``ValueError`` saying what is expected when ``shape`` does not fit the exported graph."""
        height, width = self.preprocessing.image_size
        patch = self.preprocessing.patch_size
        if self.dynamic_size:
            fits = len(shape) == 4 and shape[1] == 3 and all(s > 0 and s % patch == 0 for s in shape[2:])
            expected = f"(batch, 3, height, width), height and width multiples of {patch} (trained at {height}x{width})"
        else:
            fits = len(shape) == 4 and tuple(shape[1:]) == (3, height, width)
            expected = (
                f"(batch, 3, {height}, {width}) (exported at a fixed size; resize with "
                f"preprocessing.image_processor(), or re-export with dynamic_size=True / --dynamic-size)"
            )
        if not fits or shape[0] < 1:
            raise ValueError(f"{self.path.name} takes {INPUT_NAME} of shape {expected}; got {tuple(shape)}")

    def __call__(self, pixel_values: np.ndarray | torch.Tensor) -> np.ndarray:
        """(B, 3, H, W) preprocessed pixels -> (B, E) float32 embeddings."""
        if isinstance(pixel_values, torch.Tensor):
            pixel_values = pixel_values.detach().cpu().numpy()
        self.check_input(pixel_values.shape)
        (embeddings,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(pixel_values, np.float32)})
        return embeddings

    def fingerprint(self) -> str:
        """SHA-256 of the file (weights, graph and metadata)."""
        if self._fingerprint is None:
            self._fingerprint = hashlib.sha256(self.path.read_bytes()).hexdigest()
        return self._fingerprint


PARITY_MEASURES = ("max_abs_diff", "min_cosine")


def check_onnx_parity(
    onnx_model: str | Path | OnnxReIDModel,
    reference: str | Path | nn.Module,
    *,
    sizes: Sequence[tuple[int, int]] | None = None,
    batch_size: int = 3,
    seed: int = 0,
    measure: str = "max_abs_diff",
) -> dict[tuple[int, int], float]:
    """Max abs difference (``measure="min_cosine"``: lowest cosine similarity) between onnxruntime's and
    PyTorch's embeddings of random inputs, per image size.

    ``sizes`` default to the exported size and, for a dynamic-size export, also a 1.5x taller one, which
    exercises the position-table resampling inside the graph.

    Example:
        >>> check_onnx_parity("tiny.onnx", "out/tiny")  # doctest: +SKIP
        {(256, 128): 1.2e-07, (384, 128): 9.7e-08}
    """
    if measure not in PARITY_MEASURES:
        raise ValueError(f"measure={measure!r}; expected one of {PARITY_MEASURES}")
    measured = _parity(onnx_model, reference, sizes=sizes, batch_size=batch_size, seed=seed)
    return {size: values[measure] for size, values in measured.items()}


def _parity(
    onnx_model: str | Path | OnnxReIDModel,
    reference: str | Path | nn.Module,
    *,
    sizes: Sequence[tuple[int, int]] | None = None,
    batch_size: int = 3,
    seed: int = 0,
) -> dict[tuple[int, int], dict[str, float]]:
    """Every :data:`PARITY_MEASURES` per image size, from one run of both runtimes (see :func:`check_onnx_parity`)."""
    runner = onnx_model if isinstance(onnx_model, OnnxReIDModel) else OnnxReIDModel(onnx_model)
    embedder = load_reid_model(reference, normalize=runner.normalize, device="cpu", feature=runner.feature or None)
    height, width = runner.preprocessing.image_size
    patch = runner.preprocessing.patch_size
    if sizes is None:
        sizes = [(height, width)] + ([(height * 3 // 2 // patch * patch, width)] if runner.dynamic_size else [])
    generator = torch.Generator().manual_seed(seed)
    measured = {}
    with torch.inference_mode():
        for size in sizes:
            pixels = torch.randn(batch_size, 3, *size, generator=generator)
            expected, got = embedder(pixels), torch.from_numpy(runner(pixels))
            measured[tuple(size)] = {
                "max_abs_diff": float((got - expected).abs().max()),
                "min_cosine": float(torch.nn.functional.cosine_similarity(got, expected).min()),
            }
    return measured
