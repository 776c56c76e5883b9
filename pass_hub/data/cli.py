"""The ``pass-hub synth`` command: write SynthPerson to disk, or draw its preview.

Example:
    $ pass-hub synth out/synth-market --format market --seed 1 --train-ids 200
    $ pass-hub synth out/synth-pool --format folder --unlabelled 20000
    $ pass-hub synth --preview docs/synthperson_preview.png
"""

from __future__ import annotations

import argparse

from .synth import SynthPersonConfig, render_preview, write_image_folder, write_market_layout

FORMATS = {"market": write_market_layout, "folder": write_image_folder}


def _synth(args: argparse.Namespace) -> int:
    options = {name: getattr(args, name) for name in SynthPersonConfig.option_help() if getattr(args, name) is not None}
    config = SynthPersonConfig.from_options(options)
    if args.out is None and args.preview is None:
        raise ValueError("give an output folder (OUT) and/or --preview PNG")
    if args.preview:
        print(f"wrote {render_preview(args.preview, config)}")
    if args.out:
        out = FORMATS[args.format](args.out, config, overwrite=args.overwrite)
        print(f"wrote {out} ({args.format} layout, {config})")
    return 0


def add_synth_command(commands: argparse._SubParsersAction) -> None:
    """Register ``synth`` on the ``pass-hub`` sub-commands; each :class:`SynthPersonConfig` field is an option."""
    synth = commands.add_parser(
        "synth",
        help="generate the SynthPerson ReID dataset (Market-1501 layout or an unlabelled image folder)",
        description="Procedurally generated people filmed by a camera network; deterministic from --seed. "
        "'market' writes bounding_box_train/, query/ and bounding_box_test/ with Market-1501 file names; "
        "'folder' writes the unlabelled pre-training pool as nested image folders.",
    )
    synth.add_argument("out", nargs="?", help="output folder (written atomically)")
    synth.add_argument("--format", choices=sorted(FORMATS), default="market", help="layout of OUT (default: market)")
    synth.add_argument("--preview", metavar="PNG", help="also draw a grid of identities x cameras to this PNG")
    synth.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    defaults = SynthPersonConfig()
    for name, help_text in SynthPersonConfig.option_help().items():
        default = getattr(defaults, name)
        shown = "x".join(map(str, default)) if isinstance(default, tuple) else default
        metavar = "HxW" if isinstance(default, tuple) else "N"
        synth.add_argument(
            f"--{name.replace('_', '-')}", dest=name, metavar=metavar, help=f"{help_text} (default: {shown})"
        )
    synth.set_defaults(func=_synth)
