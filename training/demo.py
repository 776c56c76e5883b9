"""The whole PASS pipeline on the built-in SynthPerson data, with two baselines on the same budget (``make demo``).

    python -m training.demo                        # outputs/demo
    python -m training.demo --seed 1 --output_dir outputs/demo-seed1   # the same with another seed
    python -m training.demo --force                # run every stage again
    python -m training.demo --toy                  # outputs/demo-toy: a few steps per stage, to check the plumbing
    python -m training.demo --seed_table outputs/demo outputs/demo-seed1 outputs/demo-seed2   # mean and spread

Stages (each a training script run in its own process with the ``cpu_demo`` recipe): PASS pre-training, DINO
pre-training without [PART] tokens (the ablation), fine-tuning from each of the two and from random init with
the same recipe. Then the part-attention picture of the pre-trained backbones, a reload check of the fine-tuned
PASS folder with transformers and timm, and the result table. Each stage records the command line that made it
and the settings it resolved to (``stage.json``): a finished stage made with the same ones is skipped, an
interrupted one resumes from its last checkpoint, and one made with others (a toy run, another seed, a recipe
changed in the code) is run again, saying what differed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from datasets import Dataset
from PIL import Image

if __package__ in (None, ""):  # run as a script: make the repository's `training` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pass_hub.atomic import write_json_atomic, write_text_atomic
from pass_hub.flags import FlagParser
from training import finetune, pretrain
from training.engine import reid

SCRIPTS = Path(__file__).resolve().parent
PRESET = "pass_vit_tiny"
# Every stage runs the scripts' cpu_demo recipe (training/engine/recipes.py), sized so that the whole demo stays well
# under 30 minutes on 2 cores.
RECIPE = ["--recipe", "cpu_demo"]
TOY_DATA = "synthetic:train_ids=8,test_ids=4,cameras=3,distractors=4,unlabelled=48,image_size=128x64"
TOY_ARGS = ["--max_steps", "2", "--global_batch_size", "16", "--num_workers", "0"]
ATTENTION_IMAGES = 6


@dataclass
class Stage:
    name: str
    script: Path
    args: list[str]
    title: str
    label: str = ""  # the row name in the result table (fine-tuning stages)
    output_dir: Path = field(init=False)

    @property
    def command_args(self) -> list[str]:
        return [*self.args, "--output_dir", str(self.output_dir), "--report_to", "none"]

    def done(self) -> bool:
        return (self.output_dir / "results.json").is_file()

    def recorded(self) -> dict | None:
        """The arguments and resolved settings that made what the stage folder holds (None: nothing recorded)."""
        record = self.output_dir / "stage.json"
        return json.loads(record.read_text()) if record.is_file() else None

    def settings(self) -> dict:
        """The settings the stage's command line resolves to now (the recipe in the code may have changed)."""
        script = {"pretrain.py": pretrain, "finetune.py": finetune}[self.script.name]
        return script.parse_args(self.command_args).resolved.to_json()["settings"]

    def record(self, settings: dict) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.output_dir / "stage.json", {"args": self.command_args, "settings": settings})

    def results(self) -> dict:
        return json.loads((self.output_dir / "results.json").read_text())


def build_stages(output_dir: Path, toy: bool, seed: int = 0) -> list[Stage]:
    data = TOY_DATA if toy else "synthetic"
    extra = [*(TOY_ARGS if toy else []), "--seed", str(seed)]
    pretrain_args = [*RECIPE, "--data", data, *extra]
    stages = [
        Stage("pretrain-pass", SCRIPTS / "pretrain.py", pretrain_args, "PASS pre-training"),
        Stage("pretrain-dino", SCRIPTS / "pretrain.py", [*pretrain_args, "--no_part_tokens"],
              "DINO pre-training without [PART] tokens"),
    ]
    inits = {
        "pass": (output_dir / "pretrain-pass" / pretrain.MODEL_FOLDER, "PASS pre-training"),
        "dino": (output_dir / "pretrain-dino" / pretrain.MODEL_FOLDER, "DINO pre-training, no [PART] tokens"),
        "random": (PRESET, "random init"),
    }
    for name, (init, label) in inits.items():
        stages.append(Stage(
            f"finetune-{name}", SCRIPTS / "finetune.py",
            [*RECIPE, "--init", str(init), "--dataset", data, "--model_name", f"pass-vit-tiny-synth-{name}",
             *extra],
            f"fine-tuning from {label}", label,
        ))
    for stage in stages:
        stage.output_dir = output_dir / stage.name
    return stages


def _flag_values(args: list[str]) -> dict[str, str]:
    values: dict[str, list[str]] = {}
    flag = ""
    for arg in args:
        if arg.startswith("--"):
            flag = arg
            values[flag] = []
        else:
            values.setdefault(flag, []).append(arg)
    return {flag: " ".join(value) for flag, value in values.items()}


