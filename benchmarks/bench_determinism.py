"""What deterministic kernels cost: pre-training and fine-tuning steps/s with and without ``--deterministic``.

The steps are the scripts' own (PassPretrainer, ReidFinetuner) at the ``cpu_demo`` recipe's size, built as
``training/pretrain.py`` and ``training/finetune.py`` build them, on real SynthPerson batches. The two modes are
timed in interleaved rounds in one process (the order of the two shuffled each round), so that the machine's
drift falls on both; each round times ``--steps`` steps after the model has settled.

    python benchmarks/bench_determinism.py [--rounds 5] [--steps 3] [--parts pretraining finetuning]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable
from itertools import islice

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader

from training import finetune, pretrain
from training.engine.data import SeededTransformDataset
from training.engine.runtime import per_process_batch, use_deterministic_kernels
from training.engine.samplers import PKBatchSampler
from training.engine.transforms import reid_train_transform
from training.finetuning.step import ReidFinetuner
from training.pretraining.step import PassPretrainer
from training.pretraining.views import PassViews


def pretraining_step(batches: int) -> Callable[[int], None]:
    args = pretrain.parse_args(["--recipe", "cpu_demo", "--report_to", "none"])
    accelerator = Accelerator(cpu=True)
    _, images = pretrain.load_images(args)
    dataset = SeededTransformDataset(images, PassViews(pretrain.view_config(args)), seed=0)
    loader = DataLoader(dataset, batch_size=per_process_batch(args, accelerator), shuffle=True, num_workers=0,
                        collate_fn=pretrain.collate_views, generator=torch.Generator().manual_seed(0))
    data = list(islice(loader, batches))
    trainer = PassPretrainer.build(args.settings, len(loader), accelerator)

    def step(iteration: int) -> None:
        batch = data[iteration % len(data)]
        trainer.step(batch["global_views"], batch["local_views"], iteration=iteration)

    return step


def finetuning_step(batches: int) -> Callable[[int], None]:
    args = finetune.parse_args(["--recipe", "cpu_demo", "--report_to", "none"])
    accelerator = Accelerator(cpu=True)
    _, train, num_labels = finetune.load_data(args)
    batch_size = per_process_batch(args, accelerator)
    sampler = PKBatchSampler(train["label"], batch_size // args.num_instances, args.num_instances, seed=0)
    dataset = SeededTransformDataset(train, reid_train_transform(tuple(args.image_size)), seed=0,
                                     keep_columns=("label",))
    data = list(islice(DataLoader(dataset, batch_sampler=sampler, num_workers=0), batches))
    _, model = finetune.load_start(args, num_labels, accelerator)
    finetuner = ReidFinetuner.build(args.settings, model, accelerator)
    finetuner.model.train()

    def step(iteration: int) -> None:
        batch = data[iteration % len(data)]
        finetuner.step(batch["pixel_values"], batch["label"], epoch=0)

    return step


def race(step: Callable[[int], None], rounds: int, steps: int) -> dict[bool, list[float]]:
    """Steps per second of each mode, one figure per round."""
    iteration = 0
    for mode in (True, False):  # settle both modes (first-call allocations, kernel choice)
        use_deterministic_kernels(mode)
        step(iteration)
        iteration += 1
    rates: dict[bool, list[float]] = {True: [], False: []}
    order = random.Random(0)
    for _ in range(rounds):
        modes = [True, False]
        order.shuffle(modes)
        for mode in modes:
            use_deterministic_kernels(mode)
            started = time.perf_counter()
            for _ in range(steps):
                step(iteration)
                iteration += 1
            rates[mode].append(steps / (time.perf_counter() - started))
    use_deterministic_kernels(False)
    return rates


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="steps per mode per round")
    parser.add_argument("--parts", nargs="+", choices=("pretraining", "finetuning"),
                        default=["pretraining", "finetuning"])
    args = parser.parse_args(argv)
    builders = {"pretraining": pretraining_step, "finetuning": finetuning_step}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, cpu_demo recipe, "
          f"{args.rounds} rounds x {args.steps} steps per mode")
    for part in args.parts:
        rates = race(builders[part](batches=args.steps), args.rounds, args.steps)
        on, off = statistics.median(rates[True]), statistics.median(rates[False])
        ratios = [a / b for a, b in zip(rates[True], rates[False], strict=True)]
        print(f"{part}: deterministic {on:.3f} steps/s, not {off:.3f} steps/s (medians); deterministic / not "
              f"= {on / off:.3f} (per round {min(ratios):.3f}-{max(ratios):.3f})")


if __name__ == "__main__":
    main()
