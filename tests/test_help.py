"""Every entry point prints its help: the training scripts (each file of training/ that runs as a script) and the
pass-hub command with each of its subcommands, found from the code rather than listed by hand."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import pytest
from script_runs import ROOT

from pass_hub import cli

SCRIPTS = sorted(path for path in (ROOT / "training").glob("*.py") if '__name__ == "__main__"' in path.read_text())


def subcommands() -> list[str]:
    parser = cli.build_parser()
    choices = next(action.choices for action in parser._actions if isinstance(action, argparse._SubParsersAction))
    return sorted(choices)


def test_every_training_script_prints_its_help():
    assert {path.stem for path in SCRIPTS} >= {"pretrain", "finetune", "usl", "push", "demo"}
    environment = {**os.environ, "HF_HUB_OFFLINE": "1"}
    # All at once: each spends its time importing torch.
    running = {path.name: subprocess.Popen([sys.executable, str(path), "--help"], stdout=subprocess.PIPE,
                                           stderr=subprocess.PIPE, text=True, cwd=ROOT, env=environment)
               for path in SCRIPTS}
    for name, process in running.items():
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, f"{name} --help: {err[-2000:]}"
        assert out.startswith("usage: "), f"{name} --help printed {out[:200]!r}"


@pytest.mark.parametrize("command", [None, *subcommands()])
def test_every_pass_hub_command_prints_its_help(command, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(["--help"] if command is None else [command, "--help"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith("usage: pass-hub" + ("" if command is None else f" {command}"))


def test_a_percent_sign_in_a_setting_help_is_printed_as_it_is():
    from training.engine.recipes import ClusterContrastSettings
    from training.engine.settings import add_settings_flags

    parser = argparse.ArgumentParser()
    add_settings_flags(parser, ClusterContrastSettings)
    assert "area 2-40%, uniform aspect" in parser.format_help()


@pytest.mark.parametrize(("module", "argv", "name", "value"), [
    ("training.finetune", ["--global-batch-size", "16", "--num_instances", "4"], "global_batch_size", 16),
    ("training.usl", ["--eval-batch-size=8", "--init", "pass_vit_tiny"], "eval_batch_size", 8),
    ("training.pretrain", ["--max-steps", "3"], "max_steps", 3),
])
def test_training_flags_read_the_same_with_dashes_and_underscores(module, argv, name, value):
    import importlib

    assert getattr(importlib.import_module(module).parse_args(argv), name) == value


def test_pass_hub_flags_read_the_same_with_dashes_and_underscores():
    parser = cli.build_parser()
    for spelling in ("--batch-size", "--batch_size"):
        assert parser.parse_args(["eval", "--model", "m", spelling, "5"]).batch_size == 5
    assert parser.parse_args(["convert", "a", "b", "--num_heads", "2"]).num_heads == 2
