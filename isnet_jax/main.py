"""``python -m isnet_jax.main --config=configs/celeba.py --workdir=DIR [--mode=train|eval]``.

Trains (resuming from DIR's latest checkpoint) or evaluates a checkpoint. Without ``--config``
it runs ``isnet_jax/configs/demo.py`` (shipped in the package): a small model on bundled
photographs, on the CPU, no download. A mistake the user can fix (``errors.UserError``: a bad
path, config file or override, missing weights, a damaged checkpoint) ends as one ``error:``
line and exit status 2; Ctrl-C as one line and 130; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import sys
import traceback

import jax
from absl import app, flags, logging

from isnet_jax import cli, compilation_cache, errors, interrupts, liveness

_CONFIG: flags.FlagHolder | None = None  # defined in run(): it parses overrides as it is made
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and summaries.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval"], "Train, or evaluate a checkpoint.")
_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None,
    "--mode=eval: a training workdir, its checkpoints/ folder or a converted folder (default: "
    "WORKDIR).")
_STEP = flags.DEFINE_integer("step", None, "--mode=eval: the checkpoint's step (default: latest).")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False,
    "Initialise jax.distributed (auto-detected on Cloud TPU and SLURM; otherwise pass the "
    "three flags below).",
)
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
_LOST_HOST_TIMEOUT = flags.DEFINE_integer(
    "lost_host_timeout", liveness.DEFAULT_TIMEOUT_S,
    "Several processes: seconds without a sign of life from another process before this one "
    f"stops, naming it (exit status {liveness.EXIT_LOST_HOST}); 0: wait for JAX's heartbeat.")
_COMPILATION_CACHE = flags.DEFINE_string(
    "compilation_cache", None, compilation_cache.FLAG_HELP)
_VERBOSE_LIBRARIES = flags.DEFINE_bool(
    "verbose_libraries", False, "Keep Orbax's and grain's INFO logs (hidden by default)."
)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not _VERBOSE_LIBRARIES.value:
        cli.quiet_library_logs(logging.get_absl_handler())
    explicit = (_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    if _DISTRIBUTED.value or any(v is not None for v in explicit):
        jax.distributed.initialize(*explicit)
    compilation_cache.enable(_COMPILATION_CACHE.value)
    logging.info("JAX process %d of %d, %d local / %d global devices (%s).",
                 jax.process_index(), jax.process_count(), jax.local_device_count(),
                 jax.device_count(), jax.devices()[0].device_kind)
    watchdog = liveness.watch(_LOST_HOST_TIMEOUT.value)
    try:
        with interrupts.ctrl_c_kept():
            if _MODE.value == "train" and (_CHECKPOINT.value or _STEP.value is not None):
                raise errors.ConfigError(
                    "--checkpoint and --step choose what --mode=eval evaluates; training resumes "
                    "WORKDIR's latest checkpoint (--config.init_from starts from another)")
            # Imported here, after the flags: --help and a flag mistake answer at once.
            if _MODE.value == "train":
                from isnet_jax import train

                train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
            else:
                from isnet_jax import evaluate

                evaluate.evaluate_checkpoint(_CONFIG.value, _WORKDIR.value,
                                             *checkpoint_and_step(_CHECKPOINT.value, _STEP.value))
    except errors.UserError as e:
        print(f"error: {e}", file=sys.stderr)
        cli.leave(cli.EXIT_USER_ERROR)
    except Exception:
        if watchdog is None:
            raise
        # Several processes: JAX's exit waits up to 5 minutes for the others, which wait in a
        # collective for this one; leaving now lets their watchdogs name it within seconds.
        # A peer's closed connection first waits for the watchdog's one line naming the lost
        # process (which ends this one): the collective's traceback would only bury it.
        watchdog.explain(sys.exc_info()[1])
        traceback.print_exc()
        cli.leave(1)
    compilation_cache.log_report()
    if watchdog is not None:  # finished: the others must not take its silence for a loss
        watchdog.stop()


def checkpoint_and_step(checkpoint: str | None, step: int | None) -> tuple[str | None, int | None]:
    """``--checkpoint``, ``--step`` as evaluation takes them; the old ``--checkpoint=STEP`` (a
    step of WORKDIR) still works, after one warning line."""
    if checkpoint is not None and checkpoint.isdigit():
        print(f"warning: --checkpoint={checkpoint} (a step) is deprecated; use "
              f"--step={checkpoint}", file=sys.stderr, flush=True)
        if step is not None:
            raise errors.ConfigError(f"--checkpoint={checkpoint} and --step={step}: give the "
                                     "step once, as --step")
        return None, int(checkpoint)
    if checkpoint is not None and (fix := cli.step_in_path(checkpoint, "=")) is not None:
        raise errors.ConfigError(f"--checkpoint={fix}")
    return checkpoint, step


def run() -> None:
    global _CONFIG
    cli.quiet_abandoned_reads()
    _CONFIG = cli.define_config_flag()
    flags.mark_flags_as_required(["workdir"])
    try:
        app.run(main, flags_parser=cli.parse_flags(lambda: _CONFIG))
    except KeyboardInterrupt:
        pass  # handled below, out of the except block (see cli.leave_interrupted)
    else:
        return
    cli.leave_interrupted("the same command resumes a training run from its last checkpoint")


if __name__ == "__main__":
    run()
