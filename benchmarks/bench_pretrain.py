"""One PASS pre-training step: the batched implementation against a straightforward per-stripe one, in one run.

Batched (training/pretraining/networks.py): both global views in one backbone pass, all 9 local views in one pass,
each of the four heads applied once to its stacked outputs. Straightforward: the same math with one backbone
pass per stripe (3 local passes) and one head call per view and token type. Both include the teacher's
no-grad forward, the loss, backward and the AdamW step; they are timed in interleaved rounds.

Target: batched >= 1.3x the straightforward step, for ViT-tiny and ViT-S on the CPU.

    python benchmarks/bench_pretrain.py [--presets pass_vit_tiny pass_vit_small] [--out_dim 65536]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from pass_hub.models.backbone import PRESETS, PassVisionTransformer
from training.pretraining.heads import PartAwareHeads
from training.pretraining.losses import part_aware_dino_loss
from training.pretraining.networks import PartAwareDINO, StudentOutputs

STRIPES, CROPS = 3, 3


def per_stripe_forward(model: PartAwareDINO, global_views: torch.Tensor, local_views: torch.Tensor) -> StudentOutputs:
    """The same outputs as ``model(global_views, local_views, stripes)``, computed view by view."""
    batch = global_views.shape[0] // 2
    tokens = model.backbone.forward_features(global_views)
    global_out = torch.stack(
        [
            torch.cat([model.heads.apply_head(t, tokens[v * batch : (v + 1) * batch, t]) for v in range(2)])
            for t in range(1 + STRIPES)
        ]
    )
    local_cls, local_part = [], []
    for stripe in range(STRIPES):
        rows = slice(stripe * CROPS * batch, (stripe + 1) * CROPS * batch)
        stripe_tokens = model.backbone.forward_local(local_views[rows], stripe)
        for crop in range(CROPS):
            view = stripe_tokens[crop * batch : (crop + 1) * batch]
            local_cls.append(model.heads.apply_head(0, view[:, 0]))
            local_part.append(model.heads.apply_head(1 + stripe, view[:, 1]))
    return StudentOutputs(global_out, torch.cat(local_cls), torch.cat(local_part))


def build(preset: str, out_dim: int, image_size: tuple[int, int]) -> PartAwareDINO:
    backbone = PassVisionTransformer(
        img_size=image_size, num_classes=0, dynamic_img_size=True, drop_path_rate=0.0, **PRESETS[preset]
    )
    return PartAwareDINO(backbone, PartAwareHeads(PRESETS[preset]["embed_dim"], out_dim))


def time_steps(preset: str, batch: int, out_dim: int, rounds: int, image_size: tuple[int, int]) -> dict[str, float]:
    torch.manual_seed(0)
    student, teacher = build(preset, out_dim, image_size), build(preset, out_dim, image_size)
    teacher.requires_grad_(False)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-5)
    height, width = image_size
    global_views = torch.randn(2 * batch, 3, height, width)
    local_views = torch.randn(STRIPES * CROPS * batch, 3, height // 2, width // 2)
    stripes = torch.arange(STRIPES).repeat_interleave(CROPS * batch)
    centers = torch.zeros(1 + STRIPES, out_dim)
    implementations = {
        "batched": lambda: student(global_views, local_views, stripes),
        "per-stripe": lambda: per_stripe_forward(student, global_views, local_views),
    }

    def step(forward) -> None:
        with torch.no_grad():
            teacher_out = teacher(global_views)
        out = forward()
        loss = part_aware_dino_loss(teacher_out, out.global_out, out.local_cls, out.local_part, centers)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    seconds: dict[str, list[float]] = {name: [] for name in implementations}
    for forward in implementations.values():
        step(forward)  # warm-up
    for _ in range(rounds):
        for name, forward in implementations.items():
            start = time.perf_counter()
            step(forward)
            seconds[name].append(time.perf_counter() - start)
    return {name: batch / statistics.median(times) for name, times in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["pass_vit_tiny", "pass_vit_small"])
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--out_dim", type=int, default=65536)
    parser.add_argument("--image_size", nargs=2, type=int, default=[256, 128])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"one training step, batch {args.batch_size}, {args.out_dim} prototypes, input {args.image_size}, "
          f"{torch.get_num_threads()} threads, median of {args.rounds} interleaved rounds")
    for preset in args.presets:
        throughput = time_steps(preset, args.batch_size, args.out_dim, args.rounds, tuple(args.image_size))
        ratio = throughput["batched"] / throughput["per-stripe"]
        print(f"  {preset:15s} batched {throughput['batched']:6.2f} img/s, per-stripe {throughput['per-stripe']:6.2f} "
              f"img/s -> {ratio:.2f}x (target >= 1.3)")


if __name__ == "__main__":
    main()
