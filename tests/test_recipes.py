"""The recipes against docs/recipes.md: every setting of every released original script, as
``--print_config`` prints it, and the command-line rules (overrides are reported, bad values refused).

The expected values below are written out from docs/recipes.md (sections 1-3 and the table of recipe names), not
read from training/engine/recipes.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from accelerate import Accelerator

from training import finetune, pretrain, usl
from training.engine import reid
from training.engine.recipes import RECIPES

PRETRAIN_VIT_S = {
    "data": "image_folder", "image_size": [256, 128], "local_image_size": [128, 64], "global_crop_scale": [0.4, 1.0],
    "local_crop_scale": [0.1, 0.8], "local_crops_per_stripe": 3, "colour_jitter": 1.0, "grayscale": 0.2,
    "preset": "pass_vit_small", "part_tokens": True, "out_dim": 65536, "head_hidden_dim": 2048,
    "head_bottleneck_dim": 256, "drop_path_rate": 0.1, "pos_embed_resampling": "original", "token_init": "original",
    "epochs": 100, "global_batch_size": 1024, "lr": 5e-4, "min_lr": 1e-6, "warmup_epochs": 10, "weight_decay": 0.04,
    "weight_decay_end": 0.4, "momentum_teacher": 0.996, "clip_grad": 3.0, "freeze_last_layer": 1,
    "student_temp": 0.1, "teacher_temp": 0.04, "warmup_teacher_temp": 0.04, "warmup_teacher_temp_epochs": 0,
    "center_momentum": 0.9, "centering": "ema", "mixed_precision": "fp16", "seed": 0,
}
PRETRAIN = {
    "pass_vit_small_lup": ("PASS/script/vit-s_full_lup-pass.sh", PRETRAIN_VIT_S),
    "pass_vit_base_lup": ("PASS/script/vit-b_full_lup-pass.sh",
                          {**PRETRAIN_VIT_S, "preset": "pass_vit_base", "global_batch_size": 512}),
}

FINETUNE_COMMON = {
    "num_instances": 4, "drop_path_rate": 0.1, "neck": "per_token", "feature_fusion": "cat",
    "normalize_neck_outputs": False, "reid_feature": "before_neck", "epochs": 120, "global_batch_size": 64,
    "optimizer": "sgd", "lr": 4e-4, "weight_decay": 1e-4, "weight_decay_bias": 1e-4, "momentum": 0.9,
    "bias_lr_factor": 2.0,
    "warmup_epochs": 20, "warmup_start_factor": 0.01, "final_lr_factor": 0.002, "label_smoothing": 0.0,
    "triplet_margin": None, "triplet_weight": 1.0, "ce_weight": 1.0, "mixed_precision": "fp16",
    "cudnn_benchmark": True, "cudnn_deterministic": True, "eval_every": 120, "flip_test": False,
    "test_resize": "bilinear", "publish": "final",
}
# recipe: (original script, dataset, preset, size, seed); the per-script table of docs/recipes.md section 2.
FINETUNE_SCRIPTS = {
    "market_vit_small_256": ("run_pass_vit_small_Market.sh", "market1501", "pass_vit_small", 256, 42),
    "market_vit_small_384": ("run_pass_vit_small_Market_384.sh", "market1501", "pass_vit_small", 384, 42),
    "msmt17_vit_small_256": ("run_pass_vit_small_MSMT17.sh", "msmt17", "pass_vit_small", 256, 1234),
    "msmt17_vit_small_384": ("run_pass_vit_small_MSMT17_384.sh", "msmt17", "pass_vit_small", 384, 1234),
    "market_vit_base_256": ("run_pass_vit_base_Market.sh", "market1501", "pass_vit_base", 256, 42),
    "market_vit_base_384": ("run_pass_vit_base_Market_384.sh", "market1501", "pass_vit_base", 384, 1234),
    "msmt17_vit_base_256": ("run_pass_vit_base_MSMT17.sh", "msmt17", "pass_vit_base", 256, 42),
    "msmt17_vit_base_384": ("run_pass_vit_base_MSMT17_384.sh", "msmt17", "pass_vit_base", 384, 42),
}

USL_COMMON = {
    "image_size": [256, 128], "num_instances": 8, "sampler": "camera_aware", "random_erasing": "cluster_contrast",
    "preset": "pass_vit_small", "drop_path_rate": 0.3, "reid_feature": "after_neck", "min_samples": 4, "k1": 30,
    "k2": 6, "jaccard": "cluster_contrast", "camera_centering": False, "temperature": 0.05, "memory_momentum": 0.2,
    "memory_update": "hardest",
    "epochs": 50, "iters_per_epoch": 200, "global_batch_size": 256, "optimizer": "sgd", "lr": 3.5e-4,
    "weight_decay": 5e-4, "momentum": 0.9, "lr_step_epochs": 20, "mixed_precision": "no", "seed": 1,
    "cudnn_benchmark": True, "cudnn_deterministic": True, "flip_test": False, "test_resize": "bicubic",
    "publish": "best_test_evaluation",
}
# The table of docs/recipes.md section 3: script, target, source, neck, fusion, per-neck L2, eps, eval-step.
USL = {
    "market_usl_vit_small": ("market_usl_cat_singleneck.sh", "market1501", None, "single", "cat", False, 0.6, 10),
    "msmt17_usl_vit_small": ("msmt_usl_mean_singleneck.sh", "msmt17", None, "single", "mean", False, 0.7, 50),
    "msmt17_to_market_vit_small": ("market_uda_cat.sh", "market1501", "msmt17", "per_token", "cat", True, 0.6, 10),
    "market_to_msmt17_vit_small": ("msmt_uda_mean.sh", "msmt17", "market1501", "per_token", "mean", True, 0.7, 10),
}


def printed_config(script, argv: list[str], capsys) -> dict:
    with pytest.raises(SystemExit) as exited:
        script.main([*argv, "--print_config"])
    assert exited.value.code == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("name", sorted(PRETRAIN))
def test_pretraining_recipes_are_the_original_scripts(name, capsys):
    original, expected = PRETRAIN[name]
    config = printed_config(pretrain, ["--recipe", name], capsys)
    assert config["original"] == original and config["script"] == "training/pretrain.py"
    assert config["settings"] == expected and config["overridden"] == {}


@pytest.mark.parametrize("name", sorted(FINETUNE_SCRIPTS))
def test_fine_tuning_recipes_are_the_original_scripts(name, capsys):
    original, dataset, preset, size, seed = FINETUNE_SCRIPTS[name]
    config = printed_config(finetune, ["--recipe", name], capsys)
    assert config["original"] == f"PASS_transreid/{original}"
    expected = {**FINETUNE_COMMON, "dataset": dataset, "preset": preset, "image_size": [size, 128], "seed": seed}
    assert config["settings"] == expected
    weights = "pass_vit_small_full.pth" if preset == "pass_vit_small" else "pass_vit_base_full.pth"
    assert config["inputs"] == {"init": weights, "data_dir": None}


@pytest.mark.parametrize("name", sorted(USL))
def test_cluster_contrast_recipes_are_the_original_scripts(name, capsys):
    original, dataset, source, neck, fusion, normalized, eps, eval_step = USL[name]
    argv = ["--recipe", name] + ([] if source is None else ["--init", "outputs/finetune/pass-vit-reid"])
    config = printed_config(usl, argv, capsys)
    assert config["original"] == f"PASS_cluster_contrast_reid/{original}"
    expected = {**USL_COMMON, "dataset": dataset, "source_dataset": source, "neck": neck, "feature_fusion": fusion,
                "normalize_neck_outputs": normalized, "eps": eps, "eval_every": eval_step}
    assert config["settings"] == expected
    if source is None:  # USL starts from the released ViT-S weights; UDA from a fine-tuned model the user names
        assert config["inputs"]["init"] == "pass_vit_small_full.pth"


def test_uda_recipes_ask_for_the_source_model(capsys):
    with pytest.raises(SystemExit):
        usl.parse_args(["--recipe", "msmt17_to_market_vit_small"])
    error = capsys.readouterr().err
    assert "needs --init" in error and "finetune.py --recipe msmt17_vit_small_256" in error


def test_explicit_flags_override_the_recipe_and_are_reported(capsys):
    argv = ["--recipe", "market_vit_small_256", "--epochs", "2", "--lr", "4e-4", "--no_flip_test",
            "--dataset", "market1501:/elsewhere", "--image_size", "384", "128", "--triplet_margin", "0.3"]
    config = printed_config(finetune, argv, capsys)
    # Values equal to the recipe's and a dataset with the same loader are not overrides.
    assert config["overridden"] == {
        "epochs": {"recipe": 120, "given": 2},
        "image_size": {"recipe": [256, 128], "given": [384, 128]},
        "triplet_margin": {"recipe": None, "given": 0.3},
    }
    assert config["settings"]["epochs"] == 2 and config["settings"]["triplet_margin"] == 0.3
    args = finetune.parse_args(argv)
    assert args.resolved.describe() == (
        "recipe `market_vit_small_256` (PASS_transreid/run_pass_vit_small_Market.sh) with 3 setting(s) overridden: "
        "image_size 256x128 -> 384x128, epochs 120 -> 2, triplet_margin none -> 0.3"  # in the settings' order
    )
    assert args.settings.epochs == args.epochs == 2


def test_the_default_recipe_is_cpu_demo(capsys):
    for script in (pretrain, finetune, usl):
        config = printed_config(script, [], capsys)
        assert config["recipe"] == "cpu_demo" and config["original"].startswith("none")


def test_bad_values_are_refused_in_one_line(capsys):
    for argv, message in (
        (["--global_batch_size", "10", "--num_instances", "4"], "--global_batch_size 10 is not a multiple of "
                                                                  "--num_instances 4"),
        (["--image_size", "250", "128"], "--image_size 250 128: sides must be positive multiples of 16"),
        (["--optimizer", "adamw", "--bias_lr_factor", "2"], "--bias_lr_factor 2.0 applies to sgd only"),
    ):
        with pytest.raises(SystemExit):
            finetune.parse_args(argv)
        error = capsys.readouterr().err
        assert message in error and error.count("\n") == 1
    with pytest.raises(SystemExit):
        pretrain.parse_args(["--recipe", "pass_vit_small_lup", "--epochs", "5"])
    assert "--warmup_epochs 10 must lie in [0, --epochs 5]" in capsys.readouterr().err


def test_a_recipe_that_needs_data_says_so(tmp_path):
    with pytest.raises(SystemExit, match=r"market1501 needs its folder: give --data_dir DIR .*Market-1501"):
        finetune.load_data(finetune.parse_args(["--recipe", "market_vit_small_256"]))
    with pytest.raises(SystemExit, match=r"no such file; this recipe needs .*pass_vit_small_full\.pth"):
        reid.load_start(finetune.parse_args(["--recipe", "market_vit_small_256"]), 10, Accelerator(cpu=True))


def _table(path: Path, header: str) -> list[str]:
    text = path.read_text()
    start = text.index(header)
    return text[start:text.index("\n\n", start)].splitlines()  # the table ends at the first blank line


def test_the_recipe_tables_list_every_recipe_with_its_original_and_command():
    root = Path(__file__).resolve().parent.parent
    readme = _table(root / "README.md", "| recipe | original script |")
    commands = _table(root / "docs" / "recipes.md", "| recipe | original script | command (your paths) |")
    for recipes in RECIPES.values():
        for name, recipe in recipes.items():
            if name == "cpu_demo":
                continue
            row = next(line for line in commands if line.startswith(f"| `{name}` |"))
            assert f"`{recipe.original}`" in row and recipe.command("") in row, name
            processes = recipe.launch.split()[-1] if recipe.launch else "1"
            row = next(line for line in readme if line.startswith(f"| `{name}` |"))
            assert row == f"| `{name}` | `{recipe.original}` | {processes} |", name
