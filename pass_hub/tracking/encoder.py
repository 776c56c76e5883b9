"""A PASS model as BoxMOT's appearance encoder (:class:`PassAppearanceEncoder`).

BoxMOT's trackers with an appearance model (BoT-SORT, DeepOCSORT, StrongSORT ...) take any object with
``embedding_dim``, ``requirements`` and ``encode(frames, detections)``. This one cuts each detection's box out of
its frame and embeds the crops with :func:`pass_hub.embed`, so a crop gives the same vector here as the same crop
saved as an image file and embedded with ``pass-hub embed``.

Example:
    >>> import torch
    >>> from boxmot.structures import Boxes, Detections, Frame
    >>> encoder = PassAppearanceEncoder(load_reid_model("pass_vit_tiny", pretrained=False))
    >>> frame = Frame(torch.zeros(3, 120, 160, dtype=torch.uint8), sample_id="0")
    >>> boxes = Boxes(torch.tensor([[10.0, 10.0, 50.0, 110.0], [150.0, 0.0, 200.0, 40.0]]))
    >>> detections = Detections(boxes, torch.tensor([0.9, 0.5]), torch.zeros(2, dtype=torch.int64), sample_id="0")
    >>> [tuple(e.shape) for e in encoder.encode([frame], [detections])], encoder.embedding_dim
    ([(2, 384)], 384)
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from boxmot.reid import EncoderRequirements
from boxmot.structures import Boxes, Detections, Frame
from torch import nn

from ..deployment.embedder import load_reid_model
from ..deployment.embedding import Embedder, embed, resolve_embedder
from ..deployment.export import OnnxReIDModel


def crop_boxes(image: np.ndarray, boxes: np.ndarray) -> list[np.ndarray]:
    """The pixels of each ``x1, y1, x2, y2`` box of an (H, W, 3) image: corners rounded, clipped to the image.

    A box with no pixel inside the image gives a 1x1 black crop, as BoxMOT's own encoders give a black one, so
    every detection keeps a (meaningless but finite) embedding instead of failing the frame.

    Example:
        >>> image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
        >>> [crop.shape for crop in crop_boxes(image, np.array([[0.6, -5, 9, 1.2], [7, 7, 9, 9], [1, 1, 1, 2]]))]
        [(1, 2, 3), (1, 1, 3), (1, 1, 3)]
    """
    height, width = image.shape[:2]
    crops = []
    for x1, y1, x2, y2 in np.rint(np.asarray(boxes, dtype=np.float64)).astype(np.int64).reshape(-1, 4):
        x1, x2 = max(0, x1), min(width, x2)
        y1, y2 = max(0, y1), min(height, y2)
        if x2 > x1 and y2 > y1:
            crops.append(image[y1:y2, x1:x2])
        else:
            crops.append(np.zeros((1, 1, 3), dtype=np.uint8))
    return crops


class PassAppearanceEncoder:
    """BoxMOT's ``AppearanceEncoder`` protocol over a pass-hub model.

    Args:
        model: Anything :func:`pass_hub.embed` takes: a pass-hub folder or hub id, a timm ``pass_vit_*`` name, an
            original PASS checkpoint, a model object, a :class:`pass_hub.ReIDEmbedder`, or an ONNX file written
            by ``pass-hub export-onnx`` (run with onnxruntime).
        feature: Which embedding (:class:`pass_hub.ReIDEmbedder`); ``"deployment"`` (default) is the after-neck
            feature of a fine-tuned model, whose cosines a tracker can threshold. Ignored for ONNX files (the
            export fixed it).
        batch_size: Crops per forward pass.
        device: Where a PyTorch model runs (``cuda:0`` ...); embeddings are returned on the CPU as BoxMOT asks.
        num_heads: Attention heads of an original checkpoint (:func:`pass_hub.load_reid_model`).

    Attributes:
        crops / seconds: How many crops :meth:`encode` has embedded and the time it took (for crops per second).
    """

    def __init__(
        self,
        model: str | Path | nn.Module | Embedder,
        *,
        feature: str = "deployment",
        batch_size: int = 64,
        device: str | torch.device | None = None,
        num_heads: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        is_onnx_file = isinstance(model, (str, Path)) and Path(model).suffix == ".onnx"
        if isinstance(model, OnnxReIDModel) or is_onnx_file:
            self.embedder = resolve_embedder(model, device=device, num_heads=num_heads)
        else:
            self.embedder = load_reid_model(model, device=device, feature=feature, num_heads=num_heads)
        self.batch_size = batch_size
        self.crops = 0
        self.seconds = 0.0

    @property
    def embedding_dim(self) -> int:
        return int(self.embedder.embedding_size)

    @property
    def requirements(self) -> EncoderRequirements:
        return EncoderRequirements(masks=False)

    def encode(self, frames: Sequence[Frame], detections: Sequence[Detections]) -> list[torch.Tensor]:
        """One float32 ``(N, embedding_dim)`` CPU tensor per frame, row i for detection i (all frames' crops are
        embedded in batches together)."""
        if len(frames) != len(detections):
            raise ValueError(f"encode got {len(frames)} frames but {len(detections)} detection sets")
        crops: list[np.ndarray] = []
        counts = []
        for frame, batch in zip(frames, detections, strict=True):
            if not isinstance(batch.geometry, Boxes):
                raise ValueError(
                    f"PassAppearanceEncoder takes axis-aligned boxes; frame {frame.sample_id!r} has "
                    f"{type(batch.geometry).__name__} (person crops are upright)"
                )
            image = frame.image.permute(1, 2, 0).numpy()  # (H, W, 3) RGB, as pass_hub.embed reads arrays
            crops += crop_boxes(image, batch.geometry.values.numpy())
            counts.append(len(batch))
        started = time.perf_counter()
        if crops:
            embeddings = embed(crops, self.embedder, batch_size=self.batch_size).float().contiguous()
        else:
            embeddings = torch.empty(0, self.embedding_dim)
        self.seconds += time.perf_counter() - started
        self.crops += len(crops)
        return [part.contiguous() for part in torch.split(embeddings, counts)]

    def __repr__(self) -> str:
        return f"PassAppearanceEncoder({self.embedder.source!r}, feature={self.embedder.feature!r})"
