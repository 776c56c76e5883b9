"""The ``pass-hub track`` command: a BoxMOT tracker over a MOTChallenge sequence, with a PASS model as its
appearance encoder, scored against the ground truth with TrackEval. Registered without the tracking extra (so
``--help`` works everywhere); running it needs ``pip install "pass-hub[tracking]"``.

Example:
    $ pass-hub synth out/synth-video --video
    $ pass-hub track out/synth-video --tracker botsort --model out/pass-vit-reid --output out/tracks
    $ pass-hub track out/synth-video --tracker bytetrack --detections gt --box-noise 0.05 --drop 0.1
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from .data.video import MIN_VISIBILITY
from .deployment.cli import add_num_heads_flag
from .deployment.embedder import FEATURE_CHOICES
from .flags import fraction, non_negative_float, non_negative_int, positive_int

# BoxMOT's box trackers, listed here so that --help needs no BoxMOT; pass_hub.tracking.TRACKERS is the truth and a
# test keeps the two equal.
TRACKER_NAMES = ("boosttrack", "botsort", "bytetrack", "deepocsort", "hybridsort", "occluboost", "ocsort", "sfsort",
                 "strongsort")


def _tracker_option(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` with VALUE read as JSON when it is (numbers, true / false), else as a string."""
    key, equals, value = text.partition("=")
    if not equals or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _track(args: argparse.Namespace) -> int:
    from .atomic import write_json_atomic
    from .pictures.tracks import VIDEO_SUFFIXES, draw_track_sheet, spread_frames, write_track_video
    from .tracking import load_detections, track_sequence  # first: without the extra it names the extra
    from .tracking.scoring import COUNT_NAMES, SCORE_NAMES

    if args.video and Path(args.video).suffix not in VIDEO_SUFFIXES:  # before minutes of tracking, not after
        raise ValueError(f"--video {args.video} must end with {', '.join(VIDEO_SUFFIXES)}")
    from boxmot.utils import logger as boxmot_logger  # importing it (re)configures BoxMOT's logging

    boxmot_logger.setLevel(logging.WARNING)  # BoxMOT logs each tracker's settings at INFO
    given = {key: value for key, value in
             {"box_noise": args.box_noise, "drop": args.drop, "min_visibility": args.min_visibility}.items()
             if value is not None}
    if args.detections == "gt":
        settings = {"box_noise": 0.0, "drop": 0.0, "min_visibility": MIN_VISIBILITY} | given
        source = "ground truth as detections (" + ", ".join(
            f"{key.replace('_', ' ')} {value:g}" for key, value in settings.items()) + f", seed {args.seed})"
    elif given:
        flags = ", ".join(f"--{key.replace('_', '-')}" for key in given)
        raise ValueError(f"{flags} make detections from the ground truth; add --detections gt")
    else:
        settings, source = {}, "det/det.txt"
    detections = load_detections(args.sequence, args.detections, seed=args.seed, **settings)
    result = track_sequence(
        args.sequence, tracker=args.tracker, model=args.model, feature=args.feature, detections=detections,
        tracker_options=dict(args.tracker_option or []), max_frames=args.frames, batch_size=args.batch_size,
        device=args.device, score=not args.no_score, num_heads=args.num_heads,
    )
    appearance = f"appearance: {result.model}" if result.model else "no appearance"
    print(f"{args.tracker} on {result.sequence} ({result.frames} frames, {source}), {appearance}: "
          f"{len(set(result.tracks[:, 1].tolist()))} tracks")
    speed = f"{result.frames_per_second:.1f}" + (f" | {result.crops_per_second:.0f}" if result.crops else " | -")
    if result.scores:
        print("| " + " | ".join(SCORE_NAMES) + " | frames/s | crops/s |")
        print("|" + "---|" * (len(SCORE_NAMES) + 2))
        values = [f"{result.scores[name]:.0f}" if name in COUNT_NAMES else f"{100 * result.scores[name]:.1f}"
                  for name in SCORE_NAMES]
        print("| " + " | ".join(values) + f" | {speed} |")
    else:
        print(f"frames/s | crops/s: {speed}")
    if args.output:
        out = Path(args.output)
        written = [result.save(out / f"{result.sequence}.txt"), write_json_atomic(
            out / f"{result.sequence}.json", result.summary() | {"detections": source, "seed": args.seed})]
        print("wrote " + ", ".join(map(str, written)))
    if args.picture:
        picture = draw_track_sheet(args.sequence, result.tracks, args.picture, title=args.tracker, scale=0.75,
                                   frames=spread_frames(result.frames))
        print(f"wrote {picture}")
    if args.video:
        video = write_track_video(args.sequence, result.tracks, args.video, title=args.tracker,
                                  frames=range(1, result.frames + 1), scale=0.5)
        print(f"wrote {video}")
    return 0


