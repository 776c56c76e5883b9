"""The deployment commands of ``pass-hub``: ``export-onnx``, ``embed`` and ``search``.

Example:
    $ pass-hub export-onnx out/pass-vit-s16 pass-vit-s16.onnx --dynamic-size
    $ pass-hub embed out/pass-vit-s16 gallery/ "extra/*.jpg" --out gallery.safetensors
    $ pass-hub embed out/pass-vit-s16 --dataset market1501:/data/Market-1501 --split query --out query.npy
    $ pass-hub search pass-vit-s16.onnx --gallery gallery/ --query q.jpg --top-k 5 --index cache/ --draw top5.png
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING

from ..flags import positive_int
from .embedder import FEATURE_CHOICES
from .export import DEFAULT_OPSET, QUANTIZATIONS

if TYPE_CHECKING:
    from .embedding import Embedder

MODEL_HELP = (
    "pass-hub folder, hub id (org/name), timm name (pass_vit_small), or original PASS checkpoint (.pth); "
    "embed and search also take an exported .onnx file"
)


def add_num_heads_flag(parser: argparse.ArgumentParser) -> None:
    """``--num-heads`` for commands that load a MODEL: an original checkpoint's tensors do not give the heads."""
    parser.add_argument("--num-heads", type=positive_int, metavar="N",
                        help="attention heads of an original checkpoint whose width is not 64 per head")


