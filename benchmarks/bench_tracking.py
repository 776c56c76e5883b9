"""What PASS features do to tracking: BoxMOT trackers on the SynthPerson video, without appearance and with the
demo's fine-tuned models (PASS, DINO, random init) as appearance encoders, scored with TrackEval.

Every row tracks the same detections (the video's ``det/det.txt``), first with BoxMOT's default settings, then
with settings for a camera that does not move: no camera-motion compensation (on a still camera it estimates motion
from noise and people) and a 10 s track memory (people stay out of view for seconds). Besides the trackers
without an appearance model (ByteTrack, OC-SORT), BoT-SORT and DeepOCSORT also run with appearance turned off
(``use_embeddings=false``), the direct baseline for their rows with a model, and with an oracle encoder that
returns each detection's ground-truth identity: the most appearance could give these trackers here.

    python -m training.demo                                  # the three fine-tuned models (outputs/demo)
    python benchmarks/bench_tracking.py [--sequence outputs/tracking/SYNTHPERSON-00] [--demo outputs/demo]

Writes ``results.json`` and ``results.md`` next to the sequence and prints the table.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
from pathlib import Path

import numpy as np
import torch
from boxmot.reid import EncoderRequirements
from boxmot.structures import Detections, Frame

from pass_hub.atomic import write_json_atomic, write_text_atomic
from pass_hub.data.motchallenge import GT_FILE, box_corners, read_boxes
from pass_hub.data.video import SynthVideoConfig, write_mot_sequence
from pass_hub.tracking import PassAppearanceEncoder, track_sequence
from pass_hub.tracking.scoring import COUNT_NAMES

# Per tracker, the options of a still camera: BoxMOT's option names differ between trackers.
STILL_CAMERA = {"bytetrack": {"track_buffer": 300}, "ocsort": {"max_age": 300},
                "botsort": {"use_cmc": False, "track_buffer": 300}, "deepocsort": {"cmc_off": True, "max_age": 300}}
SETTINGS = {"BoxMOT defaults": {}, "still camera": STILL_CAMERA}
MODELS = {"PASS": "finetune-pass", "DINO": "finetune-dino", "random init": "finetune-random"}
SHOWN = ("HOTA", "AssA", "IDF1", "MOTA", "IDSW")


class GroundTruthIdentity:
    """An oracle appearance encoder: each detection's vector is the one-hot of the identity whose ground-truth box
    it overlaps most in that frame (detections on nobody share one more vector)."""

    def __init__(self, sequence: Path) -> None:
        self.ground_truth = read_boxes(sequence / GT_FILE)
        self.embedding_dim = int(self.ground_truth[:, 1].max()) + 2
        self.requirements = EncoderRequirements()

    def encode(self, frames: list[Frame], detections: list[Detections]) -> list[torch.Tensor]:
        vectors = []
        for frame, batch in zip(frames, detections, strict=True):
            truth = self.ground_truth[self.ground_truth[:, 0] == frame.frame_index]
            corners = box_corners(truth)
            one_hot = torch.zeros(len(batch), self.embedding_dim)
            for row, box in enumerate(batch.geometry.values.numpy()):
                overlap = (np.minimum(corners[:, 2], box[2]) - np.maximum(corners[:, 0], box[0])).clip(0) * (
                    np.minimum(corners[:, 3], box[3]) - np.maximum(corners[:, 1], box[1])).clip(0)
                identity = int(truth[overlap.argmax(), 1]) if len(truth) and overlap.max() > 0 else -1
                one_hot[row, identity] = 1.0
            vectors.append(one_hot)
        return vectors


def cpu_name() -> str:
    """The CPU model (Linux), else what platform knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sequence", type=Path, default=Path("outputs/tracking/SYNTHPERSON-00"),
                        help="MOTChallenge sequence; rendered with the default SynthVideoConfig when missing")
    parser.add_argument("--demo", type=Path, default=Path("outputs/demo"), help="output folder of training.demo")
    parser.add_argument("--trackers", nargs="+", default=["botsort", "deepocsort"], choices=["botsort", "deepocsort"],
                        help="trackers that use appearance (and can turn it off)")
    args = parser.parse_args(argv)
    from boxmot.utils import logger as boxmot_logger

    boxmot_logger.setLevel(logging.WARNING)
    models = {label: args.demo / folder / "pass-vit-reid" for label, folder in MODELS.items()}
    missing = [str(path) for path in models.values() if not (path / "config.json").is_file()]
    if missing:
        sys.exit(f"missing demo models {missing}: run python -m training.demo first")
    if not (args.sequence / "seqinfo.ini").is_file():
        write_mot_sequence(args.sequence, SynthVideoConfig())
    rows = []
    for settings, options in SETTINGS.items():
        rows += [(settings, tracker, "none", None, options.get(tracker, {})) for tracker in ("bytetrack", "ocsort")]
        for tracker in args.trackers:
            chosen = options.get(tracker, {})
            rows.append((settings, tracker, "none (use_embeddings=false)", None, chosen | {"use_embeddings": False}))
            rows += [(settings, tracker, label, PassAppearanceEncoder(path), chosen) for label, path in models.items()]
            oracle = GroundTruthIdentity(args.sequence)
            rows.append((settings, tracker, "oracle: ground-truth identity", oracle, chosen))
    results = []
    for settings, tracker, appearance, encoder, options in rows:
        result = track_sequence(args.sequence, tracker=tracker, model=encoder, tracker_options=options)
        results.append({"settings": settings, "options": options, "tracker": tracker, "appearance": appearance,
                        **result.scores,
                        "frames_per_second": result.frames_per_second, "crops_per_second": result.crops_per_second,
                        "crops": result.crops})
        print(json.dumps(results[-1]), flush=True)
    machine = f"{cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    header = "| settings | tracker | appearance | " + " | ".join(SHOWN) + " | frames/s | crops/s |"
    lines = [header, "|" + "---|" * (len(SHOWN) + 5)]
    for row in results:
        values = [f"{row[name]:.0f}" if name in COUNT_NAMES else f"{100 * row[name]:.1f}" for name in SHOWN]
        speed = f"{row['frames_per_second']:.1f} | " + (f"{row['crops_per_second']:.0f}" if row["crops_per_second"]
                                                         else "-")
        lines.append(f"| {row['settings']} | {row['tracker']} | {row['appearance']} | " + " | ".join(values)
                     + f" | {speed} |")
    table = "\n".join(lines)
    print(table)
    write_json_atomic(args.sequence.parent / "results.json", {"machine": machine, "rows": results})
    write_text_atomic(args.sequence.parent / "results.md", f"{table}\n\n{machine}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
