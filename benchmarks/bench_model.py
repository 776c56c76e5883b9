"""Inference throughput of the PASS backbone on the CPU, as ratios measured in one run.

Compares, for ViT-S/16 at 256x128 and batch 32: ``PassViTModel`` (transformers), the timm entry
``pass_vit_small``, a plain timm ViT of the same shape (``vit_small_patch16_224`` at 256x128, no [PART]
tokens) and ``PassViTModel`` with unfused (manual matmul-softmax) attention. Models are timed in interleaved
rounds so that machine noise hits all of them alike; the median per model is reported.

Targets: PassViTModel >= 0.97x plain timm and >= 1.05x manual attention.

    python benchmarks/bench_model.py [--batch-size 32] [--rounds 7]
"""

from __future__ import annotations

import argparse
import statistics
import time

import timm
import torch

import pass_hub


def build_models() -> dict[str, torch.nn.Module]:
    config = pass_hub.PassViTConfig.from_preset("pass_vit_small")
    fused = pass_hub.PassViTModel(config)
    manual = pass_hub.PassViTModel(config)
    manual.load_state_dict(fused.state_dict())
    manual.set_fused_attention(False)
    return {
        "PassViTModel": fused,
        "timm pass_vit_small": timm.create_model("pass_vit_small"),
        "plain timm ViT-S 256x128": timm.create_model("vit_small_patch16_224", img_size=(256, 128), num_classes=0),
        "PassViTModel, manual attention": manual,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    models = {name: model.eval() for name, model in build_models().items()}
    pixels = torch.randn(args.batch_size, 3, 256, 128)
    seconds: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for model in models.values():
            model(pixels)  # warm-up: allocator and kernel selection
        for _ in range(args.rounds):
            for name, model in models.items():
                start = time.perf_counter()
                model(pixels)
                seconds[name].append(time.perf_counter() - start)

    throughput = {name: args.batch_size / statistics.median(times) for name, times in seconds.items()}
    print(f"ViT-S/16 256x128, batch {args.batch_size}, {args.threads} threads, median of {args.rounds} rounds")
    for name, images_per_second in throughput.items():
        print(f"  {name:32s} {images_per_second:8.1f} images/s")
    ratios = (
        ("PassViTModel", "plain timm ViT-S 256x128", "target >= 0.97"),
        ("PassViTModel", "PassViTModel, manual attention", "target >= 1.05"),
        ("timm pass_vit_small", "plain timm ViT-S 256x128", ""),
    )
    for numerator, denominator, target in ratios:
        print(f"  {numerator} / {denominator}: {throughput[numerator] / throughput[denominator]:.3f}x {target}")


if __name__ == "__main__":
    main()
