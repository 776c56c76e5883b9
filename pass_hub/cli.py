"""The ``pass-hub`` command line.

Example:
    $ pass-hub convert pass_vit_small_full.pth out/pass-vit-s16
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .data.cli import add_synth_command
from .deployment_cli import add_deployment_commands


def _convert(args: argparse.Namespace) -> int:
    from .convert import convert_checkpoint

    out = convert_checkpoint(args.src, args.out, arch=args.arch, num_heads=args.num_heads, overwrite=args.overwrite)
    print(f"wrote {out} (loads with AutoModel.from_pretrained and timm.create_model('local-dir:{out}'))")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pass-hub", description="PASS part-aware ViT for person ReID")
    commands = parser.add_subparsers(dest="command", required=True)

    convert = commands.add_parser(
        "convert",
        help="convert an original PASS checkpoint into a hub folder for transformers and timm",
        description="Accepts the pre-training checkpoint (teacher backbone is kept), the flat backbone "
        "and the fine-tuned ReID model, also nested under 'model' / 'state_dict'.",
    )
    convert.add_argument("src", help="original checkpoint (.pth) or a pass-hub folder / .safetensors")
    convert.add_argument("out", help="output folder")
    convert.add_argument("--arch", help="preset to check against (pass_vit_tiny|small|base); inferred if omitted")
    convert.add_argument("--num-heads", type=int, help="attention heads when neither --arch nor D/64 is right")
    convert.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    convert.set_defaults(func=_convert)
    add_synth_command(commands)
    add_deployment_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"pass-hub {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
