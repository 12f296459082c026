"""One vocabulary for the command lines (issue 30): every old spelling of a flag still parses to
what its new spelling gives, after exactly one deprecation line; every command line answers a
bad flag with one ``error:`` line and status 2. Parsers run in this process where they can
(argparse: the entry point itself, with argv); absl's commands in their own process."""

from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys

import pytest
from helpers.cli_docs import docs
from helpers.paths import REPO

from isnet_jax import cli

ARGPARSE = {c.name: c for c in docs.COMMANDS if c.parse is not None}
ABSL = [c for c in docs.COMMANDS if c.parse is None]

# The least each argparse command needs to parse (its required flags); paths are not read.
REQUIRED = {
    "python -m isnet_jax.inpaint": ["--checkpoint", "ck", "--input", "in", "--mask", "m",
                                    "--output", "out"],
    "python -m isnet_jax.app": ["--checkpoint", "ck"],
    "python -m isnet_jax.convert": ["--output", "out"],
    "python -m isnet_jax.export": ["--checkpoint", "ck", "--format", "onnx", "--output", "out"],
    "python -m isnet_jax.masks": ["split", "--masks", "m", "--output", "out"],
    "python -m isnet_jax.rehearse": [],
    "python -m isnet_jax.benchmarks.export": [],
    "python -m isnet_jax.benchmarks.fid_lpips": [],
    "python -m isnet_jax.benchmarks.inpaint": [],
    "python -m isnet_jax.benchmarks.input_pipeline": ["--images", "in"],
}

# (command, old argv, the same in today's spelling)
ALIASES = [
    ("python -m isnet_jax.export", ["--batch", "2"], ["--batch-size", "2"]),
    ("python -m isnet_jax.convert", ["--export", "runs/a@50"],
     ["--checkpoint", "runs/a", "--step", "50"]),
    ("python -m isnet_jax.convert", ["--export", "runs/a"], ["--checkpoint", "runs/a"]),
    ("python -m isnet_jax.masks", ["--polarity", "hole_white"],
     ["--mask-polarity", "hole_white"]),
    ("python -m isnet_jax.benchmarks.fid_lpips", ["--batch", "2"], ["--batch-size", "2"]),
    ("python -m isnet_jax.benchmarks.fid_lpips", ["--fid_images", "5"], ["--fid-images", "5"]),
    ("python -m isnet_jax.benchmarks.fid_lpips", ["--fid_dims", "64"], ["--fid-dims", "64"]),
    ("python -m isnet_jax.benchmarks.inpaint", ["--modes", "crop,pad"],
     ["--resize-modes", "crop,pad"]),
    ("python -m isnet_jax.benchmarks.inpaint", ["--margin", "8"], ["--crop-margin", "8"]),
]


def entry(name: str):
    module, function = ARGPARSE[name].parse.split(":")
    return getattr(importlib.import_module(module), function)


def parse(name: str, argv: list[str]) -> argparse.Namespace:
    """The command's own ``parse_args`` (its checks included), or its parser's."""
    function = entry(name)
    if function.__name__ == "parse_args":
        return function(argv)
    return cli.parser_of(function).parse_args(argv)


def test_every_argparse_command_is_covered_here():
    assert set(REQUIRED) == set(ARGPARSE)


@pytest.mark.parametrize("name, old, new", ALIASES, ids=[f"{a[0].split('.')[-1]} {a[1][0]}"
                                                           for a in ALIASES])
def test_an_old_spelling_parses_as_the_new_after_one_warning(name, old, new, capsys):
    expected = parse(name, [*REQUIRED[name], *new])
    assert capsys.readouterr().err == ""
    assert parse(name, [*REQUIRED[name], *old]) == expected
    use = docs.parser(ARGPARSE[name]).deprecated_aliases()[old[0]]
    assert capsys.readouterr().err.splitlines() == [
        f"warning: {old[0]} is deprecated; use {use}"]


def test_every_old_spelling_is_tested_above():
    declared = {(c.name, old) for c in ARGPARSE.values()
                for old in docs.parser(c).deprecated_aliases()}
    tested = {(name, old[0]) for name, old, _ in ALIASES}
    assert declared == tested


