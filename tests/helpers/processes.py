"""Command lines run as a user runs them, and stopped as a terminal or a cluster stops them."""

from __future__ import annotations

import os
import signal
import subprocess
import time

from helpers.paths import REPO


def start_until(cmd: list[str], marker: str, sig: int, *, timeout: float = 600,
                whole_group: bool = False, **kwargs):
    """Starts ``cmd`` (its own process group), waits for ``marker`` in its output, sends it
    ``sig`` (to its whole process group if ``whole_group``, as a terminal's Ctrl-C goes) and
    waits for the end. Returns ``(process, whole output)``; nothing of the command
    outlives this (data workers included)."""
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"), **kwargs)
    log = []
    deadline = time.monotonic() + timeout
    try:
        for line in proc.stdout:
            log.append(line)
            if marker in line or time.monotonic() > deadline:
                break
        if whole_group:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
        rest, _ = proc.communicate(timeout=300)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return proc, "".join(log) + rest
