"""The demo pipeline end to end at toy size: every stage runs, outputs land in one folder, re-runs skip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training import demo


def test_demo_runs_every_stage_and_skips_finished_ones(tmp_path, capsys):
    out = tmp_path / "demo"
    summary = demo.main(["--toy", "--output_dir", str(out)])
    assert set(summary["fine-tuned"]) == {"PASS pre-training", "DINO pre-training, no [PART] tokens", "random init"}
    for scores in summary["fine-tuned"].values():
        assert 0 <= scores["mAP"] <= 1 and 0 <= scores["mINP"] <= 1
    assert summary["transformers_timm_max_gap"] < 1e-4
    assert set(summary["attention_centres"]["pass"]) == {"CLS", "PART1", "PART2", "PART3"}
    for name in ("pass", "dino"):
        assert (out / f"part_attention_{name}.png").stat().st_size > 1000
        card = (out / f"pretrain-{name}" / "pass-vit-pretrained" / "README.md").read_text()
        assert ("DINO (no [PART] tokens)" in card) == (name == "dino")
    for name in ("pass", "dino", "random"):
        stage = out / f"finetune-{name}"
        assert (stage / "pass-vit-reid" / "README.md").is_file() and (stage / "rank_list.png").is_file()
        assert (stage / "loss_curves.png").is_file()
    assert json.loads((out / "results.json").read_text())["fine-tuned"] == summary["fine-tuned"]
    assert "| random init |" in (out / "results.md").read_text()

    capsys.readouterr()
    again = demo.main(["--toy", "--output_dir", str(out)])
    assert capsys.readouterr().out.count("done before, skipped") == 5
    assert again["fine-tuned"] == summary["fine-tuned"]
    # A stage made with other settings never stands in for this run's: here another seed, so all run again.
    demo.main(["--toy", "--output_dir", str(out), "--seed", "1"])
    log = capsys.readouterr().out
    assert "done before" not in log and log.count("holds another run (--seed 0 -> 1): running the stage again") == 5
    assert json.loads((out / "results.json").read_text())["seed"] == 1
    # The same command line under an older recipe (the code changed since) does not stand in either.
    record_file = out / "finetune-random" / "stage.json"
    record = json.loads(record_file.read_text())
    record["settings"]["epochs"] = 99
    record_file.write_text(json.dumps(record))
    demo.main(["--toy", "--output_dir", str(out), "--seed", "1"])
    log = capsys.readouterr().out
    assert log.count("done before, skipped") == 4
    assert "finetune-random holds another run (the recipe changed: epochs 99 -> 13): running the stage again" in log


def test_the_toy_demo_has_its_own_folder():
    assert demo.parse_args(["--toy"]).output_dir == Path("outputs/demo-toy")
    assert demo.parse_args([]).output_dir == Path("outputs/demo")


def test_seed_table_summarises_finished_runs_and_names_a_missing_one(tmp_path, capsys):
    for seed, score in ((0, 0.10), (1, 0.16), (2, 0.13)):
        run = tmp_path / f"seed{seed}"
        run.mkdir()
        starts = {"PASS pre-training": {"mAP": score, "rank1": score / 2, "mINP": score / 4},
                  "random init": {"mAP": 0.1, "rank1": 0.05, "mINP": 0.02}}
        (run / "results.json").write_text(json.dumps({"seed": seed, "threads": 2, "fine-tuned": starts}))
    demo.main(["--seed_table", *(str(tmp_path / f"seed{seed}") for seed in range(3))])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("| initialisation | mAP seeds 0 / 1 / 2 | mean +- sd |")
    assert lines[2].startswith("| PASS pre-training | 10.0 / 16.0 / 13.0 | 13.0 +- 3.0 | 5.0 / 8.0 / 6.5 |")
    assert lines[3].startswith("| random init | 10.0 / 10.0 / 10.0 | 10.0 +- 0.0 |")
    with pytest.raises(SystemExit, match=r"results.json\) in .*absent"):
        demo.main(["--seed_table", str(tmp_path / "seed0"), str(tmp_path / "absent")])
