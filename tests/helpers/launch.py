"""Running the launch scripts' dry runs and reading their plans (tests/test_launch.py, and
tests/test_launch_local.py, which runs a plan's training command here)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess

from helpers.paths import REPO

LAUNCH = REPO / "launch"
# Settings the scripts read from the environment: cleared so a user's shell cannot leak in.
SETTINGS = (
    "TPU_NAME ZONE PROJECT ACCELERATOR_TYPE RUNTIME_VERSION QUEUED SPOT WORKDIR CONFIG "
    "TFDS_DATA_DIR SOURCE REPO_URL GIT_REF PYTHON_VERSION PIP_EXTRAS LOG_WORKER KEEP_TPU DRY_RUN "
    "NODES GPUS_PER_NODE PARTITION ACCOUNT TIME_LIMIT CPUS_PER_TASK MEM JOB_NAME SETUP_CMD "
    "PYTHON LOG_DIR CUDA_VISIBLE_DEVICES INSTALL"
).split()


def run(script: str, *args: str, env: dict[str, str] | None = None, cwd=None):
    full_env = {k: v for k, v in os.environ.items() if k not in SETTINGS}
    full_env.update(env or {})
    return subprocess.run(
        ["bash", str(LAUNCH / script), *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd or REPO,
        timeout=30,
    )


def plan(script: str, *args: str, env: dict[str, str] | None = None) -> list[list[str]]:
    """Runs a dry run; returns its commands (comment lines dropped) as argument lists."""
    res = run(script, "--dry-run", *args, env=env)
    assert res.returncode == 0, res.stderr
    syntax = subprocess.run(["bash", "-n"], input=res.stdout, capture_output=True, text=True)
    assert syntax.returncode == 0, f"dry-run output is not valid shell:\n{syntax.stderr}"
    lines = [line for line in res.stdout.splitlines() if line and line[0] != "#"]
    assert lines[0] == "set -euo pipefail"
    return [shlex.split(line) for line in lines[1:]]


def find(cmds: list[list[str]], *prefix: str) -> list[list[str]]:
    return [c for c in cmds if tuple(c[: len(prefix)]) == prefix]


def flag(cmd: list[str], name: str) -> str:
    values = [a.split("=", 1)[1] for a in cmd if a.startswith(name + "=")]
    assert len(values) == 1, f"{name} in {cmd}"
    return values[0]


def remote_main(command: str) -> list[str]:
    """The isnet_jax.main invocation inside a worker command (nested in `bash -c '...'`)."""
    words = shlex.split(command)
    inner = words[words.index("bash") + 2]  # setsid nohup bash -c INNER
    main = next(part for part in inner.split(" && ") if "isnet_jax.main" in part)
    return shlex.split(main.split(";")[0])


def batch_script(stdout: str) -> str:
    match = re.search(r"<<'ISNET_SBATCH_EOF'\n(.*?)\nISNET_SBATCH_EOF\n", stdout, re.S)
    assert match, stdout
    return match.group(1) + "\n"
