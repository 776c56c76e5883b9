"""Run a BoxMOT tracker over a MOTChallenge sequence through BoxMOT's own ``TrackingPipeline``, with a PASS model
as its appearance encoder (:func:`track_sequence`).

Detections come from the sequence's ``det/det.txt`` or from its ground truth (``gt/gt.txt``), optionally jittered
and thinned (:func:`load_detections`), so that trackers can be compared on the same boxes.

Example:
    >>> result = track_sequence("out/synth-video", tracker="botsort", model="out/pass-vit-reid")  # doctest: +SKIP
    >>> result.frames_per_second, result.crops_per_second  # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from boxmot import create_tracker
from boxmot.pipelines import TrackingPipeline
from boxmot.reid import AppearanceEncoder
from boxmot.structures import Boxes, Detections, Frame
from boxmot.trackers.config import load_tracker_defaults
from boxmot.trackers.registry import TRACKER_DEFINITIONS
from boxmot.trackers.specs import TrackerFamily, TrackerSpec
from PIL import Image
from tqdm.auto import tqdm

from ..data.motchallenge import (
    DETECTIONS_FILE,
    GT_FILE,
    SequenceInfo,
    box_corners,
    read_boxes,
    read_sequence_info,
    write_boxes,
)
from ..data.video import MIN_VISIBILITY, detections_from_ground_truth
from .encoder import PassAppearanceEncoder

# BoxMOT's box trackers (the multimodal ones need masks); which of them can use appearance is BoxMOT's to say.
TRACKERS = tuple(sorted(name for name, definition in TRACKER_DEFINITIONS.items()
                        if definition.capabilities.family is TrackerFamily.BOX))
DETECTION_SOURCES = ("det", "gt")


def uses_appearance(tracker: str) -> bool:
    """Whether BoxMOT's ``tracker`` can take appearance embeddings (BoT-SORT, DeepOCSORT ...; not ByteTrack)."""
    return TRACKER_DEFINITIONS[tracker].capabilities.accepts_embeddings