def difference(before: list[str], now: list[str]) -> str:
    """What differs between two command lines, in words: ``--seed 0 -> 1``.

    Example:
        >>> difference(["--seed", "0", "--toy"], ["--seed", "1"])
        '--seed 0 -> 1, --toy (set) -> (unset)'
    """
    old, new = ({flag: value or "(set)" for flag, value in _flag_values(args).items()} for args in (before, now))
    return settings_difference(old, new, missing="(unset)")


def settings_difference(before: dict, now: dict, missing: str | None = None) -> str:
    """Entries that differ, in words: ``epochs 10 -> 13`` (an absent one shows as ``missing``).

    Example:
        >>> settings_difference({"epochs": 10, "lr": 0.001}, {"epochs": 13, "lr": 0.001})
        'epochs 10 -> 13'
    """
    changed = [key for key in dict.fromkeys([*before, *now]) if before.get(key, missing) != now.get(key, missing)]
    return ", ".join(f"{key} {before.get(key, missing)} -> {now.get(key, missing)}" for key in changed)


def run_stage(stage: Stage, index: int, total: int, force: bool) -> None:
    recorded = stage.recorded()
    settings = stage.settings()
    if recorded is None or "settings" not in recorded:
        change = "no settings recorded"
    elif recorded["args"] != stage.command_args:
        change = difference(recorded["args"], stage.command_args)
    elif recorded["settings"] != settings:
        change = "the recipe changed: " + settings_difference(recorded["settings"], settings)
    else:
        change = ""
    same = not change
    if stage.done() and same and not force:
        print(f"[{index}/{total}] {stage.title}: done before, skipped ({stage.output_dir})", flush=True)
        return
    if stage.output_dir.exists() and (force or not same):
        if not force:
            print(f"[{index}/{total}] {stage.output_dir} holds another run ({change}): running the stage again",
                  flush=True)
        shutil.rmtree(stage.output_dir)
    print(f"[{index}/{total}] {stage.title} -> {stage.output_dir}", flush=True)
    stage.record(settings)
    command = [sys.executable, str(stage.script), *stage.command_args, "--resume"]
    started = time.perf_counter()
    completed = subprocess.run(command, check=False)
    if completed.returncode != 0:
        raise SystemExit(
            f"stage {stage.name} failed (exit code {completed.returncode}); its checkpoints stay in "
            f"{stage.output_dir}, run the demo again to resume it. Command: {' '.join(command)}"
        )
    print(f"[{index}/{total}] {stage.title}: {time.perf_counter() - started:.0f} s", flush=True)