@contextlib.contextmanager
def _warnings_as_messages(command: str) -> Iterator[None]:
    """Print warnings (e.g. the skipped unreadable images) as ``pass-hub CMD: warning: ...`` lines."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        try:
            yield
        finally:
            for warning in caught:
                print(f"pass-hub {command}: warning: {warning.message}", file=sys.stderr)


def _image_size(text: str) -> tuple[int, int]:
    from .export import parse_image_size

    try:
        return parse_image_size(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _model(args: argparse.Namespace) -> Embedder:
    from .embedder import load_reid_model
    from .embedding import resolve_embedder

    if getattr(args, "raw", False):
        if args.model.endswith(".onnx"):
            raise ValueError("--raw does not apply to an ONNX file: its normalisation was fixed at export")
        return load_reid_model(args.model, normalize=False, device=args.device, num_heads=args.num_heads)
    return resolve_embedder(args.model, device=args.device, num_heads=args.num_heads)


def _export_onnx(args: argparse.Namespace) -> int:
    from .export import INT8_MIN_COSINE, PARITY_TOLERANCE, OnnxReIDModel, export_onnx

    result = export_onnx(
        args.model,
        args.out,
        image_size=args.image_size,
        dynamic_size=args.dynamic_size,
        normalize=False if args.raw else None,
        opset=args.opset,
        overwrite=args.overwrite,
        verify=not args.no_verify,
        feature=args.feature,
        quantize=args.quantize,
        num_heads=args.num_heads,
    )
    runner = OnnxReIDModel(result.path)
    prep = runner.preprocessing
    height, width = prep.image_size
    shape = f"(batch, 3, H, W) with H, W multiples of {prep.patch_size}" if runner.dynamic_size else (
        f"(batch, 3, {height}, {width})"
    )
    print(
        f"wrote {result.path} ({result.path.stat().st_size / 2**20:.1f} MiB, opset {args.opset}): "
        f"pixel_values {shape} -> embeddings (batch, {runner.embedding_size}), "
        f"{'L2-normalised' if runner.normalize else 'not normalised'} {runner.feature.replace('_', '-')} feature"
        + (f", {runner.quantization}" if runner.quantization else "")
    )
    print(
        f"preprocessing: RGB, {prep.interpolation} resize to {height}x{width}, scale to [0, 1], "
        f"mean {list(prep.mean)}, std {list(prep.std)} (all in the file's metadata_props)"
    )
    for (height, width), difference in result.max_abs_diff.items():
        if result.min_cosine is None:
            print(f"onnxruntime vs PyTorch at {height}x{width}: max abs diff {difference:.2e} "
                  f"(<= {PARITY_TOLERANCE:.0e})")
        else:
            print(f"int8 onnxruntime vs float32 PyTorch at {height}x{width}: lowest cosine "
                  f"{result.min_cosine[height, width]:.5f} (>= {INT8_MIN_COSINE}), max abs diff {difference:.2e}")
    return 0


def _embed(args: argparse.Namespace) -> int:
    from .embedding import ImageEmbeddings, embed_files
    from .images import list_image_paths, load_dataset_split

    if bool(args.images) == bool(args.dataset):
        raise ValueError("give IMAGES (files, folders, globs) or --dataset SPEC, not both and not neither")
    if args.split and not args.dataset:
        raise ValueError("--split applies to --dataset only")
    ImageEmbeddings.output_files(args.out, overwrite=args.overwrite)  # fail before the work, not after
    sources = load_dataset_split(args.dataset, args.split) if args.dataset else list_image_paths(args.images)
    with _warnings_as_messages("embed"):
        result = embed_files(sources, _model(args), batch_size=args.batch_size, device=args.device)
    path = result.save(args.out, overwrite=args.overwrite)
    rows, dim = result.embeddings.shape
    normalised = "L2-normalised" if result.metadata["normalized"] == "true" else "not normalised"
    names = f" and {path.with_suffix('.json')}" if path.suffix == ".npy" else ""
    print(f"wrote {path}{names}: {rows} embeddings of {dim} values ({normalised}), {len(result.skipped)} skipped")
    return 0


def _search(args: argparse.Namespace) -> int:
    from .embedding import embed_files
    from .gallery import GalleryIndex, draw_matches
    from .images import list_image_paths

    gallery, query = list_image_paths(args.gallery), list_image_paths(args.query)  # fail before loading the model
    embedder = _model(args)
    with _warnings_as_messages("search"):
        index = GalleryIndex.build(
            gallery, embedder, index_path=args.index, batch_size=args.batch_size, device=args.device
        )
        queries = embed_files(query, embedder, batch_size=args.batch_size, progress=False)
    where = f" ({index.path})" if index.path else ""
    print(f"gallery: {len(index)} images, index {index.status}{where}")
    result = index.search(queries.embeddings, top_k=args.top_k, threshold=args.threshold)
    above = "" if args.threshold is None else f" above {args.threshold:g}"
    for row, name in enumerate(queries.names):
        matches = result.matches(row)
        if not matches:
            print(f"\nquery {name}: no match{above}")
            continue
        print(f"\nquery {name}: {len(matches)} match(es){above}\n  rank  cosine  gallery")
        for rank, (match, similarity) in enumerate(matches, 1):
            print(f"  {rank:4d}  {similarity:6.3f}  {index.names[match]}")
    if args.draw:
        print(f"\nwrote {draw_matches(args.draw, [(name, name) for name in queries.names], index, result)}")
    return 0


def add_deployment_commands(commands: argparse._SubParsersAction) -> None:
    """Register ``export-onnx``, ``embed`` and ``search`` on the ``pass-hub`` sub-command parser."""
    model = argparse.ArgumentParser(add_help=False)
    model.add_argument("model", help=MODEL_HELP)
    add_num_heads_flag(model)
    running = argparse.ArgumentParser(add_help=False, parents=[model])
    running.add_argument("--batch-size", type=positive_int, default=32, help="images per forward pass (default: 32)")
    running.add_argument("--device", help="PyTorch device, e.g. cuda:0 (default: cpu; ignored for .onnx)")

    export = commands.add_parser(
        "export-onnx",
        parents=[model],
        help="export the ReID embedding to ONNX (dynamic batch), checked against onnxruntime",
        description="The graph takes preprocessed pixels (RGB, resized, scaled to [0, 1], normalised with the "
        "model's mean/std; all written into the file's metadata_props) and returns the test-time embedding.",
    )
    export.add_argument("out", help="output .onnx file (written atomically)")
    export.add_argument("--image-size", type=_image_size, metavar="HxW", help="input size (default: the model's)")
    export.add_argument("--dynamic-size", action="store_true", help="accept any size that is a multiple of the patch")
    export.add_argument("--raw", action="store_true", help="export the embedding without L2 normalisation")
    export.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                        help=f"ONNX opset (default: {DEFAULT_OPSET}, fused attention; 18 for onnxruntime < 1.23)")
    export.add_argument("--feature", default="deployment", choices=FEATURE_CHOICES,
                        help="embedding: deployment (default; thresholdable cosines), evaluation (the paper's test "
                        "feature), before_neck or after_neck")
    export.add_argument("--quantize", choices=QUANTIZATIONS,
                        help="int8: dynamic quantisation of the linear layers (faster on CPU; checked by cosine)")
    export.add_argument("--no-verify", action="store_true", help="skip the onnxruntime vs PyTorch parity check")
    export.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    export.set_defaults(func=_export_onnx)

    embed = commands.add_parser(
        "embed",
        parents=[running],
        help="embed images (files, folders, globs, or a dataset split) into a .safetensors or .npy file",
        description="Rows keep the image names (in the .safetensors header, or in a .json next to a .npy); "
        "unreadable images are reported and left out.",
    )
    embed.add_argument("images", nargs="*", help="image files, folders (searched recursively) or quoted globs")
    embed.add_argument(
        "--dataset", metavar="SPEC", help="dataset spec (synthetic, market1501:PATH, PATH ...) or save_to_disk folder"
    )
    embed.add_argument("--split", help="split of --dataset (needed when it has several)")
    embed.add_argument("--out", required=True, help="output file: .safetensors or .npy (+ .json of names)")
    embed.add_argument("--raw", action="store_true", help="store embeddings without L2 normalisation")
    embed.add_argument("--overwrite", action="store_true", help="replace existing output files")
    embed.set_defaults(func=_embed)

    search = commands.add_parser(
        "search",
        parents=[running],
        help="rank gallery images by cosine similarity to query images",
        description="Prints the top-k gallery images of each query; --index keeps the gallery embeddings on "
        "disk, reused while the model and the gallery files (names, sizes, times) are unchanged.",
    )
    search.add_argument("--gallery", nargs="+", required=True, help="gallery files, folders or quoted globs")
    search.add_argument("--query", nargs="+", required=True, help="query image files, folders or globs")
    search.add_argument("--top-k", type=positive_int, default=10, help="matches per query at most (default: 10)")
    search.add_argument("--threshold", type=float, metavar="T",
                        help="only matches with a cosine similarity above T (pass-hub eval prints T per FPR)")
    search.add_argument("--index", metavar="DIR_OR_FILE", help="gallery index: a folder or a .safetensors file")
    search.add_argument("--draw", metavar="PNG", help="draw the query and its matches, one row per query")
    search.set_defaults(func=_search)
