"""What the ReID training scripts share (``finetune.py``, ``usl.py``): ``--init`` and the ``PassViTForReID`` model on
it, evaluation on query / gallery, the weights to publish, and the published hub folder with its card.

Example:
    >>> publishing = PublishedWeights(Path("outputs/finetune/published"), "best_test_evaluation")
    >>> publishing.describe()[:60]
    'The published weights are the best of 0 evaluations on the t'
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import broadcast

import pass_hub
from pass_hub.atomic import write_json_atomic
from pass_hub.evaluation.calibration import Calibration, draw_calibration
from pass_hub.evaluation.protocol import evaluate_model, save_rank_lists
from pass_hub.flags import positive_int
from pass_hub.models.model_card import deployment_section, reid_card_data, render_model_card, results_table
from training.engine import runtime
from training.engine.data import dataset_spec
from training.engine.reid_start import ReidStart, load_finetuning_start

MODEL_FOLDER = "pass-vit-reid"


def add_init_arguments(group: argparse._ArgumentGroup, help: str) -> None:
    """``--init`` (what the run starts from, ``help`` says which forms) and ``--num_heads`` (its attention heads,
    for a checkpoint whose width 64 does not divide)."""
    group.add_argument("--init", default=None, help=help)
    group.add_argument("--num_heads", type=positive_int, default=None,
                       help="attention heads of the --init checkpoint, where its width / 64 is not the number")


def load_start(
    args: argparse.Namespace,
    num_labels: int,
    accelerator,
    read: Callable[..., ReidStart] = load_finetuning_start,
) -> tuple[ReidStart, pass_hub.PassViTForReID]:
    """What ``--init`` names, read by ``read`` (``load_finetuning_start`` or ``load_usl_start``), and the run's
    model on it (:class:`training.engine.reid_start.ReidStart`). The source's
    architecture, and for a ReID model with the run's ``num_labels`` identities its head layout, become the run's
    settings (reported as overridden by ``--init``); a source that is not the recipe's backbone, a missing file or
    weights that do not fit end the run in one line naming ``--init``."""
    needs = args.resolved.recipe.needs
    try:
        start = read(args.init, num_heads=args.num_heads)
        start.check_preset(args.settings, args.recipe)
        settings = start.settings_for(args.settings, num_labels)
        args.resolved = args.resolved.with_settings(settings, "--init")
        args.settings = settings
        for name, value in vars(settings).items():
            setattr(args, name, value)
        model = start.model(settings, num_labels)
    except FileNotFoundError:
        needed = f"; this recipe needs {needs}" if needs else ""
        raise SystemExit(f"--init {args.init}: no such file{needed}") from None
    except ValueError as err:
        named = str(err).startswith(str(args.init))  # the message names the path already
        raise SystemExit(f"--init {err}" if named else f"--init {args.init}: {err}") from None
    accelerator.print(start.kept(settings, num_labels))
    return start, model


def load_data_spec(args: argparse.Namespace):
    """The ``DatasetDict`` of ``--dataset`` / ``--data_dir`` (``args.dataset`` becomes the full spec)."""
    from pass_hub.data import load_dataset_spec

    args.dataset = dataset_spec(args.dataset, args.data_dir, args.resolved.recipe.needs)
    try:
        return load_dataset_spec(args.dataset)
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"--dataset {args.dataset}: {err}") from None


def sync_buffers(accelerator, model: torch.nn.Module) -> None:
    """Give every process the main process's buffers (BatchNorm running statistics).

    DDP copies them from the main process at each forward, so after the last step they differ by one batch's
    update; features computed on several processes would otherwise mix slightly different models.
    """
    if accelerator.num_processes > 1:
        for buffer in accelerator.unwrap_model(model).buffers():
            buffer.copy_(broadcast(buffer.clone()))


def add_evaluation_arguments(parser: argparse.ArgumentParser) -> None:
    """The evaluation and publishing flags :func:`evaluate` and :func:`finish_run` read besides the settings
    (``eval_every``, ``flip_test``, ``publish``)."""
    evaluation = parser.add_argument_group("evaluation and publishing")
    evaluation.add_argument("--eval_batch_size", type=positive_int, default=64)
    evaluation.add_argument("--model_name", default=None, help="name in the model card (default: derived)")
    evaluation.add_argument("--push_to_hub", metavar="REPO", default=None, help="upload the published folder")
    evaluation.add_argument("--hub_private", action="store_true")


def evaluate(model, data, args: argparse.Namespace, accelerator, **options) -> dict[str, Any]:
    """``evaluate_model`` on ``data["query"]`` / ``data["gallery"]`` with the script's evaluation flags."""
    sync_buffers(accelerator, model)
    return evaluate_model(
        accelerator.unwrap_model(model), data["query"], data["gallery"], batch_size=args.eval_batch_size,
        flip=args.flip_test, accelerator=accelerator, num_workers=args.num_workers, **options,
    )


