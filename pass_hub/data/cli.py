"""The ``pass-hub synth`` command: write SynthPerson to disk (ReID images, or a video with known identities for
tracking), or draw a preview.

Example:
    $ pass-hub synth out/synth-market --format market --seed 1 --train-ids 200
    $ pass-hub synth out/synth-pool --format folder --unlabelled 20000
    $ pass-hub synth --preview docs/synthperson_preview.png
    $ pass-hub synth out/synth-video --video --frames 450 --preview out/synth-video.png
"""

from __future__ import annotations

import argparse

from .synth import SynthPersonConfig, render_preview, write_image_folder, write_market_layout
from .video import SynthVideoConfig, write_mot_sequence

FORMATS = {"market": write_market_layout, "folder": write_image_folder}


def _options(args: argparse.Namespace, config_class: type, other_class: type, kind: str) -> dict[str, object]:
    """The options given on the command line for ``config_class``; options only ``other_class`` has are an error."""
    given = {name for name in {*SynthPersonConfig.option_help(), *SynthVideoConfig.option_help()}
             if getattr(args, name) is not None}
    foreign = sorted(given - set(config_class.option_help()))
    if foreign:
        flags = ", ".join(f"--{name.replace('_', '-')}" for name in foreign)
        other = "the ReID images (without --video)" if other_class is SynthPersonConfig else "videos (--video)"
        raise ValueError(f"{flags} only apply to {other}, not to {kind}")
    return {name: getattr(args, name) for name in given}


def _synth(args: argparse.Namespace) -> int:
    if args.out is None and args.preview is None:
        raise ValueError("give an output folder (OUT) and/or --preview PNG")
    if args.video:
        return _synth_video(args)
    config = SynthPersonConfig.from_options(_options(args, SynthPersonConfig, SynthVideoConfig, "ReID images"))
    if args.preview:
        print(f"wrote {render_preview(args.preview, config)}")
    if args.out:
        out = FORMATS[args.format](args.out, config, overwrite=args.overwrite)
        print(f"wrote {out} ({args.format} layout, {config})")
    return 0


def _synth_video(args: argparse.Namespace) -> int:
    from ..pictures.tracks import draw_track_sheet
    from .motchallenge import GT_FILE, read_boxes

    config = SynthVideoConfig.from_options(_options(args, SynthVideoConfig, SynthPersonConfig, "videos"))
    if args.out is None:
        raise ValueError("--video needs an output folder (OUT); --preview draws frames of it with their ground truth")
    out = write_mot_sequence(args.out, config, overwrite=args.overwrite)
    ground_truth = read_boxes(out / GT_FILE)
    print(f"wrote {out} (MOTChallenge sequence {config.name}: {config.frames} frames, {config.people} people, "
          f"{len(ground_truth)} ground-truth boxes; {config})")
    if args.preview:
        print(f"wrote {draw_track_sheet(out, ground_truth, args.preview, title='ground truth', scale=0.75)}")
    return 0


def add_synth_command(commands: argparse._SubParsersAction) -> None:
    """Register ``synth`` on the ``pass-hub`` sub-commands; each :class:`SynthPersonConfig` and
    :class:`SynthVideoConfig` field is an option."""
    synth = commands.add_parser(
        "synth",
        help="generate SynthPerson: ReID images (Market-1501 layout or an unlabelled folder) or a tracking video",
        description="Procedurally generated people filmed by a camera network; deterministic from --seed. "
        "'market' writes bounding_box_train/, query/ and bounding_box_test/ with Market-1501 file names; "
        "'folder' writes the unlabelled pre-training pool as nested image folders; --video writes a video of "
        "people crossing one camera's scene as a MOTChallenge sequence (img1/, gt/gt.txt, det/det.txt, "
        "seqinfo.ini), for pass-hub track.",
    )
    synth.add_argument("out", nargs="?", help="output folder (written atomically)")
    synth.add_argument("--format", choices=sorted(FORMATS), default="market", help="layout of OUT (default: market)")
    synth.add_argument("--video", action="store_true", help="write a tracking video (MOTChallenge layout) instead")
    synth.add_argument("--preview", metavar="PNG", help="also draw a grid of identities x cameras to this PNG "
                       "(with --video: frames with their ground-truth boxes)")
    synth.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    image_defaults, video_defaults = SynthPersonConfig(), SynthVideoConfig()
    image_help, video_help = SynthPersonConfig.option_help(), SynthVideoConfig.option_help()
    for name in {**image_help, **video_help}:
        help_text = image_help.get(name) or video_help[name]
        in_images, in_video = hasattr(image_defaults, name), name in video_help
        default = getattr(image_defaults if in_images else video_defaults, name)
        shown = "x".join(map(str, default)) if isinstance(default, tuple) else default
        if in_images and in_video and getattr(video_defaults, name) != default:
            shown = f"{shown}; videos: {getattr(video_defaults, name)}"
        scope = "" if in_images and in_video else " [--video]" if in_video else ""
        metavar = "HxW" if isinstance(default, tuple) else "X" if isinstance(default, float) else "N"
        synth.add_argument(
            f"--{name.replace('_', '-')}", dest=name, metavar=metavar, help=f"{help_text}{scope} (default: {shown})"
        )
    synth.set_defaults(func=_synth)