def attention_summary(stages: dict[str, Stage], output_dir: Path, gallery: Dataset) -> dict[str, list[float]]:
    """Part-attention pictures of both pre-trained backbones on a few test images, and their mean centre rows."""
    from pass_hub.pictures.part_attention import draw_part_attention, part_attention_maps, token_names, vertical_centres

    step = max(1, len(gallery) // ATTENTION_IMAGES)
    images = [gallery[i]["image"] for i in range(0, step * ATTENTION_IMAGES, step)[:len(gallery)]]
    centres = {}
    for name in ("pass", "dino"):
        stage = stages[f"pretrain-{name}"]
        maps = part_attention_maps(stage.output_dir / pretrain.MODEL_FOLDER, images)
        draw_part_attention(
            images, maps, output_dir / f"part_attention_{name}.png",
            title=f"last-block attention after {stage.title} (centre: mean row, 0 top, 1 bottom)",
        )
        centres[name] = dict(zip(token_names(maps.shape[1] - 1), vertical_centres(maps).mean(0).tolist(), strict=True))
    return centres


def reload_check(folder: Path, image: Image.Image) -> float:
    """Embed one test image through transformers and through timm from the published folder; the largest gap."""
    import timm
    from timm.data import create_transform, resolve_data_config
    from transformers import AutoImageProcessor, AutoModel

    import pass_hub  # noqa: F401  (registers PassViT with transformers and timm)

    image = image.convert("RGB")
    model = AutoModel.from_pretrained(folder).eval()
    pixels = AutoImageProcessor.from_pretrained(folder)(image, return_tensors="pt")["pixel_values"]
    timm_model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    timm_pixels = create_transform(**resolve_data_config(model=timm_model))(image).unsqueeze(0)
    with torch.no_grad():
        gap = (model(pixels).pooler_output - timm_model(timm_pixels)).abs().max().item()
    if gap > 1e-4:
        raise SystemExit(f"{folder}: transformers and timm embeddings differ by {gap:.2e}")
    return gap


def result_table(stages: dict[str, Stage]) -> tuple[str, dict[str, dict[str, float]]]:
    rows = {stage.label: stage.results() for stage in stages.values() if stage.label}
    scores = {name: results["published"]["metrics"] for name, results in rows.items()}
    lines = ["| initialisation | mAP | Rank-1 | mINP | steps | wall time |", "|---|---:|---:|---:|---:|---:|"]
    for name, results in rows.items():
        final = results["published"]["metrics"]
        lines.append(
            f"| {name} | {100 * final['mAP']:.1f} | {100 * final['rank1']:.1f} | {100 * final['mINP']:.1f} "
            f"| {results['steps']} | {results['wall_time_seconds'] / 60:.1f} min |"
        )
    return "\n".join(lines), scores


def seed_table(summaries: list[dict]) -> str:
    """Each start's fine-tuned mAP, Rank-1 and mINP at every seed, with their mean and spread (sample standard
    deviation), from the ``results.json`` of finished demo runs.

    Example:
        >>> runs = [{"seed": s, "threads": 2, "fine-tuned": {"random init": {"mAP": m, "rank1": m, "mINP": m}}}
        ...         for s, m in ((0, 0.1), (1, 0.12), (2, 0.14))]
        >>> seed_table(runs).splitlines()[-1].split(" | ")[:3]  # the start, its mAP at each seed, mean +- sd
        ['| random init', '10.0 / 12.0 / 14.0', '12.0 +- 2.0']
    """
    seeds = " / ".join(str(summary["seed"]) for summary in summaries)
    metrics = ("mAP", "rank1", "mINP")
    header = " | ".join(f"{label} seeds {seeds} | mean +- sd" for label in ("mAP", "Rank-1", "mINP"))
    lines = [f"| initialisation | {header} |", "|---" + "|---:" * 2 * len(metrics) + "|"]
    for start in summaries[0]["fine-tuned"]:
        cells = []
        for metric in metrics:
            values = [100 * summary["fine-tuned"][start][metric] for summary in summaries]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells += [" / ".join(f"{value:.1f}" for value in values), f"{statistics.mean(values):.1f} +- {spread:.1f}"]
        lines.append(f"| {start} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = FlagParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", type=Path, default=None,
                        help="default: outputs/demo (outputs/demo-toy with --toy)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every stage")
    parser.add_argument("--force", action="store_true", help="run every stage again")
    parser.add_argument("--toy", action="store_true", help="tiny data and 2 steps per stage (for tests)")
    parser.add_argument("--seed_table", nargs="+", type=Path, metavar="DIR", default=None,
                        help="run nothing: print each start's scores over the finished demo runs in these folders "
                        "(one per seed), with mean and spread")
    args = parser.parse_args(argv)
    args.output_dir = args.output_dir or Path("outputs/demo-toy" if args.toy else "outputs/demo")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.seed_table:
        missing = [str(folder) for folder in args.seed_table if not (folder / "results.json").is_file()]
        if missing:
            raise SystemExit(f"--seed_table: no finished demo run (results.json) in {', '.join(missing)}")
        summaries = [json.loads((folder / "results.json").read_text()) for folder in args.seed_table]
        print(seed_table(summaries))
        return {"seed_table": summaries}
    started = time.perf_counter()
    stages = build_stages(args.output_dir, args.toy, args.seed)
    for index, stage in enumerate(stages, 1):
        run_stage(stage, index, len(stages), args.force)
    by_name = {stage.name: stage for stage in stages}
    from pass_hub.data import load_dataset_spec

    print("part-attention pictures and reload check ...", flush=True)
    test_data = load_dataset_spec(TOY_DATA if args.toy else "synthetic")
    centres = attention_summary(by_name, args.output_dir, test_data["gallery"])
    reid_folder = by_name["finetune-pass"].output_dir / reid.MODEL_FOLDER
    gap = reload_check(reid_folder, test_data["query"][0]["image"])
    table, scores = result_table(by_name)
    frozen = {name: by_name[f"pretrain-{name}"].results().get("frozen_eval") for name in ("pass", "dino")}
    summary = {
        "seed": args.seed,
        "toy": args.toy,
        "threads": torch.get_num_threads(),
        "fine-tuned": scores,
        "frozen_features": frozen,
        "attention_centres": centres,
        "transformers_timm_max_gap": gap,
        "stage_seconds": {name: stage.results()["wall_time_seconds"] for name, stage in by_name.items()},
        "wall_time_seconds": time.perf_counter() - started,
    }
    write_json_atomic(args.output_dir / "results.json", summary)
    centre_lines = "\n".join(
        f"- {name.upper()}: " + ", ".join(f"{token} {value:.2f}" for token, value in values.items())
        for name, values in centres.items()
    )
    report = (
        f"# PASS demo on SynthPerson ({PRESET}{', toy' if args.toy else ''}, seed {args.seed})\n\n"
        "Fine-tuned with the same recipe (final weights, no re-ranking):"
        f"\n\n{table}\n\nMean attention centre row of each token after pre-training (0 top, 1 bottom):\n\n"
        f"{centre_lines}\n\n`{reid_folder}` loads with transformers and timm; their embeddings differ by at most "
        f"{gap:.1e}.\n"
    )
    write_text_atomic(args.output_dir / "results.md", report)
    print("\n" + report)
    print(f"everything is in {args.output_dir} (this run: {summary['wall_time_seconds'] / 60:.1f} min)")
    return summary


if __name__ == "__main__":
    main()