def add_track_command(commands: argparse._SubParsersAction) -> None:
    """Register ``track`` on the ``pass-hub`` sub-commands."""
    track = commands.add_parser(
        "track",
        help="track people in a MOTChallenge sequence with a BoxMOT tracker and a PASS appearance model",
        description="Runs BoxMOT's tracker over the frames (its TrackingPipeline), with the model as the appearance "
        "encoder of trackers that use one (botsort, deepocsort, strongsort ...), writes the tracks in MOTChallenge "
        "format and scores them against gt/gt.txt with TrackEval (HOTA, IDF1, MOTA, ID switches). Needs "
        "pip install 'pass-hub[tracking]'. Make a sequence with: pass-hub synth OUT --video",
    )
    track.add_argument("sequence", help="MOTChallenge sequence folder (seqinfo.ini, img1/, det/det.txt, gt/gt.txt)")
    track.add_argument("--model", help="appearance model: pass-hub folder, hub id, timm name, original checkpoint or "
                       "exported .onnx (for trackers that use appearance)")
    track.add_argument("--tracker", default="botsort", choices=TRACKER_NAMES, help="BoxMOT tracker (default: botsort)")
    track.add_argument("--detections", default="det", choices=("det", "gt"),
                       help="det: the sequence's det/det.txt (default); gt: the ground-truth boxes as detections")
    track.add_argument("--box-noise", type=non_negative_float, metavar="X",
                       help="with --detections gt: jitter box edges by X times the box size (default 0)")
    track.add_argument("--drop", type=fraction, metavar="P", help="with --detections gt: miss this share of people "
                       "(default 0)")
    track.add_argument("--min-visibility", type=fraction, metavar="V",
                       help=f"with --detections gt: people less visible than V are missed (default {MIN_VISIBILITY})")
    track.add_argument("--seed", type=non_negative_int, default=0, help="seed of the noise and drops (default 0)")
    track.add_argument("--tracker-option", type=_tracker_option, action="append", metavar="KEY=VALUE",
                       help="a BoxMOT option of the tracker, e.g. track_buffer=60 or use_embeddings=false (repeatable)")
    add_num_heads_flag(track)
    track.add_argument("--feature", default="deployment", choices=FEATURE_CHOICES,
                       help="embedding the tracker compares (default: deployment, the after-neck feature)")
    track.add_argument("--frames", type=positive_int, metavar="N", help="track only the first N frames")
    track.add_argument("--batch-size", type=positive_int, default=64, help="crops per forward pass (default 64)")
    track.add_argument("--device", help="where the model runs, e.g. cuda:0 (default: cpu)")
    track.add_argument("--output", metavar="DIR", help="write DIR/<sequence>.txt (MOTChallenge) and <sequence>.json")
    track.add_argument("--picture", metavar="PNG", help="draw six frames with their track ids")
    track.add_argument("--video", metavar="FILE", help="write the frames with track ids as .gif, .mp4 or .avi")
    track.add_argument("--no-score", action="store_true", help="do not score against gt/gt.txt")
    track.set_defaults(func=_track)
