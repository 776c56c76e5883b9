"""The ``pass-hub`` command line.

Example:
    $ pass-hub convert pass_vit_small_full.pth out/pass-vit-s16
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .data.cli import add_synth_command
from .deployment.cli import add_deployment_commands, add_num_heads_flag
from .deployment.embedder import FEATURE_CHOICES
from .flags import FlagParser, non_negative_int, positive_int
from .track_command import add_track_command


def _convert(args: argparse.Namespace) -> int:
    from .models.convert import convert_checkpoint

    out = convert_checkpoint(args.src, args.out, arch=args.arch, num_heads=args.num_heads, overwrite=args.overwrite)
    print(f"wrote {out} (loads with AutoModel.from_pretrained and timm.create_model('local-dir:{out}'))")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from .atomic import write_json_atomic
    from .data import load_dataset_spec
    from .deployment.embedder import load_reid_model
    from .evaluation.calibration import draw_calibration
    from .evaluation.protocol import evaluate_model, save_rank_lists

    # First: a wrong --model fails before the data loads.
    model = load_reid_model(args.model, device=args.device, feature=args.feature, num_heads=args.num_heads)
    data = load_dataset_spec(args.data)
    missing = [split for split in (args.query_split, args.gallery_split) if split not in data]
    if missing:
        raise ValueError(f"--data {args.data} has no split(s) {missing} (it has {sorted(data)})")
    query, gallery = data[args.query_split], data[args.gallery_split]
    results = evaluate_model(
        model, query, gallery, batch_size=args.batch_size, num_workers=args.num_workers, flip=args.flip,
        rerank=args.rerank, return_per_query=args.rank_lists is not None, feature=args.feature,
        calibration=False if args.no_calibration else args.calibration_feature,
    )
    print(f"model {args.model} on {args.data}: {results['num_query']} queries "
          f"({results['num_valid_queries']} with a true match), {results['num_gallery']} gallery images, "
          f"{results['feature'].replace('_', '-')} feature"
          + (", k-reciprocal re-ranking" if args.rerank else "") + (", flip averaging" if args.flip else ""))
    print("| mAP | mINP | Rank-1 | Rank-5 | Rank-10 |\n|---|---|---|---|---|")
    print("| " + " | ".join(f"{100 * results[k]:.2f}" for k in ("mAP", "mINP", "rank1", "rank5", "rank10")) + " |")
    calibration = results.get("calibration")
    if calibration is not None:
        used = " (what embed / search return)" if args.calibration_feature == "deployment" else ""
        positive, negative = calibration.positive_quantiles, calibration.negative_quantiles
        print(f"\ncosine similarity of the {calibration.feature.replace('_', '-')} feature{used}: "
              f"{calibration.num_positive} same-person pairs from different cameras, median {positive['p50']:.4f} "
              f"(1st-99th percentile {positive['p1']:.4f} to {positive['p99']:.4f}); {calibration.num_negative} "
              f"different-person pairs, mean {calibration.negative_mean:.4f}, 99th percentile {negative['p99']:.4f}")
        print("thresholds (a pair matches when its cosine is above):")
        print(calibration.table())
        if args.calibration:
            print(f"wrote {draw_calibration(calibration, args.calibration, title=f'{args.model} on {args.data}')}")
    if args.rank_lists:
        print(f"wrote {save_rank_lists(results, query, gallery, args.rank_lists)}")
    if args.output:
        keys = ("mAP", "mINP", "rank1", "rank5", "rank10", "num_valid_queries", "num_query", "num_gallery", "feature")
        summary = {k: results[k] for k in keys} | {"cmc": results["cmc"].tolist(), "model": str(args.model),
                                                   "data": args.data, "rerank": args.rerank, "flip": args.flip}
        if calibration is not None:
            summary["calibration"] = calibration.to_dict()
        print(f"wrote {write_json_atomic(args.output, summary)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = FlagParser(prog="pass-hub", description="PASS part-aware ViT for person ReID")
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
    convert.add_argument("--num-heads", type=positive_int, help="attention heads when neither --arch nor D/64 is right")
    convert.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    convert.set_defaults(func=_convert)
    evaluate = commands.add_parser(
        "eval",
        help="evaluate a ReID model on a query / gallery dataset (CMC, mAP, mINP)",
        description="Market-1501 protocol: same-identity same-camera gallery images are ignored per query.",
    )
    evaluate.add_argument("--model", required=True, help="pass-hub folder, hub id, timm name or original checkpoint")
    add_num_heads_flag(evaluate)
    evaluate.add_argument("--data", default="synthetic", help="dataset spec, e.g. market1501:/data/Market-1501")
    evaluate.add_argument("--query-split", default="query")
    evaluate.add_argument("--gallery-split", default="gallery")
    evaluate.add_argument("--batch-size", type=positive_int, default=64)
    evaluate.add_argument("--num-workers", type=non_negative_int, default=2)
    evaluate.add_argument("--device", default=None, help="e.g. cuda:0 (default: cpu)")
    evaluate.add_argument("--flip", action="store_true", help="average embeddings of each image and its mirror")
    evaluate.add_argument("--rerank", action="store_true", help="k-reciprocal re-ranking (k1 20, k2 6, lambda 0.3)")
    evaluate.add_argument("--output", metavar="JSON", help="write the results here")
    evaluate.add_argument("--rank-lists", metavar="PNG", help="draw rank lists of the best, worst and random queries")
    evaluate.add_argument("--feature", default="evaluation", choices=FEATURE_CHOICES,
                          help="embedding to rank with: evaluation (default: the paper's test feature), deployment "
                          "(the one embed / search use), before_neck or after_neck")
    evaluate.add_argument("--calibration", metavar="PNG", help="draw the score histograms and the ROC curve")
    evaluate.add_argument("--calibration-feature", default="deployment", choices=FEATURE_CHOICES,
                          help="embedding whose cosines are calibrated (default: deployment, what embed / search "
                          "return)")
    evaluate.add_argument("--no-calibration", action="store_true",
                          help="skip the TPR-at-FPR thresholds (they cost one more pass over all pairs)")
    evaluate.set_defaults(func=_eval)
    add_synth_command(commands)
    add_track_command(commands)
    add_deployment_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError, ImportError) as err:
        message = " ".join(str(err).split())  # one line, whatever the library wrote
        print(f"pass-hub {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
