"""Inference throughput of the PASS backbone on the CPU, as ratios measured in one run.

Compares, for ViT-S/16 at 256x128 and batch 32: ``PassViTModel`` (transformers), the timm entry
``pass_vit_small``, a plain timm ViT of the same shape (``vit_small_patch16_224`` at 256x128 with 3 register tokens:
the same 132 tokens and parameter names) and ``PassViTModel`` with eager (matmul-softmax) attention, all holding
the same weights (random weights of different draws were seen to time differently by several percent). Models
are timed in rounds, each in a new random order (the order was seen to shift a model's time by 30% on a shared
2-core machine); a ratio is the median over rounds of the two models' times in the same round.

Targets: PassViTModel and pass_vit_small >= 1.0x the plain ViT of the same shape; PassViTModel >= 1.05x eager.

    python benchmarks/bench_model.py [--batch-size 32] [--rounds 7]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import timm
import torch

import pass_hub


def build_models() -> dict[str, torch.nn.Module]:
    config = pass_hub.PassViTConfig.from_preset("pass_vit_small")
    fused = pass_hub.PassViTModel(config)
    eager = pass_hub.PassViTModel(config)
    eager.load_state_dict(fused.state_dict())
    eager.set_attn_implementation("eager")
    weights = fused.vit.state_dict()
    entry = timm.create_model("pass_vit_small")
    plain = timm.create_model("vit_small_patch16_224", reg_tokens=3, img_size=(256, 128), num_classes=0)
    for model in (entry, plain):
        model.load_state_dict(weights)
    return {
        "PassViTModel": fused,
        "timm pass_vit_small": entry,
        "plain timm ViT-S, same shape": plain,
        "PassViTModel, eager attention": eager,
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
    order = random.Random(0)
    names = list(models)
    with torch.inference_mode():
        for model in models.values():
            model(pixels)  # warm-up: allocator and kernel selection
        for _ in range(args.rounds):
            order.shuffle(names)
            for name in names:
                start = time.perf_counter()
                models[name](pixels)
                seconds[name].append(time.perf_counter() - start)

    print(f"ViT-S/16 256x128, batch {args.batch_size}, {args.threads} threads, median of {args.rounds} rounds")
    for name, times in seconds.items():
        print(f"  {name:34s} {args.batch_size / statistics.median(times):8.1f} images/s")
    ratios = (
        ("PassViTModel", "plain timm ViT-S, same shape", "target >= 1.0"),
        ("timm pass_vit_small", "plain timm ViT-S, same shape", "target >= 1.0"),
        ("PassViTModel", "PassViTModel, eager attention", "target >= 1.05"),
    )
    for numerator, denominator, target in ratios:
        paired = statistics.median(d / n for n, d in zip(seconds[numerator], seconds[denominator], strict=True))
        print(f"  {numerator} / {denominator}: {paired:.3f}x {target}")


if __name__ == "__main__":
    main()
