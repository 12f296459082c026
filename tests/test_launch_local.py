"""The documented launch commands train: each ``bash launch/*.sh`` command of README.md and
docs/, run with ``--dry-run``, gives an ``isnet_jax.main`` command that trains here.

The plan's command is run as printed (the paper config, VGG19 on and fetched on first use from
a local stand-in for its publisher), with only the changes in ``LOCAL`` and ``where_it_runs``:
the data, image size, steps, batch and model size, and what a cluster would provide (the
workdir, the interpreter, the process discovery). ``tests/test_launch.py`` checks the plans
themselves.
"""

from __future__ import annotations

import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest
from helpers import tiny_dataset
from helpers.launch import batch_script, find, flag, plan, remote_main
from helpers.tiny import TINY_WIDTH

from isnet_jax import weights
from isnet_jax.rehearse.weights_server import serve, write_table

REPO = pathlib.Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("**/*.md"))]

# What a local run changes in a documented command, and nothing else: the data (the tiny
# ArrayRecord dataset in TFDS_DATA_DIR), the image size, the steps, the batch and the model's
# size (one block at the tests' width: what is tested is the launch, and the release's four
# blocks compile for a minute; tests/test_weights.py starts the paper config at full size).
LOCAL = [
    f"--config.data.name={tiny_dataset.NAME}",
    "--config.image_size=32",
    "--config.num_train_steps=2",
    "--config.batch_size=2",
    "--config.model.blocks=1",
    f"--config.model.width={TINY_WIDTH}",
]


def documented_commands(script: str) -> list[str]:
    """Every ``bash launch/SCRIPT ...`` command in the fenced shell blocks of the docs, with
    its continuation lines joined."""
    commands = []
    for doc in DOCS:
        for block in re.findall(r"```(?:bash|sh|shell)\n(.*?)```", doc.read_text(), re.S):
            text = block.replace("\\\n", " ")
            commands += [line.strip() for line in text.splitlines()
                         if line.strip().startswith(f"bash launch/{script}")]
    return list(dict.fromkeys(commands))  # a command shown in README.md and docs/ runs once


def dry_run_args(command: str) -> list[str]:
    words = shlex.split(command)
    assert words[:2] == ["bash", words[1]] and words[1].startswith("launch/")
    return words[2:]


def train_here(main: list[str], env: dict[str, str], *, workdir: str, tfds: str,
               extra: list[str] = ()) -> subprocess.CompletedProcess:
    """Runs a plan's ``python -m isnet_jax.main`` command here: its workdir replaced, this
    interpreter, ``LOCAL`` appended (later flags win over the command's own)."""
    index = main.index("-m")
    assert main[index + 1] == "isnet_jax.main", main
    args = [re.sub(r"^--workdir=.*", f"--workdir={workdir}", a) for a in main[index + 2:]]
    assert f"--workdir={workdir}" in args, main
    return subprocess.run(
        [sys.executable, "-m", "isnet_jax.main", *args, *extra, *LOCAL],
        cwd=REPO, capture_output=True, text=True, timeout=900,
        env={**os.environ, **env, "TFDS_DATA_DIR": tfds, "PYTHONUNBUFFERED": "1"})


def assert_trained(result: subprocess.CompletedProcess, config: str) -> None:
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    assert f"--config={config}" in " ".join(result.args)
    assert "step 2/2" in log and "Done: step 2." in log, log[-4000:]
    # VGG on, as the paper configs train: the perceptual term is in the step's line.
    assert re.search(r"perc [0-9.]+", log), log[-4000:]


@pytest.fixture(scope="module")
def standin_weights(vgg19_file, tmp_path_factory):
    """The variables that point a run at a local stand-in for VGG19's publisher and at an
    empty weights cache, shared by the runs of this file: the first fetches, the others read."""
    folder = tmp_path_factory.mktemp("weights")
    with serve({"vgg19": vgg19_file}) as server:
        table = write_table(folder / "table.json", server, {"vgg19": vgg19_file})
        yield {weights.TABLE_VARIABLE: str(table), weights.CACHE_VARIABLE: str(folder / "cache")}
        assert server.requests["vgg19-dcbb9e9d.pth"] <= 1  # fetched once, then the cache


@pytest.mark.slow
@pytest.mark.parametrize("script", ["gpu.sh", "slurm.sh", "tpu_vm.sh"])
def test_documented_launch_command_trains_here(script, tmp_path, tiny_tfds, standin_weights,
                                               gcs):
    commands = documented_commands(script)
    assert commands, f"no `bash launch/{script}` command in {[d.name for d in DOCS]}"
    for command in commands:
        args = dry_run_args(command)
        if script == "gpu.sh":
            (main,) = [c for c in plan(script, *args) if "isnet_jax.main" in c]
            assert main[0] == "env" and "--distributed" not in main
            env = dict(a.split("=", 1) for a in main[1:main.index("python3")])
            result = train_here(main, {**standin_weights, **env}, workdir=str(tmp_path / "w"),
                                tfds=tiny_tfds)
        elif script == "slurm.sh":
            # Its batch script goes to a log folder of the test's own (the flag before '--').
            cut = args.index("--") if "--" in args else len(args)
            res = subprocess.run(["bash", str(REPO / "launch" / script), "--dry-run",
                                  *args[:cut], f"--log-dir={tmp_path}", *args[cut:]],
                                 capture_output=True, text=True, cwd=REPO, timeout=30)
            assert res.returncode == 0, res.stderr
            (srun,) = [shlex.split(line) for line in batch_script(res.stdout).splitlines()
                       if line.startswith("srun ")]
            # What srun gives one task (JAX's SLURM detection reads these): here, one task of
            # one node on this machine.
            slurm = {"SLURM_JOB_ID": str(4000 + os.getpid() % 4000),
                     "SLURM_STEP_NODELIST": "localhost", "SLURM_STEP_NUM_NODES": "1",
                     "SLURM_NTASKS": "1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}
            assert "--distributed" in srun
            result = train_here(srun, {**standin_weights, **slurm},
                                workdir=str(tmp_path / "w"), tfds=tiny_tfds)
        else:
            cmds = plan(script, *args)
            (train,) = [c for c in find(cmds, "gcloud", "compute", "tpus", "tpu-vm", "ssh")
                        if "isnet_jax.main" in flag(c, "--command")]
            main = remote_main(flag(train, "--command"))
            assert "--distributed" in main and "--workdir=gs://" in " ".join(main)
            # A TPU VM's metadata names the coordinator; here, one host on localhost, and the
            # workdir in the local bucket.
            port = 20000 + os.getpid() % 20000
            result = train_here(main, dict(standin_weights), workdir=gcs.path(f"tpu-{port}"),
                                tfds=tiny_tfds,
                                extra=[f"--coordinator_address=127.0.0.1:{port}",
                                       "--num_processes=1", "--process_id=0"])
        config = next(a.split("=", 1)[1] for a in args if a.startswith("--config="))
        assert_trained(result, config)