def load_detections(
    sequence: str | Path,
    source: str = "det",
    *,
    box_noise: float | None = None,
    drop: float | None = None,
    min_visibility: float | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Detection rows ``frame, -1, left, top, width, height, score, ...`` of a sequence.

    ``source="det"`` reads ``det/det.txt`` (scores must be in [0, 1], as BoxMOT takes them); ``"gt"`` makes
    detections from ``gt/gt.txt`` (:func:`pass_hub.data.video.detections_from_ground_truth`): people below
    ``min_visibility`` (default 0.25) missed, a share ``drop`` (default 0) of the rest missed, box edges jittered by
    ``box_noise`` (default 0) times the box size, seeded by ``seed``.
    """
    root = Path(sequence)
    info = read_sequence_info(root)
    if source == "gt":
        return detections_from_ground_truth(
            read_boxes(root / GT_FILE, min_columns=9), image_size=(info.height, info.width),
            min_visibility=MIN_VISIBILITY if min_visibility is None else min_visibility, box_noise=box_noise or 0.0,
            drop=drop or 0.0, seed=seed,
        )
    if source != "det":
        raise ValueError(f"detections source {source!r}; expected one of {DETECTION_SOURCES}")
    if (box_noise, drop, min_visibility) != (None, None, None):
        raise ValueError("box noise, drops and min visibility make detections from the ground truth; use source='gt'"
                         " (CLI: --detections gt)")
    rows = read_boxes(root / DETECTIONS_FILE)
    check_detections(rows, info, str(root / DETECTIONS_FILE))
    return rows


def check_detections(rows: np.ndarray, info: SequenceInfo, source: str) -> None:
    """Raise ``ValueError`` naming ``source`` and the first bad row unless every row is a detection BoxMOT takes:
    ``frame, id, left, top, width, height, score`` with finite values, a positive size, a score in [0, 1] and a
    frame of the sequence."""
    if rows.ndim != 2 or rows.shape[1] < 7:
        raise ValueError(f"{source}: detections must be rows of frame, id, left, top, width, height, score; "
                         f"got an array of shape {rows.shape}")
    problems = {
        "a value that is not finite": ~np.isfinite(rows[:, :7]).all(axis=1),
        "a width or height <= 0": (rows[:, 4] <= 0) | (rows[:, 5] <= 0),
        "a score outside [0, 1], which BoxMOT refuses (rescale the scores, or --detections gt)":
            (rows[:, 6] < 0) | (rows[:, 6] > 1),
        f"a frame outside the sequence's 1..{info.frames}": (rows[:, 0] < 1) | (rows[:, 0] > info.frames)
            | (rows[:, 0] != np.round(rows[:, 0])),
    }
    for problem, bad in problems.items():
        if bad.any():
            row = int(np.argmax(bad))
            raise ValueError(f"{source}: {int(bad.sum())} detection(s) with {problem}; the first: "
                             f"{', '.join(f'{value:g}' for value in rows[row, :7])}")


@dataclass
class TrackingResult:
    """What :func:`track_sequence` returns: the tracks and how fast they came."""

    sequence: str
    tracker: str
    model: str  # "" when the tracker ran without appearance
    tracks: np.ndarray  # MOTChallenge rows: frame, id, left, top, width, height, score, -1, -1, -1
    frames: int
    seconds: float  # the whole loop: reading frames, encoding crops, tracking
    crops: int = 0
    encoder_seconds: float = 0.0
    tracker_options: dict[str, object] = field(default_factory=dict)
    feature: str = ""  # the embedding a PassAppearanceEncoder compared
    scores: dict[str, float] = field(default_factory=dict)

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0

    @property
    def crops_per_second(self) -> float:
        """Crops the appearance encoder embedded per second of its own time (0 without appearance)."""
        return self.crops / self.encoder_seconds if self.encoder_seconds else 0.0

    def save(self, path: str | Path) -> Path:
        """Write the tracks as a MOTChallenge result file (atomically)."""
        return write_boxes(path, self.tracks)

    def summary(self) -> dict[str, object]:
        return {
            "sequence": self.sequence, "tracker": self.tracker, "tracker_options": self.tracker_options,
            "model": self.model, "feature": self.feature, "frames": self.frames,
            "tracks": len(np.unique(self.tracks[:, 1])) if len(self.tracks) else 0,
            "seconds": round(self.seconds, 3), "frames_per_second": round(self.frames_per_second, 2),
            "crops": self.crops, "crops_per_second": round(self.crops_per_second, 1), "scores": self.scores,
        }


def _create_tracker(name: str, options: dict[str, object], info: SequenceInfo) -> object:
    """BoxMOT's tracker with ``options``, told the sequence's frame rate (its memory is counted in frames at 30 fps
    otherwise); an option it does not know is a ``ValueError`` naming the ones it does."""
    known = load_tracker_defaults(name)
    if "frame_rate" in known:
        options = {"frame_rate": info.frame_rate} | options
    try:
        return create_tracker(TrackerSpec(name, options=tuple(sorted(options.items()))))
    except TypeError as err:
        raise ValueError(f"tracker {name} refused its options {options}: {err}; its options are "
                         f"{', '.join(sorted(known))}") from None


def _read_frame(info: SequenceInfo, root: Path, index: int) -> torch.Tensor:
    path = info.frame_path(root, index)
    if not path.is_file():
        raise FileNotFoundError(f"frame {index} of {info.name} is missing: {path}")
    with Image.open(path) as image:
        pixels = np.array(image.convert("RGB"))  # a writable copy for torch
    return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()


def _detections(rows: np.ndarray, sample_id: str) -> Detections:
    corners = box_corners(rows)
    return Detections(
        Boxes(torch.as_tensor(corners, dtype=torch.float32).reshape(-1, 4).contiguous()),
        torch.as_tensor(rows[:, 6], dtype=torch.float32).contiguous(),
        torch.zeros(len(rows), dtype=torch.int64),  # one class: person
        sample_id=sample_id,
    )


def track_sequence(
    sequence: str | Path,
    *,
    tracker: str = "botsort",
    model: str | Path | AppearanceEncoder | None = None,
    feature: str = "deployment",
    detections: np.ndarray | None = None,
    tracker_options: Mapping[str, object] | None = None,
    max_frames: int | None = None,
    batch_size: int = 64,
    device: str | None = None,
    progress: bool = True,
    score: bool = True,
    num_heads: int | None = None,
) -> TrackingResult:
    """Track the people of a MOTChallenge sequence with BoxMOT's ``tracker`` and, for trackers that use
    appearance, ``model`` as the appearance encoder (:class:`PassAppearanceEncoder`).

    Args:
        sequence: A folder with ``seqinfo.ini`` and the frames (``img1/``).
        tracker: One of :data:`TRACKERS` (BoxMOT names: ``bytetrack``, ``ocsort``, ``botsort``, ``deepocsort`` ...).
        model: What encodes appearance: anything :class:`PassAppearanceEncoder` takes, or any object implementing
            BoxMOT's ``AppearanceEncoder`` protocol; required by trackers that use appearance, unless
            ``tracker_options`` turn it off (``{"use_embeddings": False}``).
        feature: Which embedding of a PyTorch model (:class:`PassAppearanceEncoder`).
        num_heads: Attention heads of an original checkpoint given as ``model`` (:func:`pass_hub.load_reid_model`).
        detections: Rows from :func:`load_detections`; default: the sequence's ``det/det.txt``.
        tracker_options: BoxMOT options of the tracker (its YAML config's keys), e.g. ``{"track_buffer": 60}``.
        max_frames: Track only the first frames (a quick look).
        score: Score against ``gt/gt.txt`` with TrackEval when the sequence has one (:attr:`TrackingResult.scores`;
            with ``max_frames``, against those frames).
    """
    root = Path(sequence)
    info = read_sequence_info(root)
    if tracker not in TRACKERS:
        raise ValueError(f"unknown tracker {tracker!r}; BoxMOT's box trackers are {', '.join(TRACKERS)}")
    if detections is None:
        rows = load_detections(root)
    else:
        rows = np.asarray(detections, dtype=np.float64)
        check_detections(rows, info, "detections")
    rows = rows[np.argsort(rows[:, 0], kind="stable")]  # each frame's detections are one slice
    boxmot_tracker = _create_tracker(tracker, dict(tracker_options or {}), info)
    encoder = None
    if boxmot_tracker.requirements.embeddings:
        if model is None:
            switch_off = " or track without it (tracker option use_embeddings=false)" if "use_embeddings" in (
                load_tracker_defaults(tracker)) else ""
            raise ValueError(f"tracker {tracker} uses appearance: give a model (CLI: --model){switch_off}")
        encoder = model if isinstance(model, AppearanceEncoder) else PassAppearanceEncoder(
            model, feature=feature, batch_size=batch_size, device=device, num_heads=num_heads)
    elif model is not None:
        why = "its options turn appearance off" if uses_appearance(tracker) else "it does not use appearance"
        raise ValueError(f"tracker {tracker} would ignore the model: {why}")
    pipeline = TrackingPipeline(detector=None, tracker=boxmot_tracker, reid=encoder)
    frames = min(info.frames, max_frames or info.frames)
    frame_numbers = rows[:, 0].astype(np.int64)
    starts = np.searchsorted(frame_numbers, np.arange(1, frames + 2))
    outputs = []
    started = time.perf_counter()
    bar = tqdm(range(1, frames + 1), desc=f"{tracker} on {info.name}", unit="frame", disable=not progress)
    for index in bar:
        sample_id = f"{info.name}/{index:06d}"
        frame = Frame(_read_frame(info, root, index), sample_id=sample_id, sequence_id=info.name,
                      frame_index=index)
        result = pipeline.step_detections(frame, _detections(rows[starts[index - 1]:starts[index]], sample_id))
        tracks = result.tracks
        if len(tracks):
            corners = tracks.geometry.values.double().numpy()
            outputs.append(np.column_stack([
                np.full(len(tracks), index), tracks.track_ids.numpy() + 1, corners[:, :2],
                corners[:, 2:] - corners[:, :2], tracks.scores.double().numpy(), -np.ones((len(tracks), 3)),
            ]))
    seconds = time.perf_counter() - started
    if encoder is None:
        model_name = ""
    else:
        model_name = encoder.embedder.source if isinstance(encoder, PassAppearanceEncoder) else type(encoder).__name__
    result = TrackingResult(
        info.name, tracker, model_name, np.concatenate(outputs) if outputs else np.zeros((0, 10)), frames, seconds,
        getattr(encoder, "crops", 0), getattr(encoder, "seconds", 0.0), dict(tracker_options or {}),
        encoder.embedder.feature if isinstance(encoder, PassAppearanceEncoder) else "",
    )
    if score and (root / GT_FILE).is_file():
        from .scoring import score_tracks

        result.scores = score_tracks(root, result.tracks, frames=frames)
    return result