def scalar_metrics(results: dict[str, Any]) -> dict[str, float]:
    keys = ("mAP", "mINP", "rank1", "rank5", "rank10", "num_valid_queries")
    return {key: float(results[key]) for key in keys}


class PublishedWeights:
    """The weights a ReID run publishes and their scores: the final ones (``selection="final"``), or those of the
    best test-split evaluation by mAP (``"best_test_evaluation"``, what the original USL / UDA scripts report).

    Every evaluation goes through :meth:`consider`; the main process keeps the chosen weights as a hub folder
    ``folder``. ``details`` (per-query results for rank-list pictures) lives in memory only: after a resume it is
    filled by the next evaluation that is chosen.
    """

    def __init__(self, folder: Path, selection: str) -> None:
        if selection not in ("final", "best_test_evaluation"):
            raise ValueError(f"selection={selection!r}; expected 'final' or 'best_test_evaluation'")
        self.folder, self.selection = folder, selection
        self.metrics: dict[str, float] = {}
        self.step = 0
        self.evaluations = 0
        self.details: dict[str, Any] | None = None

    def consider(
        self, results: dict[str, Any], step: int, model, accelerator, *, final: bool = False
    ) -> dict[str, float]:
        """Count an evaluation (``final``: the one at the end of the run); keep its weights if they are chosen.
        Returns the values to log."""
        metrics = scalar_metrics(results)
        self.evaluations += 1
        better = not self.metrics or metrics["mAP"] > self.metrics["mAP"]
        if final if self.selection == "final" else better:
            self.metrics, self.step, self.details = metrics, step, results
            if accelerator.is_main_process:
                pass_hub.save_hub_folder(model, self.folder, overwrite=True)
        accelerator.wait_for_everyone()
        return {"mAP": metrics["mAP"], "rank1": metrics["rank1"]}

    def describe(self) -> str:
        """Which weights were published, in words (for the model card)."""
        if self.selection == "final":
            return f"The published weights are the final ones (step {self.step})."
        return (
            f"The published weights are the best of {self.evaluations} evaluations on the test split (step "
            f"{self.step}, by mAP), as the original USL / UDA scripts report their results; choosing weights by "
            "their test-split score leaks the test set into model selection, so the scores below are optimistic."
        )

    def state_dict(self) -> dict[str, Any]:
        return {"metrics": self.metrics, "step": self.step, "evaluations": self.evaluations}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.metrics, self.step = dict(state["metrics"]), int(state["step"])
        self.evaluations = int(state["evaluations"])


def dataset_name(spec: str) -> str:
    """The short name of a dataset spec for cards: ``market1501`` for ``market1501:/data/...``."""
    return spec.split(":")[0]


def publish(
    weights: PublishedWeights,
    output_dir: Path,
    *,
    data,
    dataset: str,
    ranked: dict[str, Any],
    name: str,
    summary: str,
    training: str,
    base_model: str | None = None,
    extra_tags: tuple[str, ...] = (),
    eval_batch_size: int = 64,
    device: str | torch.device = "cpu",
) -> tuple[Path, Calibration]:
    """The chosen weights as the published hub folder ``output_dir / MODEL_FOLDER``, with a model card, a
    rank-list picture of ``ranked`` (per-query results on ``data``'s query / gallery) and the score thresholds of
    the deployment feature (:func:`pass_hub.calibration.calibrate`) with their picture. Returns the folder and
    the calibration.

    Args:
        weights: The run's :class:`PublishedWeights` (its folder, scores and how they were chosen).
        output_dir: Run directory.
        data: The evaluation data (``query`` / ``gallery`` splits).
        dataset: Spec of the evaluation data (its short name goes into the card's metadata).
        ranked: ``evaluate_model(..., return_per_query=True)`` output to draw rank lists from (with its
            ``calibration`` when the final weights are published).
        name: Model name in the card.
        summary: The card's first paragraph.
        training: The card's training section (:meth:`PublishedWeights.describe` is appended).
        base_model: Hub id the run started from, if any.
        extra_tags: More card tags (``unsupervised``, ``domain-adaptation``).
        eval_batch_size / device: Batch size and device of the calibration pass, when one is needed.
    """
    model = pass_hub.PassViTForReID.from_pretrained(weights.folder)
    short_name = dataset_name(dataset)
    version = data["query"].info.config_name if short_name.startswith("msmt17") else None
    picture, calibration_picture = "rank_list.png", "calibration.png"
    calibration = ranked.get("calibration") if weights.selection == "final" else None
    if calibration is None:  # the chosen weights are not the final ones: measure theirs
        calibration = evaluate_model(model.to(device), data["query"], data["gallery"], batch_size=eval_batch_size,
                                     calibration=True, progress=False)["calibration"]
        model.cpu()
    chosen = "final weights" if weights.selection == "final" else f"best of {weights.evaluations} test evaluations"
    card = render_model_card(
        model.config,
        kind="reid",
        title=name,
        summary=summary,
        card_data=reid_card_data(
            model_name=name, dataset_name=short_name, dataset_id=short_name, results=weights.metrics,
            base_model=base_model, dataset_config=version, extra_tags=extra_tags,
        ),
        training=f"{training} {weights.describe()}",
        results_table=results_table({f"{name} ({short_name}, no re-ranking, {chosen})": weights.metrics}),
        pictures=f"Ranked gallery lists of a few queries (green: same identity):\n\n![rank lists]({picture})",
        deployment=deployment_section(calibration, short_name, calibration_picture),
    )
    save_rank_lists(ranked, data["query"], data["gallery"], output_dir / picture)
    draw_calibration(calibration, output_dir / calibration_picture, title=f"{name} on {short_name}")
    folder = pass_hub.save_hub_folder(
        model, output_dir / MODEL_FOLDER, model_card=card,
        extra_files=[output_dir / picture, output_dir / calibration_picture], overwrite=True,
    )
    return folder, calibration


