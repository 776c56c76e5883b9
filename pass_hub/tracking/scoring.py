"""Tracking scores from TrackEval, the MOTChallenge reference code: HOTA (with DetA / AssA), IDF1 and the CLEAR
metrics (MOTA, ID switches), for one MOTChallenge sequence and one tracker's rows.

Example:
    >>> score_tracks("out/synth-video", tracks)["IDF1"]  # doctest: +SKIP
    0.873
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path

import numpy as np
from trackeval.datasets import MotChallenge2DBox
from trackeval.eval import eval_sequence
from trackeval.metrics import CLEAR, HOTA, Identity
from trackeval.utils import TrackEvalException

from ..data.motchallenge import GT_FILE, read_boxes, read_sequence_info, write_boxes

# What score_tracks returns, in the order tables show them: fractions (MOTA can fall below 0) and counts.
SCORE_NAMES = ("HOTA", "DetA", "AssA", "IDF1", "IDP", "IDR", "MOTA", "IDSW", "Frag", "MT", "ML")
COUNT_NAMES = ("IDSW", "Frag", "MT", "ML")
_TRACKER_NAME = "pass-hub"


def score_tracks(sequence: str | Path, tracks: np.ndarray, *, frames: int | None = None) -> dict[str, float]:
    """Score tracker rows (MOTChallenge ``frame, id, left, top, width, height, score, ...``) against the sequence's
    ``gt/gt.txt`` with TrackEval's MOT17 settings (its preprocessing drops tracks on ignored ground truth); with
    ``frames``, against the first ``frames`` frames only.

    Returns :data:`SCORE_NAMES`: HOTA, DetA and AssA averaged over TrackEval's IoU thresholds, IDF1 / IDP / IDR,
    MOTA as fractions; ID switches, fragmentations, mostly tracked / lost trajectories as counts.
    """
    root = Path(sequence)
    info = read_sequence_info(root)
    if not (root / GT_FILE).is_file():
        raise FileNotFoundError(f"{root} has no ground truth {root / GT_FILE} to score against")
    frames = min(frames or info.frames, info.frames)
    ground_truth = read_boxes(root / GT_FILE, min_columns=9)
    tracks = np.asarray(tracks, dtype=np.float64)
    if tracks.ndim != 2 or tracks.shape[1] < 6:
        raise ValueError(f"tracks must be rows of frame, id, left, top, width, height[, score, ...]; got an array "
                         f"of shape {tracks.shape}")
    # TrackEval reads MOTChallenge's 10 columns; a missing score counts as 1.
    scores = tracks[:, 6] if tracks.shape[1] > 6 else np.ones(len(tracks))
    tracks = np.column_stack([tracks[:, :6], scores, -np.ones((len(tracks), 3))])
    with tempfile.TemporaryDirectory(prefix="pass-hub-trackeval-") as scratch:
        gt_folder, trackers_folder = Path(scratch) / "gt", Path(scratch) / "trackers"
        write_boxes(gt_folder / info.name / GT_FILE, ground_truth[ground_truth[:, 0] <= frames])
        write_boxes(trackers_folder / _TRACKER_NAME / "data" / f"{info.name}.txt", tracks[tracks[:, 0] <= frames])
        config = {
            "GT_FOLDER": str(gt_folder), "TRACKERS_FOLDER": str(trackers_folder), "SKIP_SPLIT_FOL": True,
            "SEQ_INFO": {info.name: frames}, "TRACKERS_TO_EVAL": [_TRACKER_NAME], "PRINT_CONFIG": False,
        }
        metrics = [HOTA(), CLEAR({"PRINT_CONFIG": False}), Identity({"PRINT_CONFIG": False})]
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # TrackEval prints its configs
                dataset = MotChallenge2DBox(config)
                results = eval_sequence(info.name, dataset, _TRACKER_NAME, ["pedestrian"], metrics,
                                        [metric.get_name() for metric in metrics])["pedestrian"]
        except TrackEvalException as err:
            raise ValueError(f"TrackEval cannot score these tracks against {root / GT_FILE}: {err}") from None
    hota, clear, identity = results["HOTA"], results["CLEAR"], results["Identity"]
    scores = {name: float(np.mean(hota[name])) for name in ("HOTA", "DetA", "AssA")}
    scores |= {name: float(identity[name]) for name in ("IDF1", "IDP", "IDR")}
    scores |= {"MOTA": float(clear["MOTA"])} | {name: float(clear[name]) for name in COUNT_NAMES}
    return {name: scores[name] for name in SCORE_NAMES}
