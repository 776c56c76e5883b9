"""Supervised ReID fine-tuning of a PASS backbone with accelerate, evaluation and publishing.

    accelerate launch training/finetune.py                                   # cpu_demo: SynthPerson, ViT-tiny, CPU
    accelerate launch training/finetune.py --init outputs/pretrain/pass-vit-pretrained
    accelerate launch training/finetune.py --recipe market_vit_small_256 \\
        --init pass_vit_small_full.pth --data_dir /data/Market-1501-v15.09.15     # run_pass_vit_small_Market.sh
    accelerate launch training/finetune.py --recipe market_vit_small_256 --print_config   # its settings, as JSON

Model: ``PassViTForReID`` (four BatchNorm necks, bias-free identity classifier). Loss: cross-entropy on the
after-neck feature + batch-hard soft-margin triplet on ``cat(CLS, mean(PARTs))``. P x K batches as the original
sampler makes them (an epoch ends when fewer than P identities have images left), SGD with biases peaking at 2x
the learning rate, the original's per-epoch warm-up + cosine. The published folder holds the final weights
(``--publish best_test_evaluation``: those of the best test-split evaluation) with a model card.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

if __package__ in (None, ""):  # run as a script: make the repository's `training` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pass_hub.flags import FlagParser
from training.engine import recipes, runtime
from training.engine.data import SeededTransformDataset
from training.engine.optim import describe_reid_optimizer
from training.engine.reid import (
    PublishedWeights,
    add_evaluation_arguments,
    add_init_arguments,
    dataset_name,
    evaluate,
    finish_run,
    load_data_spec,
    load_start,
)
from training.engine.samplers import PKBatchSampler
from training.engine.transforms import reid_train_transform
from training.finetuning.step import ReidFinetuner

LOGGED = ("loss", "cross_entropy", "triplet", "lr", "mAP", "rank1", "images_per_second")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = FlagParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    runtime.add_run_arguments(parser, default_output_dir="outputs/finetune")
    inputs = parser.add_argument_group("inputs")
    inputs.add_argument("--data_dir", default=None, help="dataset root for a loader name (same as --dataset NAME:DIR)")
    add_init_arguments(inputs, "pass-hub folder / hub id, original PASS checkpoint (a backbone, or a fine-tuned "
                       "transformer_N.pth: with as many identities as the data, its necks and classifier are kept), "
                       "or a preset name (random init); default: the recipe's (the released weights' file name, "
                       "random init for cpu_demo)")
    add_evaluation_arguments(parser)
    return recipes.parse_script_args(parser, "finetune", argv, inputs=("init", "data_dir"))


def load_data(args: argparse.Namespace):
    from pass_hub.data import relabel_pids

    data = load_data_spec(args)
    missing = [split for split in ("train", "query", "gallery") if split not in data]
    if missing:
        raise SystemExit(f"--dataset {args.dataset}: no {', '.join(missing)} split(s); fine-tuning needs labelled data")
    train, label_of_pid = relabel_pids(data["train"])
    if len(label_of_pid) < 2:
        raise SystemExit(f"--dataset {args.dataset}: the train split has {len(label_of_pid)} identity; need >= 2")
    return data, train, len(label_of_pid)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    accelerator, output_dir, started = runtime.start_run(args)

    with accelerator.main_process_first():
        data, train, num_labels = load_data(args)
    batch_size = runtime.per_process_batch(args, accelerator)
    if batch_size % args.num_instances:
        raise SystemExit(f"each process takes {batch_size} images per batch, not a multiple of --num_instances "
                         f"{args.num_instances}: change --global_batch_size or --gradient_accumulation_steps")
    try:
        sampler = PKBatchSampler(train["label"], batch_size // args.num_instances, args.num_instances, seed=args.seed)
    except ValueError as err:
        raise SystemExit(f"--dataset {args.dataset}: {err}") from None
    dataset = SeededTransformDataset(train, reid_train_transform(tuple(args.image_size)), seed=args.seed,
                                     keep_columns=("label",))
    # Its own generator: a new loader iterator (each epoch, and once more on --resume) then draws its worker seed
    # from it instead of the global RNG that drop path uses, so a resumed run masks exactly as an unbroken one.
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=args.num_workers,
                        generator=torch.Generator().manual_seed(args.seed))
    start, model = load_start(args, num_labels, accelerator)
    finetuner = ReidFinetuner.build(args.settings, model, accelerator)
    loader = accelerator.prepare(loader)
    state = runtime.TrainingState()
    weights = PublishedWeights(output_dir / "published", args.publish)
    accelerator.register_for_checkpointing(state, weights)

    accumulation = args.gradient_accumulation_steps
    epoch_steps = [runtime.optimizer_steps(sampler.epoch_length(e), accelerator, accumulation)
                   for e in range(args.epochs)]
    if min(epoch_steps) == 0:
        raise SystemExit(f"an epoch of --dataset {args.dataset} has no P x K batch")
    epoch_ends = np.cumsum(epoch_steps)
    total_steps = int(epoch_ends[-1]) if args.max_steps is None else min(int(epoch_ends[-1]), args.max_steps)

    checkpointer, resumed = runtime.resume_and_track(accelerator, args, "pass_finetune")
    accelerator.print(
        f"fine-tuning {args.init} on {args.dataset}: {len(train)} images of {num_labels} identities, "
        f"{accelerator.num_processes} process(es), global batch {args.global_batch_size}, {total_steps} steps"
        + (f", resumed from {resumed}" if resumed else "")
    )

    monitor = runtime.RunMonitor(accelerator, args, state, checkpointer, total_steps, LOGGED, "fine-tuning")
    finetuner.model.train()  # evaluate_model gives the model its training mode back
    step_means = runtime.StepMeans()
    for epoch, batch in monitor.batches(loader, epoch_steps, dataset, sampler):
        step = state.step
        try:
            outcome = finetuner.step(batch["pixel_values"], batch["label"], epoch)
        except FloatingPointError as err:
            raise SystemExit(f"{err} (step {step}); stopping (lower --lr?)") from None
        step_means.add(loss=outcome.loss, cross_entropy=outcome.cross_entropy, triplet=outcome.triplet)
        if not outcome.optimizer_stepped:
            continue
        values = {"epoch": epoch, **step_means.pop(accelerator), "lr": finetuner.group_learning_rates(epoch)[0]}
        end_of_epoch = step + 1 == epoch_ends[epoch]
        if args.eval_every and end_of_epoch and (epoch + 1) % args.eval_every == 0 and step + 1 < total_steps:
            evaluation = evaluate(finetuner.model, data, args, accelerator, progress=False, return_per_query=True)
            values.update(weights.consider(evaluation, step + 1, finetuner.network, accelerator))
        monitor.step_done(values, images=args.global_batch_size)
    monitor.close()

    results = {
        "init": args.init,
        "dataset": args.dataset,
        "train_images": len(train),
        "train_identities": num_labels,
        "steps": state.step,
        "global_batch": args.global_batch_size,
    }
    return finish_run(args, accelerator, finetuner.model, data, weights, results, started=started,
                      base_model=start.base_model, describe=lambda results: card_text(args, results))


def card_text(args: argparse.Namespace, results: dict[str, Any]) -> dict[str, Any]:
    """Name, summary and training section of the model card."""
    fusion = "cat" if args.feature_fusion == "cat" else "mean"
    return {
        "name": args.model_name or f"pass-vit-{dataset_name(args.dataset)}-reid",
        "summary": f"A PASS part-aware ViT fine-tuned for person ReID on `{args.dataset}` with pass-hub's "
        f"`training/finetune.py`, starting from `{args.init}`.",
        "training": (
            f"Settings: {args.resolved.describe()}. {results['steps']} steps of P x K batches "
            f"({args.global_batch_size // args.num_instances} x {args.num_instances}) over "
            f"{results['train_identities']} identities / {results['train_images']} images; cross-entropy "
            f"(label smoothing {args.label_smoothing}) + batch-hard triplet "
            f"({'soft margin' if args.triplet_margin is None else f'margin {args.triplet_margin}'}) on the "
            f"before-neck feature ({args.neck} necks, {fusion} fusion); {describe_reid_optimizer(args)}, "
            f"{args.warmup_epochs} warm-up epochs from {args.warmup_start_factor} x lr, then a cosine over all "
            f"{args.epochs} epochs to {args.final_lr_factor} x lr (per epoch); input "
            f"{args.image_size[0]}x{args.image_size[1]}, flip / pad-crop / random erasing, mean = std = 0.5; drop "
            f"path {args.drop_path_rate}; {args.mixed_precision} mixed precision; seed {args.seed}."
        ),
    }


if __name__ == "__main__":
    runtime.run_script(main)