def finish_run(
    args: argparse.Namespace,
    accelerator,
    model,
    data,
    weights: PublishedWeights,
    results: dict[str, Any],
    *,
    started: float,
    base_model: str | None,
    describe: Callable[[dict[str, Any]], dict[str, Any]],
    checked: Sequence[torch.Tensor] = (),
) -> dict[str, Any]:
    """The end of a ReID run: final evaluation, the published weights, ``results.json``, the folder, the upload.

    Args:
        args: The script's flags (``output_dir``, ``dataset``, evaluation and hub flags, ``resolved``).
        accelerator: The run's accelerator.
        model: The trained (prepared) model.
        data: Evaluation data (``query`` / ``gallery``).
        weights: The run's :class:`PublishedWeights`.
        results: What the script reports; completed here with metrics, the recipe, process count and wall time.
        started: ``time.perf_counter()`` at the start of the run.
        base_model: Hub id the run started from (card metadata).
        describe: ``results`` -> :func:`publish`'s ``name``, ``summary``, ``training`` (and ``extra_tags``).
        checked: Tensors besides the parameters that must be equal on every process (``replicas_in_sync``).
    """
    # Calibrated here only when these are the weights published; otherwise publish() calibrates the chosen ones.
    final = evaluate(model, data, args, accelerator, return_per_query=True,
                     calibration=weights.selection == "final")
    unwrapped = accelerator.unwrap_model(model)
    weights.consider(final, results["steps"], unwrapped, accelerator, final=True)
    results.update(
        recipe=args.resolved.recipe.name,
        overridden=args.resolved.overridden,
        final=scalar_metrics(final),
        published={"selection": weights.selection, "step": weights.step, "evaluations": weights.evaluations,
                   "metrics": weights.metrics},
        num_processes=accelerator.num_processes,
        replicas_in_sync=runtime.replicas_in_sync(accelerator, [*unwrapped.parameters(), *checked]),
        wall_time_seconds=time.perf_counter() - started,
    )
    if accelerator.is_main_process:
        output_dir = Path(args.output_dir)
        folder, calibration = publish(
            weights, output_dir, data=data, dataset=args.dataset, ranked=weights.details or final,
            base_model=base_model, eval_batch_size=args.eval_batch_size, device=accelerator.device,
            **describe(results),
        )
        results["model"] = str(folder)
        results["calibration"] = calibration.to_dict()
        write_json_atomic(output_dir / "results.json", results)
        metrics = weights.metrics
        accelerator.print(
            f"mAP {100 * metrics['mAP']:.1f}, Rank-1 {100 * metrics['rank1']:.1f}, mINP {100 * metrics['mINP']:.1f} "
            f"({'final' if weights.selection == 'final' else 'best test evaluation'}, step {weights.step}); "
            f"{runtime.seconds_to_text(results['wall_time_seconds'])}; model in {folder}"
        )
        if args.push_to_hub:
            from training.push import push_folder

            accelerator.print(f"uploaded: {push_folder(folder, args.push_to_hub, private=args.hub_private)}")
    accelerator.end_training()
    return results
