"""What every training script shares: common flags, the accelerator, atomic checkpoints and resume, logs.

A run directory looks like::

    output_dir/
      checkpoints/step_00000200/   accelerate save_state folders, written to a temp name and renamed; the
                                   same bits for the same seed on one machine, but for throughput.json
      metrics.jsonl                one line per logged step (rewritten from the checkpointed history)
      loss_curves.png              the logged series as pictures
      logs/                        tracker files (tensorboard)
      results.json                 final numbers of the run
      <model folder>/              the hub folder the run publishes
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import ProjectConfiguration, set_seed
from tqdm.auto import tqdm

from pass_hub.atomic import write_text_atomic
from pass_hub.flags import non_negative_int, positive_int

CHECKPOINT_PREFIX = "step_"
THROUGHPUT_FILE = "throughput.json"  # beside the state in a checkpoint: wall-clock, differs run to run


def add_run_arguments(parser: argparse.ArgumentParser, *, default_output_dir: str) -> None:
    """Flags every training script takes that say where and how a run executes, not what it is (checkpoints,
    logging, workers, accumulation); what it is comes from ``--recipe`` (:mod:`training.engine.recipes`)."""
    run = parser.add_argument_group("run")
    run.add_argument("--output_dir", default=default_output_dir, help="run directory (checkpoints, logs, model)")
    run.add_argument("--max_steps", type=positive_int, default=None,
                     help="stop after this many optimizer steps (the schedules still span the whole run)")
    run.add_argument("--gradient_accumulation_steps", type=positive_int, default=1,
                     help="micro-batches per optimiser step: each process takes global_batch_size / (processes x "
                     "this) images at a time")
    run.add_argument("--num_workers", type=non_negative_int, default=2, help="DataLoader workers per process")
    run.add_argument("--resume", nargs="?", const="latest", default=None,
                     help="resume from the latest checkpoint in output_dir, or from the given checkpoint folder")
    run.add_argument("--save_every_steps", type=positive_int, default=100, help="checkpoint period in optimizer steps")
    run.add_argument("--keep_checkpoints", type=positive_int, default=2, help="how many recent checkpoints to keep")
    run.add_argument("--log_every_steps", type=positive_int, default=1)
    run.add_argument("--report_to", choices=("tensorboard", "none"), default=_default_tracker(),
                     help="tracker for training logs")
    run.add_argument("--overwrite_output_dir", action="store_true",
                     help="start afresh even if output_dir holds checkpoints of another run")
    run.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=True,
                     help="deterministic kernels (default), so that one seed gives the same model twice on one "
                     "machine; --no_deterministic lets torch pick faster kernels that may sum in another order each "
                     "run and takes the recipe's cuDNN flags. Cost of determinism measured on a 2-core CPU at the "
                     "demo's size: none beyond noise (steps/s 1.07x pre-training, 1.02x fine-tuning those of "
                     "--no_deterministic; benchmarks/bench_determinism.py); on GPUs not measured")


def _default_tracker() -> str:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return "none"
    return "tensorboard"


def start_run(args: argparse.Namespace) -> tuple[Accelerator, Path, float]:
    """Check the output folder, build the accelerator, print the recipe; returns the accelerator, the output
    folder and the start time."""
    check_fresh_output_dir(args)
    accelerator = make_accelerator(args)
    accelerator.print(args.resolved.describe())
    return accelerator, Path(args.output_dir), time.perf_counter()


def make_accelerator(args: argparse.Namespace) -> Accelerator:
    """An Accelerator with the settings' precision and seedable sampling (the order depends only on seed and
    epoch); the cuDNN flags of the settings that have them."""
    output_dir = Path(args.output_dir)
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
    )
    if accelerator.device.type == "cpu" and accelerator.mixed_precision == "fp16":
        # accelerate drops fp16 autocast on a CPU without a word; bf16 is the CPU's mixed precision.
        accelerator.print("--mixed_precision fp16 runs in fp32 on a CPU; use bf16 for mixed precision here")
    set_seed(args.seed)
    use_deterministic_kernels(args.deterministic, cudnn_when_off=(getattr(args, "cudnn_benchmark", False),
                                                                  getattr(args, "cudnn_deterministic", False)))
    return accelerator


def use_deterministic_kernels(on: bool, cudnn_when_off: tuple[bool, bool] = (False, False)) -> None:
    """Make (or stop making) torch pick kernels that give the same bits every run on one machine.

    On: ``torch.use_deterministic_algorithms``, cuDNN without autotuning, and a fixed cuBLAS workspace (it only
    takes effect when set before CUDA's first matmul, so runs set it at start). Off: torch's defaults, with
    ``cudnn_when_off`` = (benchmark, deterministic), the recipe's cuDNN flags. A kernel that sums with atomic
    adds orders the sum by thread timing: the backward of PASS's per-stripe [PART] token gather (``index_put_``
    with ``accumulate=True``) is one such kernel on the CPU, and it made two seeded pre-training runs part.

    Example:
        >>> use_deterministic_kernels(True); torch.are_deterministic_algorithms_enabled()
        True
        >>> use_deterministic_kernels(False); torch.are_deterministic_algorithms_enabled()
        False
    """
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = (False, True) if on else cudnn_when_off
    torch.use_deterministic_algorithms(on)


def per_process_batch(args: argparse.Namespace, accelerator: Accelerator) -> int:
    """Images each process takes per micro-batch: ``global_batch_size / (processes x accumulation steps)``."""
    shares = accelerator.num_processes * args.gradient_accumulation_steps
    if args.global_batch_size % shares:
        raise SystemExit(
            f"--global_batch_size {args.global_batch_size} does not split over {accelerator.num_processes} "
            f"process(es) x {args.gradient_accumulation_steps} accumulation step(s)"
        )
    return args.global_batch_size // shares


def optimizer_steps(micro_batches: int, accelerator: Accelerator, accumulation: int) -> int:
    """Optimiser steps one process takes over ``micro_batches`` batches of a prepared loader: accelerate deals
    whole batches to processes in turn (padding the last round) and steps at the end of the loader."""
    per_process = -(-micro_batches // accelerator.num_processes)
    return -(-per_process // accumulation)

class StepMeans:
    """Values averaged over the micro-batches of one optimiser step, then over processes, for the log.

    With gradient accumulation the step's loss is the mean of its micro-batches' losses, as the gradient is.

    Example:
        >>> means = StepMeans()
        >>> means.add(loss=torch.tensor(1.0)); means.add(loss=torch.tensor(3.0))
        >>> means.pop(Accelerator(cpu=True))
        {'loss': 2.0}
    """

    def __init__(self) -> None:
        self.values: dict[str, list[torch.Tensor]] = {}

    def add(self, **values: torch.Tensor) -> None:
        for name, value in values.items():
            self.values.setdefault(name, []).append(value.detach())

    def pop(self, accelerator: Accelerator) -> dict[str, float]:
        means = {name: accelerator.reduce(torch.stack(v).mean(), "mean").item() for name, v in self.values.items()}
        self.values.clear()
        return means


class TrainingState:
    """Counters and logged history; registered with accelerate so checkpoints carry them.

    The throughput of each logged step is kept apart (``throughput``): it measures the machine, not the run, and
    a checkpoint holding it would differ between two runs of one seed. :class:`Checkpointer` writes it beside the
    state as ``throughput.json``; :meth:`logged` gives the history with it, as ``metrics.jsonl`` shows it.

    Example:
        >>> state = TrainingState()
        >>> state.history.append({"step": 1, "loss": 2.0}); state.throughput[1] = 30.5
        >>> state.logged(), sorted(state.state_dict())
        ([{'step': 1, 'loss': 2.0, 'images_per_second': 30.5}], ['history', 'step'])
    """

    def __init__(self) -> None:
        self.step = 0
        self.history: list[dict[str, float]] = []
        self.throughput: dict[int, float] = {}

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "history": self.history}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.history = list(state["history"])

    def logged(self) -> list[dict[str, float]]:
        return [
            {**entry, "images_per_second": self.throughput[entry["step"]]} if entry["step"] in self.throughput
            else entry
            for entry in self.history
        ]


class Checkpointer:
    """Periodic ``save_state`` checkpoints that are complete or absent, never half-written."""

    def __init__(self, accelerator: Accelerator, output_dir: str | Path, keep: int = 2) -> None:
        self.accelerator = accelerator
        self.folder = Path(output_dir) / "checkpoints"
        self.keep = max(keep, 1)
        self.resumed_from: Path | None = None

    def completed(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX))

    def save(self, step: int, throughput: dict[int, float] | None = None) -> Path:
        """``save_state`` into the checkpoint of ``step``, with ``throughput`` (step -> images/s) beside it."""
        final = self.folder / f"{CHECKPOINT_PREFIX}{step:08d}"
        staging = self.folder / f".{final.name}.partial"
        if self.accelerator.is_main_process:
            shutil.rmtree(staging, ignore_errors=True)
            self.folder.mkdir(parents=True, exist_ok=True)
        self.accelerator.wait_for_everyone()
        self.accelerator.save_state(str(staging))
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            if throughput is not None:
                (staging / THROUGHPUT_FILE).write_text(json.dumps(throughput))
            shutil.rmtree(final, ignore_errors=True)
            staging.rename(final)
            for old in self.completed()[: -self.keep]:
                shutil.rmtree(old)
        self.accelerator.wait_for_everyone()
        return final

    def resume(self, spec: str | None) -> Path | None:
        """Load the checkpoint ``spec`` names (``"latest"`` or a folder); None starts afresh."""
        if spec is None:
            return None
        if spec == "latest":
            found = self.completed()
            if not found:
                self.accelerator.print(f"--resume: no checkpoint in {self.folder}; starting from scratch")
                return None
            path = found[-1]
        else:
            path = Path(spec)
            if not path.is_dir():
                raise FileNotFoundError(f"--resume {spec}: no such checkpoint folder")
        self.accelerator.load_state(str(path))
        self.resumed_from = path
        return path

    def resumed_throughput(self) -> dict[int, float]:
        """The throughput saved with the checkpoint the run resumed from (none before a resume)."""
        path = self.resumed_from
        if path is None or not (path / THROUGHPUT_FILE).is_file():
            return {}
        return {int(step): value for step, value in json.loads((path / THROUGHPUT_FILE).read_text()).items()}


def resume_and_track(
    accelerator: Accelerator, args: argparse.Namespace, project: str
) -> tuple[Checkpointer, Path | None]:
    """The run's :class:`Checkpointer` after loading what ``--resume`` names (None: a fresh start), with the
    trackers of ``--report_to`` started on the main process under ``project``.

    Example (after ``accelerator.register_for_checkpointing``, so the loaded state reaches every object)::

        checkpointer, resumed = runtime.resume_and_track(accelerator, args, "pass_finetune")
    """
    checkpointer = Checkpointer(accelerator, args.output_dir, keep=args.keep_checkpoints)
    resumed = checkpointer.resume(args.resume)
    if accelerator.is_main_process and args.report_to != "none":
        accelerator.init_trackers(project, config={k: str(v) for k, v in vars(args).items()})
    return checkpointer, resumed


class RunMonitor:
    """Per-step bookkeeping of a training loop: progress bar, logged history and trackers, periodic checkpoints.

    Example (inside a loop, after an optimizer step)::

        monitor.step_done({"loss": loss.item(), "lr": lr}, images=global_batch)
    """

    # The run in progress in this process, for the one line that Ctrl-C prints (:func:`run_script`).
    active: ClassVar[RunMonitor | None] = None

    def __init__(
        self,
        accelerator: Accelerator,
        args: argparse.Namespace,
        state: TrainingState,
        checkpointer: Checkpointer,
        total_steps: int,
        logged_keys: Sequence[str],
        description: str,
    ) -> None:
        self.accelerator, self.args, self.state, self.checkpointer = accelerator, args, state, checkpointer
        self.total_steps = total_steps
        self.logged_keys = tuple(logged_keys)
        self.output_dir = Path(args.output_dir)
        self.progress = tqdm(
            total=total_steps,
            initial=state.step,
            desc=description,
            disable=not accelerator.is_local_main_process,
            dynamic_ncols=True,
        )
        self._tick = time.perf_counter()
        state.throughput.update(checkpointer.resumed_throughput())
        RunMonitor.active = self

    def batches(self, loader: Any, epoch_steps: Sequence[int], *epoch_aware: Any) -> Iterator[tuple[int, Any]]:
        """Yield ``(epoch, batch)`` from where the run stands until it is finished.

        ``epoch_steps`` holds the optimiser steps of every epoch (they differ when the sampler's epochs do). Each
        epoch starts with ``set_epoch`` on ``epoch_aware`` (datasets, samplers, loaders), and a resumed run skips
        the batches its epoch already consumed, so the data order is that of an uninterrupted run.
        """
        while not self.finished:
            epoch, done_in_epoch = epoch_at(self.state.step, epoch_steps)
            for item in epoch_aware:
                item.set_epoch(epoch)
            skip = done_in_epoch * self.args.gradient_accumulation_steps
            for batch in self.accelerator.skip_first_batches(loader, skip):
                yield epoch, batch
                if self.finished:
                    return

    def step_done(self, values: dict[str, float], images: int) -> None:
        """Count one optimizer step; log ``values`` (+ throughput) and checkpoint when due. Call on every process."""
        self.state.step += 1
        now = time.perf_counter()
        throughput = images / max(now - self._tick, 1e-9)
        self._tick = now
        step = self.state.step
        if step % self.args.log_every_steps == 0 or step == self.total_steps:
            self.state.history.append({"step": step, **values})
            self.state.throughput[step] = throughput
            self.accelerator.log({**values, "images_per_second": throughput}, step=step)
            shown = {k: f"{v:.4g}" for k, v in values.items() if k in ("loss", "lr")}
            self.progress.set_postfix(**shown, img_s=f"{throughput:.1f}")
        self.progress.update(1)
        if step % self.args.save_every_steps == 0 or step == self.total_steps:
            self.save()

    def save(self) -> None:
        self.checkpointer.save(self.state.step, self.state.throughput)
        if self.accelerator.is_main_process:
            write_history(self.state.logged(), self.output_dir, self.logged_keys)

    @property
    def finished(self) -> bool:
        return self.state.step >= self.total_steps

    def close(self) -> None:
        self.progress.close()
        if self.accelerator.is_main_process:
            write_history(self.state.logged(), self.output_dir, self.logged_keys)
        RunMonitor.active = None

    def interrupted(self) -> str:
        """The line Ctrl-C prints: where the run stopped and how to continue it."""
        self.progress.close()
        found = self.checkpointer.completed()
        last = f"the last checkpoint is {found[-1]}" if found else "no checkpoint was written yet"
        return f"interrupted at step {self.state.step}; {last}; continue with --resume"


def run_script(main: Callable[[], Any]) -> None:
    """Run a training script's ``main``: Ctrl-C ends it with one line saying where to continue, exit code 130."""
    try:
        main()
    except KeyboardInterrupt:
        monitor = RunMonitor.active
        if monitor is None:
            message = "interrupted before training started; nothing to continue"
        elif monitor.accelerator.is_main_process:
            message = monitor.interrupted()
        else:
            raise SystemExit(130) from None
        print(message, file=sys.stderr, flush=True)
        raise SystemExit(130) from None


def epoch_at(step: int, epoch_steps: Sequence[int]) -> tuple[int, int]:
    """The epoch optimiser step ``step`` (0-based) falls in, and the steps of that epoch before it.

    Example:
        >>> epoch_at(5, [3, 4, 4]), epoch_at(3, [3, 4, 4])
        ((1, 2), (1, 0))
    """
    done = 0
    for epoch, steps in enumerate(epoch_steps):
        if step < done + steps:
            return epoch, step - done
        done += steps
    raise ValueError(f"step {step} is past the {done} steps of the run")


def check_fresh_output_dir(args: argparse.Namespace) -> None:
    """Refuse to mix a new run into a folder holding another run's checkpoints (unless resuming / overwriting)."""
    checkpoints = Path(args.output_dir) / "checkpoints"
    if args.resume is None and not args.overwrite_output_dir and checkpoints.is_dir() and any(checkpoints.iterdir()):
        raise SystemExit(
            f"{args.output_dir} already holds checkpoints; pass --resume to continue that run or "
            "--overwrite_output_dir to start a new one there"
        )


def write_history(history: Sequence[dict[str, float]], output_dir: str | Path, keys: Sequence[str]) -> None:
    """``metrics.jsonl`` and ``loss_curves.png`` from the logged history (main process only)."""
    output_dir = Path(output_dir)
    write_text_atomic(output_dir / "metrics.jsonl", "".join(json.dumps(entry) + "\n" for entry in history))
    if history:
        plot_history(history, output_dir / "loss_curves.png", keys)


# Series with at most this many points are drawn as labelled points (evaluations), the others as lines.
FEW_POINTS = 12
PANEL_COLUMNS = 3


def plot_history(history: Sequence[dict[str, float]], path: str | Path, keys: Sequence[str]) -> None:
    """One panel per logged series, three to a row (at 100 dpi at most 1200 px wide); a series with few points
    (evaluations) is drawn as points labelled with their values.

    Example:
        >>> import tempfile
        >>> history = [{"step": s, "loss": 1 / s, **({"mAP": 0.1 * s} if s % 5 == 0 else {})} for s in range(1, 11)]
        >>> path = Path(tempfile.mkdtemp()) / "curves.png"
        >>> plot_history(history, path, ["loss", "mAP"])
        >>> from PIL import Image; Image.open(path).size
        (800, 300)
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [key for key in keys if any(key in entry for entry in history)]
    columns = min(PANEL_COLUMNS, max(len(keys), 1))
    rows = -(-len(keys) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3 * rows), squeeze=False)
    for axis in axes.flat[len(keys):]:
        axis.set_visible(False)
    for axis, key in zip(axes.flat, keys, strict=False):
        points = [(entry["step"], entry[key]) for entry in history if key in entry and math.isfinite(entry[key])]
        steps, values = zip(*points, strict=True) if points else ((), ())
        if len(points) > FEW_POINTS:
            axis.plot(steps, values, linewidth=1.2)
        elif points:
            axis.plot(steps, values, marker="o", linewidth=0.8, linestyle="--")
            for step, value in points:
                axis.annotate(f"{value:.3g}", (step, value), textcoords="offset points", xytext=(0, 6), ha="center",
                              fontsize=8)
            axis.margins(x=0.15, y=0.25)
        axis.set_title(key)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def seconds_to_text(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def replicas_in_sync(accelerator: Accelerator, tensors: Sequence[torch.Tensor]) -> bool:
    """True when every process holds the same values (compared through float64 checksums)."""
    values = [t.detach().double() for t in tensors]
    checksum = torch.stack([v.sum() for v in values] + [v.square().sum() for v in values])
    gathered = accelerator.gather(checksum.to(accelerator.device)[None]).cpu()
    return bool((gathered == gathered[0]).all())
