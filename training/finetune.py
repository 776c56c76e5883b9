"""Supervised ReID fine-tuning of a PASS backbone with accelerate (spec §4), evaluation and publishing.

    accelerate launch training/finetune.py                                   # SynthPerson, ViT-tiny, minutes on a CPU
    accelerate launch training/finetune.py --init outputs/pretrain/pass-vit-pretrained
    accelerate launch --multi_gpu --num_processes 4 training/finetune.py \\
        --init pass_vit_small_full.pth --dataset market1501 --data_dir /data/Market-1501-v15.09.15 \\
        --epochs 120 --warmup_epochs 20 --batch_size 64 --eval_every 10 --image_size 256 128   # the paper's recipe

Model: ``PassViTForReID`` (four BatchNorm necks, bias-free identity classifier). Loss: cross-entropy on the
after-neck feature + batch-hard soft-margin triplet on ``cat(CLS, mean(PARTs))``. P x K batches, SGD with
biases at 2x the learning rate (``--optimizer adamw`` for short CPU runs), linear warm-up from 1% then cosine to
0.2%. The published folder holds the best evaluated weights with a model card.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

if __package__ in (None, ""):  # run as a script: make the repository's `training` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from training import runtime
from training.data import SeededTransformDataset
from training.losses import batch_hard_triplet_loss
from training.optim import (
    add_optimizer_arguments,
    describe_reid_optimizer,
    fill_weight_decay,
    reid_optimizer,
    set_hyperparameters,
)
from training.reid import (
    BestModel,
    add_evaluation_arguments,
    build_model,
    dataset_name,
    evaluate,
    finish_run,
    load_initial_backbone,
)
from training.samplers import PKBatchSampler
from training.schedules import cosine_schedule
from training.transforms import reid_train_transform

# The spec's SGD decay, and the usual ViT AdamW decay.
WEIGHT_DECAY = {"sgd": 1e-4, "adamw": 0.05}
LOGGED = ("loss", "cross_entropy", "triplet", "lr", "mAP", "rank1", "images_per_second")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    runtime.add_run_arguments(parser, default_output_dir="outputs/finetune")
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", default="synthetic",
                      help="dataset spec or loader name (synthetic, market1501, msmt17, dukemtmc, cuhk03np ...)")
    data.add_argument("--data_dir", default=None, help="dataset root for a loader name (same as --dataset NAME:DIR)")
    data.add_argument("--image_size", nargs=2, type=int, default=[128, 64], metavar=("H", "W"),
                      help="training input; 128x64 keeps CPU runs short, the paper uses 256 128")
    data.add_argument("--num_instances", type=int, default=4, help="K images per identity in a batch")
    model = parser.add_argument_group("model")
    model.add_argument("--init", default="pass_vit_tiny",
                       help="pass-hub folder / hub id, original PASS checkpoint, or a preset name (random init)")
    model.add_argument("--drop_path_rate", type=float, default=0.1)
    model.add_argument("--reid_feature", choices=("before_neck", "after_neck"), default="before_neck")
    optim = parser.add_argument_group("optimisation")
    add_optimizer_arguments(optim, lr=4e-4, weight_decay=WEIGHT_DECAY)
    optim.add_argument("--bias_lr_factor", type=float, default=2.0, help="SGD: biases at this x the learning rate")
    optim.add_argument("--warmup_epochs", type=float, default=1.0, help="20 in the paper's 120-epoch schedule")
    optim.add_argument("--warmup_start_factor", type=float, default=0.01)
    optim.add_argument("--final_lr_factor", type=float, default=0.002)
    optim.add_argument("--label_smoothing", type=float, default=0.0)
    optim.add_argument("--triplet_margin", type=float, default=None, help="hard margin; soft margin when omitted")
    optim.add_argument("--triplet_weight", type=float, default=1.0)
    optim.add_argument("--ce_weight", type=float, default=1.0)
    add_evaluation_arguments(parser)
    args = fill_weight_decay(parser.parse_args(argv), WEIGHT_DECAY)
    args.epochs = 8 if args.epochs is None else args.epochs
    args.batch_size = 64 if args.batch_size is None else args.batch_size
    if args.batch_size % args.num_instances:
        parser.error(f"--batch_size {args.batch_size} is not a multiple of --num_instances {args.num_instances}")
    if args.data_dir:
        args.dataset = f"{args.dataset}:{args.data_dir}"
    return args


def load_data(args: argparse.Namespace):
    from pass_hub.data import load_dataset_spec, relabel_pids

    data = load_dataset_spec(args.dataset)
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
    identities_per_batch = args.batch_size // args.num_instances
    try:
        sampler = PKBatchSampler(train["label"], identities_per_batch, args.num_instances, seed=args.seed)
    except ValueError as err:
        raise SystemExit(f"--dataset {args.dataset}: {err}") from None
    dataset = SeededTransformDataset(train, reid_train_transform(tuple(args.image_size)), seed=args.seed,
                                     keep_columns=("label",))
    # Its own generator: a new loader iterator (each epoch, and once more on --resume) then draws its worker seed
    # from it instead of the global RNG that drop path uses, so a resumed run masks exactly as an unbroken one.
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=args.num_workers,
                        generator=torch.Generator().manual_seed(args.seed))
    initial = load_initial_backbone(args.init)
    model = build_model(initial, image_size=args.image_size, num_labels=num_labels,
                        drop_path_rate=args.drop_path_rate, reid_feature=args.reid_feature,
                        label_smoothing=args.label_smoothing)
    optimizer = reid_optimizer(model, args.optimizer, lr=args.lr, weight_decay=args.weight_decay,
                               momentum=args.momentum, bias_lr_factor=args.bias_lr_factor)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    state = runtime.TrainingState()
    best = BestModel(output_dir / "best")
    accelerator.register_for_checkpointing(state, best)

    steps_per_epoch = len(loader) // args.gradient_accumulation_steps
    if steps_per_epoch == 0:
        raise SystemExit(f"{len(sampler)} P x K batches are fewer than --gradient_accumulation_steps per process")
    schedule_length = args.epochs * steps_per_epoch
    total_steps = schedule_length if args.max_steps is None else min(schedule_length, args.max_steps)
    warmup = min(round(args.warmup_epochs * steps_per_epoch), schedule_length)
    lr_schedule = cosine_schedule(args.lr, args.lr * args.final_lr_factor, schedule_length, warmup,
                                  warmup_start=args.lr * args.warmup_start_factor)
    global_batch = args.batch_size * accelerator.num_processes * args.gradient_accumulation_steps

    checkpointer, resumed = runtime.resume_and_track(accelerator, args, "pass_finetune")
    accelerator.print(
        f"fine-tuning {args.init} on {args.dataset}: {len(train)} images of {num_labels} identities, "
        f"{accelerator.num_processes} process(es), global batch {global_batch}, {total_steps} steps"
        + (f", resumed from {resumed}" if resumed else "")
    )

    monitor = runtime.RunMonitor(accelerator, args, state, checkpointer, total_steps, LOGGED, "fine-tuning")
    model.train()  # evaluate_model gives the model its training mode back
    step_means = runtime.StepMeans()
    for epoch, batch in monitor.batches(loader, steps_per_epoch, dataset, sampler):
        step = state.step
        with accelerator.accumulate(model):
            out = model(batch["pixel_values"], labels=batch["label"])
            triplet = batch_hard_triplet_loss(out.features_before_neck, batch["label"], args.triplet_margin)
            loss = args.ce_weight * out.loss + args.triplet_weight * triplet
            if not math.isfinite(loss.item()):
                raise SystemExit(f"loss is {loss.item()} at step {step}; stopping (lower --lr?)")
            set_hyperparameters(optimizer, float(lr_schedule[step]))
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step_means.add(loss=loss, cross_entropy=out.loss, triplet=triplet)
        if not accelerator.sync_gradients:
            continue
        values = {"epoch": epoch, **step_means.pop(accelerator), "lr": float(lr_schedule[step])}
        end_of_epoch = (step + 1) % steps_per_epoch == 0
        if args.eval_every and end_of_epoch and (epoch + 1) % args.eval_every == 0 and step + 1 < total_steps:
            evaluation = evaluate(model, data, args, accelerator, progress=False, return_per_query=True)
            values.update(best.consider(evaluation, step + 1, accelerator.unwrap_model(model), accelerator))
        monitor.step_done(values, images=global_batch)
    monitor.close()

    results = {
        "init": args.init,
        "dataset": args.dataset,
        "train_images": len(train),
        "train_identities": num_labels,
        "steps": state.step,
        "global_batch": global_batch,
    }
    return finish_run(args, accelerator, model, data, best, results, started=started, base_model=initial.base_model,
                      describe=lambda results: card_text(args, results))


def card_text(args: argparse.Namespace, results: dict[str, Any]) -> dict[str, Any]:
    """Name, summary and training section of the model card."""
    return {
        "name": args.model_name or f"pass-vit-{dataset_name(args.dataset)}-reid",
        "summary": f"A PASS part-aware ViT fine-tuned for person ReID on `{args.dataset}` with pass-hub's "
        f"`training/finetune.py`, starting from `{args.init}`.",
        "training": (
            f"{results['steps']} steps (best evaluation at step {results['best_step']}) of P x K batches "
            f"({args.batch_size // args.num_instances} x {args.num_instances}, global {results['global_batch']}) over "
            f"{results['train_identities']} identities / {results['train_images']} images; cross-entropy "
            f"(label smoothing {args.label_smoothing}) + batch-hard triplet "
            f"({'soft margin' if args.triplet_margin is None else f'margin {args.triplet_margin}'}); "
            f"{describe_reid_optimizer(args)}, "
            f"{args.warmup_epochs} warm-up epochs from {args.warmup_start_factor} x lr then cosine to "
            f"{args.final_lr_factor} x lr; input {args.image_size[0]}x{args.image_size[1]}, flip / pad-crop / random "
            f"erasing, mean = std = 0.5; drop path {args.drop_path_rate}; seed {args.seed}."
        ),
    }


if __name__ == "__main__":
    main()