def test_an_alias_does_what_its_flag_does_for_a_switch_and_a_choice(capsys):
    """Beyond the commands' own aliases: a store_true flag and a flag with choices."""
    parser = cli.ArgumentParser(prog="tool")
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--mode", choices=["a", "b"], default="a")
    parser.add_deprecated_alias("--dry_run", "--dry-run")
    parser.add_deprecated_alias("--kind", "--mode")
    assert parser.parse_args(["--dry_run", "--kind", "b"]) == argparse.Namespace(
        dry_run=True, mode="b")
    assert capsys.readouterr().err.splitlines() == [
        "warning: --dry_run is deprecated; use --dry-run",
        "warning: --kind is deprecated; use --mode"]
    with pytest.raises(SystemExit) as caught:
        parser.parse_args(["--kind", "c"])
    assert caught.value.code == cli.EXIT_USER_ERROR
    lines = capsys.readouterr().err.splitlines()  # a bad value: the error alone
    assert len(lines) == 1 and lines[0].startswith("error: argument --kind: invalid choice: 'c'")
    assert "--kind" not in parser.format_help()  # old spellings are not advertised
    with pytest.raises(ValueError, match="required"):
        needed = cli.ArgumentParser(prog="tool")
        needed.add_argument("--output", required=True)
        needed.add_deprecated_alias("--out", "--output")


def test_main_old_checkpoint_step_is_step_after_one_warning(capsys):
    from isnet_jax import errors, main

    assert main.checkpoint_and_step("200", None) == main.checkpoint_and_step(None, 200)
    assert capsys.readouterr().err.splitlines() == [
        "warning: --checkpoint=200 (a step) is deprecated; use --step=200"]
    assert main.checkpoint_and_step("runs/a", 5) == ("runs/a", 5)
    with pytest.raises(errors.ConfigError, match="give the step once"):
        main.checkpoint_and_step("200", 300)
    with pytest.raises(errors.ConfigError,
                       match="--checkpoint=runs/a@5: the step has its own flag; write "
                             "--checkpoint=runs/a --step=5"):
        main.checkpoint_and_step("runs/a@5", None)


@pytest.mark.parametrize("name", ["python -m isnet_jax.inpaint", "python -m isnet_jax.export",
                                  "python -m isnet_jax.app"])
def test_path_at_step_is_one_error_line_naming_step(name, tmp_path, capsys):
    argv = [str(tmp_path / "run@7") if a == "ck" else a for a in REQUIRED[name]]
    with pytest.raises(SystemExit) as caught:
        parse(name, argv)
    assert caught.value.code == cli.EXIT_USER_ERROR
    assert capsys.readouterr().err.splitlines() == [
        f"error: argument --checkpoint: {tmp_path}/run@7: the step has its own flag; write "
        f"--checkpoint {tmp_path}/run --step 7; see {name} --help"]
    (tmp_path / "run@7").mkdir()  # a folder that is named so is taken as it is
    assert parse(name, argv).checkpoint == str(tmp_path / "run@7")


@pytest.mark.parametrize("name", sorted(ARGPARSE))
def test_a_bad_flag_is_one_error_line_and_status_2(name, capsys):
    with pytest.raises(SystemExit) as caught:
        entry(name)([*REQUIRED[name], "--no-such-flag"])
    assert caught.value.code == cli.EXIT_USER_ERROR
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        f"error: unrecognized arguments: --no-such-flag; see {name} --help"]
    assert captured.out == ""


@pytest.mark.parametrize("command", ABSL, ids=[c.name.split(".")[-1] for c in ABSL])
def test_a_bad_flag_of_an_absl_command_is_one_error_line_and_status_2(command):
    out = subprocess.run([sys.executable, "-m", command.modules[0], "--no_such_flag"],
                         cwd=REPO, capture_output=True, text=True, timeout=600,
                         env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert out.returncode == cli.EXIT_USER_ERROR, out.stderr[-3000:]
    assert out.stderr.splitlines() == [
        "error: Unknown command line flag 'no_such_flag'; see --help"], out.stderr[-3000:]


def test_main_refuses_a_step_when_training(tmp_path):
    """--checkpoint/--step choose what --mode=eval evaluates: training would ignore them."""
    out = subprocess.run([sys.executable, "-m", "isnet_jax.main", f"--workdir={tmp_path / 'w'}",
                          "--step=3"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == cli.EXIT_USER_ERROR, out.stderr[-3000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: --checkpoint and --step choose what --mode=eval evaluates; training "
                      "resumes WORKDIR's latest checkpoint (--config.init_from starts from "
                      "another)"], out.stderr[-3000:]
    assert "Traceback" not in out.stderr and not (tmp_path / "w").exists()
